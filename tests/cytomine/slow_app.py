"""A test app that works slowly (progress every 50 ms for a minute), to be stopped mid-run:
``python -m tests.cytomine.slow_app <the options of tests.cytomine.test_job.parser()>``."""

from __future__ import annotations

import sys
import time

from mtdp_core.cytomine.job import run_app
from tests.cytomine.test_job import parser


def pipeline(job, args):
    stage = job.stage("Working", 10, 90)
    for i in range(1200):
        stage.update(i, 1200)
        time.sleep(0.05)
    return "Done"


if __name__ == "__main__":
    sys.exit(run_app(parser(), sys.argv[1:], pipeline, app="slow_app"))
