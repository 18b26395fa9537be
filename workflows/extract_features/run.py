"""extract-features: deep features of a Cytomine project's annotation crops, saved as a job
attachment (features.npz: array + annotation, image and term ids; features.json: metadata).

    python workflows/extract_features/run.py --cytomine_host URL ... [--backbone densenet121 --weights mtdp]
    python workflows/extract_features/run.py --local --infolder IMAGES --outfolder OUT
"""

from __future__ import annotations

import sys

from mtdp_core.cytomine.apps import extract_features
from mtdp_core.cytomine.inputs import add_processing_inputs, app_parser
from mtdp_core.cytomine.job import run_app
from mtdp_core.cytomine.params import AppArgumentParser

DESCRIPTOR = {
    "name": "MTDP-Extract-Features",
    "description": (
        "Computes deep features of the selected annotations with a pre-trained network (multi-task "
        "pre-training for digital pathology, or ImageNet) and attaches them to the job for other tools: "
        "features.npz (the feature array with annotation, image and term ids; plain numpy, no pickle) and "
        "features.json (network, weights and crop settings)."
    ),
    "image": "mtdp/s_mtdp-extract-features",
}


def get_args_parser() -> AppArgumentParser:
    parser = app_parser("extract_features", DESCRIPTOR["description"], purpose="compute features")
    add_processing_inputs(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_app(get_args_parser(), argv, extract_features.run, app="extract_features")


if __name__ == "__main__":
    sys.exit(main())
