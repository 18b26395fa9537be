"""svm-predict: classify a Cytomine project's annotations with a model from an svm-train job and
push the predicted terms back (suggested terms, or new annotations), without duplicates on re-runs.

    python workflows/svm_predict/run.py --cytomine_host URL ... --cytomine_id_job TRAINING_JOB
    python workflows/svm_predict/run.py --local --model mtdp-model.npz --infolder IMAGES [--gtfolder TRUTH]
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import mtdp_core  # noqa: F401
except ImportError:  # run from a source checkout without installing: the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mtdp_core.cytomine.apps import svm_predict
from mtdp_core.cytomine.biaflows import add_biaflows_arguments
from mtdp_core.cytomine.inputs import (
    add_backbone_inputs,
    add_connection_inputs,
    add_crop_inputs,
    add_engine_input,
    add_filter_inputs,
    add_local_model_option,
    add_push_inputs,
    add_runtime_inputs,
)
from mtdp_core.cytomine.job import run_app
from mtdp_core.cytomine.params import AppArgumentParser, add_input, integer, new_parser

DESCRIPTOR = {
    "name": "MTDP-SVM-Predict",
    "description": (
        "Classifies annotations with a model trained by MTDP-SVM-Train (or MTDP-Finetune-Predict) and saves "
        "the predicted terms with their probability: as suggested terms on the annotations, or as new "
        "annotations. Re-running never creates duplicates. Attaches the predictions (CSV) and, when the "
        "annotations already have terms, how well the predictions agree with them."
    ),
    "image": "mtdp/s_mtdp-svm-predict",
}


def get_args_parser() -> AppArgumentParser:
    parser = new_parser("svm_predict", DESCRIPTOR["description"])
    add_connection_inputs(parser)
    add_input(
        parser,
        "cytomine_id_job",
        type="Number",
        name="Training job",
        optional=False,
        converter=integer(1),
        description="Id of the training job (MTDP-SVM-Train or MTDP-Finetune-Predict) whose model to use.",
    )
    add_filter_inputs(parser, purpose="predict")
    add_push_inputs(parser)
    add_crop_inputs(parser, from_model=True)
    add_backbone_inputs(parser, from_model=True)
    add_runtime_inputs(parser)
    add_engine_input(parser)
    add_local_model_option(add_biaflows_arguments(parser))
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_app(get_args_parser(), sys.argv[1:] if argv is None else argv, svm_predict.run, app="svm_predict")


if __name__ == "__main__":
    sys.exit(main())
