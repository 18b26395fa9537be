"""finetune-predict: fine-tune a pre-trained network on a project's labelled annotations, predict
the others (those of the target images, or those without a term) and push the predictions back.

    python workflows/finetune_predict/run.py --cytomine_host URL ... [--cytomine_id_target_images 5,6]
    python workflows/finetune_predict/run.py --local --infolder IMAGES --outfolder OUT
"""

from __future__ import annotations

import sys

from mtdp_core.cytomine.apps import finetune_predict
from mtdp_core.cytomine.inputs import (
    add_finetune_inputs,
    add_processing_inputs,
    add_project_list_input,
    add_push_inputs,
    app_parser,
)
from mtdp_core.cytomine.job import run_app
from mtdp_core.cytomine.params import AppArgumentParser

DESCRIPTOR = {
    "name": "MTDP-Finetune-Predict",
    "description": (
        "Fine-tunes a pre-trained network (multi-task pre-training for digital pathology, or ImageNet) on "
        "the annotations that have a term, keeping the best epoch on a validation set of other images, then "
        "predicts the annotations of the target images (or those without a term) and saves the predicted "
        "terms. Attaches the model (usable by MTDP-SVM-Predict), training history and validation metrics."
    ),
    "image": "mtdp/s_mtdp-finetune-predict",
}


def get_args_parser() -> AppArgumentParser:
    parser = app_parser("finetune_predict", DESCRIPTOR["description"], purpose="train")
    add_project_list_input(
        parser,
        "cytomine_id_target_images",
        of="images",
        name="Images to predict",
        description="The annotations of these images are predicted. Empty: the selected annotations that "
        "have no term are predicted.",
    )
    add_push_inputs(parser)
    add_finetune_inputs(parser)
    add_processing_inputs(parser, engine=False)  # a fine-tuned network trains and runs with torch
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_app(get_args_parser(), argv, finetune_predict.run, app="finetune_predict")


if __name__ == "__main__":
    sys.exit(main())
