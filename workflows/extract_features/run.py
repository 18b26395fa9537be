"""extract-features: deep features of a Cytomine project's annotation crops, saved as a job
attachment (features.npz: array + annotation, image and term ids; features.json: metadata).

    python workflows/extract_features/run.py --cytomine_host URL ... [--backbone densenet121 --weights mtdp]
    python workflows/extract_features/run.py --local --infolder IMAGES --outfolder OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import mtdp_core  # noqa: F401
except ImportError:  # run from a source checkout without installing: the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mtdp_core.cytomine.apps import extract_features
from mtdp_core.cytomine.biaflows import add_biaflows_arguments
from mtdp_core.cytomine.inputs import (
    add_backbone_inputs,
    add_connection_inputs,
    add_crop_inputs,
    add_engine_input,
    add_filter_inputs,
    add_image_size_input,
    add_runtime_inputs,
)
from mtdp_core.cytomine.job import run_app
from mtdp_core.cytomine.params import AppArgumentParser, new_parser

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
    parser = new_parser("extract_features", DESCRIPTOR["description"])
    add_connection_inputs(parser)
    add_filter_inputs(parser, purpose="compute features")
    add_crop_inputs(parser)
    add_backbone_inputs(parser)
    add_image_size_input(parser)
    add_runtime_inputs(parser)
    add_engine_input(parser)
    add_biaflows_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_app(
        get_args_parser(), sys.argv[1:] if argv is None else argv, extract_features.run, app="extract_features"
    )


if __name__ == "__main__":
    sys.exit(main())
