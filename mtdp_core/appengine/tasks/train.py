"""train: labelled examples -> a linear SVM on deep features (the svm-train app's pipeline).

The examples (a zip of class folders, and/or an array of images with an array of labels) are laid
out as the app's local folder and the svm-train pipeline runs on it unchanged: features of the
pre-trained network, the C grid cross-validated (folds grouped by the zip's ``group`` column;
otherwise by image), refit, probabilities calibrated on out-of-fold decisions, the model saved in
the pickle-free format ``classify`` (and the legacy svm-predict app, and ``mtdp predict``) reads.

Outputs: the model file, the CV score and its metric, the classes with their example counts, the
cross-validated confusion matrix (an image Cytomine imports into the project) and the metrics
(JSON: per-class precision/recall/F1, the C grid).
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
from mtdp_core.cytomine.inputs import add_svm_inputs
from mtdp_core.cytomine.params import new_parser


def get_args_parser() -> argparse.ArgumentParser:
    parser = new_parser("train", "Parameters of the train task (the svm-train app's).")
    add_svm_inputs(parser)
    add_network_inputs(parser)
    return parser


def run(context: TaskContext) -> str:
    from mtdp_core.cytomine.apps import svm_train

    job, model, summary = train_on_examples(context, svm_train.run, split="the cross-validation folds are")
    counts = model.extra.get("class_counts") or {}
    out = context.outputs
    out.scalar("cv_score", float(model.training["best_score"]))
    out.scalar("cv_metric", str(model.training["scoring"]))
    out.array("class_counts", [int(counts.get(c.name, 0)) for c in model.classes])
    out.scalar("n_examples", int(sum(counts.values())))
    out.file("metrics", job.output_path("metrics.json"))
    return summary


TASK = TaskDefinition(
    name="train",
    title="MTDP Train SVM",
    description=(
        "Trains a classifier from labelled example images: a pre-trained network (multi-task pre-training for "
        "digital pathology, or ImageNet) turns each image into features and a linear SVM learns the classes "
        "(C chosen by cross-validation). Give a zip of class folders, and/or images (annotations) with their "
        "labels. Gives the model file (for MTDP Classify), the cross-validated score and confusion matrix."
    ),
    file_inputs=EXAMPLE_INPUTS,
    build_parser=get_args_parser,
    outputs=(
        model_output("The trained classifier"),
        Output(
            "cv_score",
            "Cross-validated score",
            "Score of the chosen C in cross-validation (accuracy, or ROC AUC for two classes).",
            {"id": "number", "geq": 0, "leq": 1},
        ),
        Output("cv_metric", "Score metric", "The metric of the score: accuracy or roc_auc.", "string"),
        CLASSES_OUTPUT,
        Output(
            "class_counts",
            "Examples per class",
            "Number of training examples of each class, in the order of the classes.",
            {"id": "array", "subtype": {"id": "integer", "geq": 0}, "min_size": 2, "max_size": 10_000},
        ),
        Output("n_examples", "Examples", "Number of labelled examples the model was trained on.", "integer"),
        confusion_matrix_output("Cross-validated confusion matrix (out-of-fold predictions of the chosen C)"),
        Output(
            "metrics", "Metrics", "Cross-validation details (JSON): per-class precision, recall, F1, C grid.", "file"
        ),
    ),
    run=run,
    resources={"ram": "8Gi", "cpus": 4, "gpus": 0},
    legacy_app="svm_train",
)
