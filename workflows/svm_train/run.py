"""svm-train: train a linear SVM on deep features of a Cytomine project's labelled annotations.

Cytomine launches it from ``descriptors/svm_train.json``; it also runs by hand with a person's
keys (a job is created), and without a server on a folder of images (``--local``)::

    python workflows/svm_train/run.py --cytomine_host URL --cytomine_public_key K --cytomine_private_key K \\
        --cytomine_id_project P --cytomine_id_software S [--cytomine_id_terms 12,13] ...
    python workflows/svm_train/run.py --local --infolder IMAGES --outfolder OUT
"""

from __future__ import annotations

import sys

from mtdp_core.cytomine.apps import svm_train
from mtdp_core.cytomine.inputs import add_processing_inputs, add_project_list_input, add_svm_inputs, app_parser
from mtdp_core.cytomine.job import run_app
from mtdp_core.cytomine.params import AppArgumentParser

DESCRIPTOR = {
    "name": "MTDP-SVM-Train",
    "description": (
        "Trains a classifier of annotations: a pre-trained network (multi-task pre-training for digital "
        "pathology, or ImageNet) turns each annotation's crop into features, and a linear SVM learns the "
        "terms from them (C chosen by cross-validation grouped by image). Attaches the model (for "
        "MTDP-SVM-Predict), the cross-validated score, per-class metrics and a confusion matrix."
    ),
    "image": "mtdp/s_mtdp-svm-train",
}


def get_args_parser() -> AppArgumentParser:
    parser = app_parser("svm_train", DESCRIPTOR["description"], purpose="train")
    add_project_list_input(
        parser,
        "cytomine_positive_terms",
        of="terms",
        name="Positive terms (binary mode)",
        description="Binary mode: annotations with these terms form the positive class, all others the "
        "negative class. Empty: one class per term.",
    )
    add_svm_inputs(parser)
    add_processing_inputs(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_app(get_args_parser(), argv, svm_train.run, app="svm_train")


if __name__ == "__main__":
    sys.exit(main())
