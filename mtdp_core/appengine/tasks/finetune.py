"""finetune: labelled examples -> a fine-tuned network (the finetune-predict app's training).

The legacy app fine-tunes on the labelled annotations and predicts the others in one job; an App
Engine task has no project to read the others from, so the two halves are two tasks: this one
trains (the same pipeline on the app's local folder: validation split grouped by the zip's
``group`` column, the paper's augmentation, the best learning rate and epoch kept), ``classify``
predicts with the model it gives.

Fine-tuning is heavy on a CPU: the descriptor asks for more memory, and a GPU makes it fast when
the App Engine's cluster has one (the ``device`` input; ``auto`` uses it when present).
"""

from __future__ import annotations

import argparse
import logging

from mtdp_core.appengine.runner import TaskContext
from mtdp_core.appengine.spec import Output, TaskDefinition
from mtdp_core.appengine.tasks.common import EXAMPLES_INPUT, IMAGES_INPUT, LABELS_INPUT, gather_examples
from mtdp_core.cytomine.inputs import (
    add_backbone_inputs,
    add_finetune_inputs,
    add_image_size_input,
    add_runtime_inputs,
)
from mtdp_core.cytomine.params import new_parser

logger = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    parser = new_parser("finetune", "Parameters of the finetune task (the finetune-predict app's).")
    add_finetune_inputs(parser)
    add_backbone_inputs(parser)
    add_image_size_input(parser)
    add_runtime_inputs(parser, only=("batch_size", "n_workers", "device", "seed"))
    return parser


def run(context: TaskContext) -> str:
    from mtdp_core.cytomine.apps import finetune_predict
    from mtdp_core.cytomine.apps.common import MODEL_FILENAME
    from mtdp_core.transfer.persistence import load_model

    examples = gather_examples(context, need_labels=True)
    if examples.unlabelled:
        # The legacy pipeline would predict them; here classify does that with the model.
        logger.warning("%d unlabelled examples are not used (predict them with classify)", examples.unlabelled)
    if not examples.grouped:
        logger.warning(
            "the validation split is not grouped by slide or patient (the App Engine does not say where an image "
            "comes from): give a zip with a labels.csv that has a group column to group it."
        )
    job = context.local_job(examples.folder)
    summary = finetune_predict.run(job, context.args)
    model_path = job.output_path(MODEL_FILENAME)
    model = load_model(model_path)
    out = context.outputs
    out.file("model", model_path)
    out.scalar("validation_score", float(job.properties["validation_score"]))
    out.scalar("validation_metric", job.properties["scoring"])
    out.scalar("best_learning_rate", float(job.properties["best_lr"]))
    out.scalar("best_epoch", int(job.properties["best_epoch"]))
    out.array("classes", [c.name for c in model.classes])
    out.file("confusion_matrix", job.output_path("confusion_matrix.png"))
    out.file("history", job.output_path("history.csv"))
    return summary


TASK = TaskDefinition(
    name="finetune",
    title="MTDP Fine-tune",
    description=(
        "Fine-tunes a pre-trained network (multi-task pre-training for digital pathology, or ImageNet) and a new "
        "last layer on labelled example images, keeping the best epoch and learning rate on a validation share "
        "of them. Give a zip of class folders, and/or images (annotations) with their labels. Gives the model file "
        "(for MTDP Classify), the validation score and confusion matrix. Much faster with a GPU."
    ),
    file_inputs=(EXAMPLES_INPUT, IMAGES_INPUT, LABELS_INPUT),
    build_parser=get_args_parser,
    outputs=(
        Output("model", "Model", "The fine-tuned network (mtdp model file, .npz): give it to MTDP Classify.", "file"),
        Output(
            "validation_score",
            "Validation score",
            "Score of the kept network on the validation share (accuracy, or ROC AUC for two classes).",
            {"id": "number", "geq": 0, "leq": 1},
        ),
        Output("validation_metric", "Score metric", "The metric of the score: accuracy or roc_auc.", "string"),
        Output("best_learning_rate", "Learning rate kept", "The learning rate of the kept network.", "number"),
        Output("best_epoch", "Epoch kept", "The epoch of the kept network.", "integer"),
        Output(
            "classes",
            "Classes",
            "The classes the model predicts.",
            {"id": "array", "subtype": {"id": "string"}, "min_size": 2, "max_size": 10_000},
        ),
        Output(
            "confusion_matrix",
            "Confusion matrix",
            "Confusion matrix of the kept network on the validation share, as a picture.",
            {"id": "image", "formats": ["png"]},
        ),
        Output("history", "Training history", "Loss and validation score of every epoch (CSV).", "file"),
    ),
    run=run,
    resources={"ram": "8Gi", "cpus": 2, "gpus": 0},
    legacy_app="finetune_predict",
)
