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

from mtdp_core.appengine.runner import TaskContext
from mtdp_core.appengine.spec import Output, TaskDefinition
from mtdp_core.appengine.tasks.common import (
    CLASSES_OUTPUT,
    EXAMPLE_INPUTS,
    add_network_inputs,
    confusion_matrix_output,
    model_output,
    train_on_examples,
)
from mtdp_core.cytomine.inputs import add_finetune_inputs
from mtdp_core.cytomine.params import new_parser


def get_args_parser() -> argparse.ArgumentParser:
    parser = new_parser("finetune", "Parameters of the finetune task (the finetune-predict app's).")
    add_finetune_inputs(parser)
    add_network_inputs(parser, engine=False)  # a fine-tuned network trains and runs with torch
    return parser


def run(context: TaskContext) -> str:
    from mtdp_core.cytomine.apps import finetune_predict

    # The legacy pipeline would also predict unlabelled examples; here classify does that with the model.
    job, _, summary = train_on_examples(context, finetune_predict.run, split="the validation split is")
    out = context.outputs
    out.scalar("validation_score", float(job.properties["validation_score"]))
    out.scalar("validation_metric", job.properties["scoring"])
    out.scalar("best_learning_rate", float(job.properties["best_lr"]))
    out.scalar("best_epoch", int(job.properties["best_epoch"]))
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
    file_inputs=EXAMPLE_INPUTS,
    build_parser=get_args_parser,
    outputs=(
        model_output("The fine-tuned network"),
        Output(
            "validation_score",
            "Validation score",
            "Score of the kept network on the validation share (accuracy, or ROC AUC for two classes).",
            {"id": "number", "geq": 0, "leq": 1},
        ),
        Output("validation_metric", "Score metric", "The metric of the score: accuracy or roc_auc.", "string"),
        Output("best_learning_rate", "Learning rate kept", "The learning rate of the kept network.", "number"),
        Output("best_epoch", "Epoch kept", "The epoch of the kept network.", "integer"),
        CLASSES_OUTPUT,
        confusion_matrix_output("Confusion matrix of the kept network on the validation share"),
        Output("history", "Training history", "Loss and validation score of every epoch (CSV).", "file"),
    ),
    run=run,
    resources={"ram": "8Gi", "cpus": 2, "gpus": 0},
    legacy_app="finetune_predict",
)
