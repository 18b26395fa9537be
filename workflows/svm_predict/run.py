"""svm-predict: classify a Cytomine project's annotations with a model from an svm-train job and
push the predicted terms back (suggested terms, or new annotations), without duplicates on re-runs.

    python workflows/svm_predict/run.py --cytomine_host URL ... --cytomine_id_job TRAINING_JOB
    python workflows/svm_predict/run.py --local --model mtdp-model.npz --infolder IMAGES [--gtfolder TRUTH]
"""

from __future__ import annotations

import sys

from mtdp_core.cytomine.apps import svm_predict
from mtdp_core.cytomine.inputs import (
    add_connection_inputs,
    add_filter_inputs,
    add_local_model_option,
    add_model_job_input,
    add_processing_inputs,
    add_push_inputs,
)
from mtdp_core.cytomine.job import run_app
from mtdp_core.cytomine.params import AppArgumentParser, new_parser

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
    add_model_job_input(parser)
    add_filter_inputs(parser, purpose="predict")
    add_push_inputs(parser)
    add_local_model_option(add_processing_inputs(parser, from_model=True, image_size=False))
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_app(get_args_parser(), argv, svm_predict.run, app="svm_predict")


if __name__ == "__main__":
    sys.exit(main())
