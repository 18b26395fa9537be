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
import logging

from mtdp_core.appengine.runner import TaskContext
from mtdp_core.appengine.spec import Output, TaskDefinition
from mtdp_core.appengine.tasks.common import EXAMPLES_INPUT, IMAGES_INPUT, LABELS_INPUT, gather_examples
from mtdp_core.cytomine.inputs import (
    add_backbone_inputs,
    add_engine_input,
    add_image_size_input,
    add_runtime_inputs,
    add_svm_inputs,
)
from mtdp_core.cytomine.params import new_parser

logger = logging.getLogger(__name__)

RUNTIME = ("batch_size", "n_workers", "device", "seed")


def get_args_parser() -> argparse.ArgumentParser:
    parser = new_parser("train", "Parameters of the train task (the svm-train app's).")
    add_svm_inputs(parser)
    add_backbone_inputs(parser)
    add_image_size_input(parser)
    add_runtime_inputs(parser, only=RUNTIME)
    add_engine_input(parser)
    return parser


def run(context: TaskContext) -> str:
    from mtdp_core.cytomine.apps import svm_train
    from mtdp_core.cytomine.apps.common import MODEL_FILENAME
    from mtdp_core.transfer.persistence import load_model

    examples = gather_examples(context, need_labels=True)
    if not examples.grouped:
        logger.warning(
            "cross-validation folds are not grouped by slide or patient (the App Engine does not say where an "
            "image comes from): several examples of one slide may fall on both sides and make the CV score "
            "optimistic. Give a zip with a labels.csv that has a group column to group them."
        )
    job = context.local_job(examples.folder)
    summary = svm_train.run(job, context.args)
    model_path = job.output_path(MODEL_FILENAME)
    model = load_model(model_path)
    training = model.training
    counts = model.extra.get("class_counts") or {}
    out = context.outputs
    out.file("model", model_path)
    out.scalar("cv_score", float(training["best_score"]))
    out.scalar("cv_metric", str(training["scoring"]))
    out.array("classes", [c.name for c in model.classes])
    out.array("class_counts", [int(counts.get(c.name, 0)) for c in model.classes])
    out.scalar("n_examples", int(sum(counts.values())))
    out.file("confusion_matrix", job.output_path("confusion_matrix.png"))
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
    file_inputs=(EXAMPLES_INPUT, IMAGES_INPUT, LABELS_INPUT),
    build_parser=get_args_parser,
    outputs=(
        Output("model", "Model", "The trained classifier (mtdp model file, .npz): give it to MTDP Classify.", "file"),
        Output(
            "cv_score",
            "Cross-validated score",
            "Score of the chosen C in cross-validation (accuracy, or ROC AUC for two classes).",
            {"id": "number", "geq": 0, "leq": 1},
        ),
        Output("cv_metric", "Score metric", "The metric of the score: accuracy or roc_auc.", "string"),
        Output(
            "classes",
            "Classes",
            "The classes the model predicts.",
            {"id": "array", "subtype": {"id": "string"}, "min_size": 2, "max_size": 10_000},
        ),
        Output(
            "class_counts",
            "Examples per class",
            "Number of training examples of each class, in the order of the classes.",
            {"id": "array", "subtype": {"id": "integer", "geq": 0}, "min_size": 2, "max_size": 10_000},
        ),
        Output("n_examples", "Examples", "Number of labelled examples the model was trained on.", "integer"),
        Output(
            "confusion_matrix",
            "Confusion matrix",
            "Cross-validated confusion matrix (out-of-fold predictions of the chosen C), as a picture.",
            {"id": "image", "formats": ["png"]},
        ),
        Output(
            "metrics", "Metrics", "Cross-validation details (JSON): per-class precision, recall, F1, C grid.", "file"
        ),
    ),
    run=run,
    resources={"ram": "8Gi", "cpus": 4, "gpus": 0},
    legacy_app="svm_train",
)
