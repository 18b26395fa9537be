"""svm-predict end to end under faults (issue 11 item 13): a process of its own talking to the
local server through a fault-injecting proxy, stopped or killed mid-push, two at once, the
server crashing; each time the project must end with exactly one prediction per annotation and
the job with an honest status. (Both push modes under every fault: tests/cytomine/test_push.py,
quicker, and the fault matrix: benchmarks/bench_faults.py.)"""

from __future__ import annotations

import signal

import pytest

from tests.helpers.fault_lab import Lab
from tests.helpers.faults import Fault

pytestmark = pytest.mark.slow

MIXED = [  # a bad day: 10% of the reads and 30% of the writes fail, some after being applied
    Fault("500", 0.05, methods=("GET",), path="^/api/"),
    Fault("reset", 0.05, methods=("GET",), path="^/api/"),
    Fault("500", 0.06, methods=("POST", "PUT", "DELETE")),
    Fault("500_late", 0.06, methods=("POST", "PUT", "DELETE")),
    Fault("504_late", 0.06, methods=("POST", "PUT", "DELETE")),
    Fault("504_early", 0.06, methods=("POST", "PUT", "DELETE"), delay=0.5),
    Fault("reset_late", 0.06, methods=("POST", "PUT", "DELETE")),
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with Lab.open(tmp_path_factory.mktemp("lab")) as lab, pytest.MonkeyPatch.context() as patch:
        patch.chdir(lab.root)  # in-process runs write ./mtdp-out
        lab.train()
        yield lab


@pytest.fixture
def fresh(lab):
    lab.reset_predictions()
    return lab


def test_faults_then_rerun(fresh):
    first = fresh.predict("annotation", faults=MIXED, seed=3, in_process=True)
    assert first.status in ("SUCCESS", "FAILED"), first.log[-2000:]
    if first.status == "SUCCESS":
        assert first.counts.exactly_once, first.comment
    else:
        assert first.comment.startswith("Re-run the job"), first.comment
        assert first.counts.duplicated == 0
    again = fresh.predict("annotation", in_process=True)
    assert again.status == "SUCCESS" and again.counts.exactly_once, again.comment
    assert fresh.proxy.stats.faults


def test_two_jobs_at_once(fresh):
    outcomes = fresh.predict_together("term")
    assert [o.status for o in outcomes] == ["SUCCESS", "SUCCESS"], [o.comment for o in outcomes]
    assert outcomes[0].counts.exactly_once
    assert any("120 already up to date" in o.comment for o in outcomes)


def test_sigterm_mid_push_then_rerun(fresh):
    # Issue 11 item 7: Cytomine stops a job with SIGTERM; it stayed RUNNING forever.
    stopped = fresh.predict("term", stop=(signal.SIGTERM, 30))
    assert stopped.exit_code == 143 and stopped.status == "KILLED", stopped.log[-2000:]
    assert stopped.comment.startswith("Re-run the job to finish it") and "Pushing predictions" in stopped.comment
    assert 30 <= stopped.counts.present < 120 and stopped.counts.duplicated == 0
    again = fresh.predict("term", in_process=True)
    assert again.status == "SUCCESS" and again.counts.exactly_once, again.comment


def test_sigkill_mid_push_then_rerun(fresh):
    # Nothing runs after SIGKILL: the job stays RUNNING and holds the push lease; the re-run
    # takes the lease over (the holder's process is gone) and completes the push.
    killed = fresh.predict("annotation", stop=(signal.SIGKILL, 1))
    assert killed.exit_code == -signal.SIGKILL and killed.status == "RUNNING"
    assert killed.counts.present == 100  # the first chunk was applied before the kill
    again = fresh.predict("annotation", in_process=True)
    assert again.status == "SUCCESS" and again.counts.exactly_once, again.comment
    assert "20 annotations created, 100 already up to date" in again.comment


def test_server_crash_mid_push(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Lab.open(tmp_path, killable=True, n_images=2, boxes_per_image=30) as lab:
        lab.train()
        crashed = lab.predict("term", crash_server_after=20)
        assert lab.proxy.stats.upstream_errors > 0  # the app met the dead server
        # Its retries (about 8 s) usually outlast a server back within seconds; else it says to re-run.
        assert crashed.status in ("SUCCESS", "FAILED") and crashed.counts.duplicated == 0, crashed.log[-3000:]
        if crashed.status == "SUCCESS":
            assert crashed.counts.exactly_once
        else:
            assert crashed.comment.startswith("Re-run the job"), crashed.comment
            again = lab.predict("term", in_process=True)
            assert again.status == "SUCCESS" and again.counts.exactly_once, again.comment
