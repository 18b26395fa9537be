"""finetune-predict: fine-tune a pre-trained network on a project's labelled annotations, predict
the others (those of the target images, or those without a term) and push the predictions back.

    python workflows/finetune_predict/run.py --cytomine_host URL ... [--cytomine_id_target_images 5,6]
    python workflows/finetune_predict/run.py --local --infolder IMAGES --outfolder OUT
"""

from __future__ import annotations

import sys

from mtdp_core.cytomine.apps import finetune_predict
from mtdp_core.cytomine.inputs import add_processing_inputs, add_push_inputs, app_parser
from mtdp_core.cytomine.job import run_app
from mtdp_core.cytomine.params import AppArgumentParser, add_input, boolean, integer, number, positive_number_list

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
    add_input(
        parser,
        "cytomine_id_target_images",
        type="ListDomain",
        name="Images to predict",
        default="",
        uri="/api/project/$currentProject$/imageinstance.json",
        uri_print_attribute="instanceFilename",
        uri_sort_attribute="instanceFilename",
        description="The annotations of these images are predicted. Empty: the selected annotations that "
        "have no term are predicted.",
    )
    add_push_inputs(parser)
    add_input(
        parser,
        "epochs",
        type="Number",
        name="Epochs",
        default=10,
        converter=integer(1, 1000),
        description="Passes over the training annotations for each learning rate (the paper used 100).",
        minimum=1,
        maximum=1000,
    )
    add_input(
        parser,
        "learning_rates",
        type="String",
        name="Learning rates",
        default="0.001,0.0001",
        converter=positive_number_list,
        description="Learning rates to try, comma-separated (no spaces); the one with the best validation "
        "score is kept (the paper tried 0.001,0.0001,0.00001,0.000001).",
    )
    add_input(
        parser,
        "patience",
        type="Number",
        name="Early stopping patience",
        default=3,
        converter=integer(0, 1000),
        description="Stop a learning rate after this many epochs without validation improvement (0: never).",
        minimum=0,
        maximum=1000,
    )
    add_input(
        parser,
        "val_fraction",
        type="Number",
        name="Validation share",
        default=0.2,
        converter=number(0.05, 0.5),
        description="Share of the labelled annotations kept for validation; annotations of one image stay on one side.",
        minimum=0.05,
        maximum=0.5,
    )
    add_input(
        parser,
        "augment",
        type="Boolean",
        name="Augment",
        default=True,
        converter=boolean,
        description="Random square crops and flips of the training crops (the paper's augmentation).",
    )
    add_processing_inputs(parser, engine=False)  # a fine-tuned network trains and runs with torch
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_app(get_args_parser(), argv, finetune_predict.run, app="finetune_predict")


if __name__ == "__main__":
    sys.exit(main())
