"""extract_features: images -> deep features in a file (the extract-features app's pipeline).

For people who analyse features elsewhere (clustering, their own classifiers, a comparison of
networks): the images picked in the viewer (annotations arrive as their crops) and/or a zip of
images run through the pre-trained network; the file is plain numpy (``np.load`` without pickle):
``features`` (n, n_features), ``filenames`` (the zip's paths, ``images_3.png`` for array items),
``labels`` (class folder, labels.csv or the ``labels`` array; empty when none). The metadata file
(JSON) names the network, its weights' sha256 and the preprocessing.
"""

from __future__ import annotations

import argparse

from mtdp_core.appengine.runner import TaskContext
from mtdp_core.appengine.spec import FileInput, Output, TaskDefinition
from mtdp_core.appengine.tasks.common import (
    EXAMPLES_INPUT,
    IMAGES_INPUT,
    LABELS_INPUT,
    add_network_inputs,
    gather_examples,
)
from mtdp_core.cytomine.params import new_parser

IMAGES = FileInput(
    "images",
    "Images",
    "Images or annotations (their crops are used) to compute features of.",
    IMAGES_INPUT.type,
    optional=True,
)
ZIP = FileInput(
    "examples",
    "Images (zip)",
    "A zip of images (PNG, JPEG, TIFF, BMP or WebP), in class folders or with a labels.csv if they have labels.",
    EXAMPLES_INPUT.type,
    optional=True,
)
LABELS = FileInput(
    "labels",
    "Labels of the images",
    "Optional: a label per image, in the same order, kept next to the features.",
    LABELS_INPUT.type,
    optional=True,
)


def get_args_parser() -> argparse.ArgumentParser:
    parser = new_parser("extract_features", "Parameters of the extract_features task (the extract-features app's).")
    add_network_inputs(parser)
    return parser


def run(context: TaskContext) -> str:
    import numpy as np

    from mtdp_core.cytomine.apps import extract_features

    examples = gather_examples(context, need_labels=False)
    job = context.local_job(examples.folder)
    summary = extract_features.run(job, context.args)
    features_path = job.output_path("features.npz")
    with np.load(features_path, allow_pickle=False) as data:
        n, d = data["features"].shape
    out = context.outputs
    out.file("features", features_path)
    out.file("metadata", job.output_path("features.json"))
    out.scalar("n_images", int(n))
    out.scalar("n_features", int(d))
    return summary


TASK = TaskDefinition(
    name="extract_features",
    title="MTDP Extract Features",
    description=(
        "Computes deep features of images with a pre-trained network (multi-task pre-training for digital "
        "pathology, or ImageNet), for analysis in other tools: pick annotations (their crops) or images, and/or "
        "give a zip of images. Gives a numpy file (features, file names, labels; no pickle) and its metadata "
        "(network, weights checksum, preprocessing)."
    ),
    file_inputs=(IMAGES, ZIP, LABELS),
    build_parser=get_args_parser,
    outputs=(
        Output(
            "features",
            "Features",
            "features (n x n_features, float32), filenames and labels, as a numpy .npz file (load with np.load).",
            "file",
        ),
        Output("metadata", "Metadata", "Network, weights (sha256), preprocessing and columns (JSON).", "file"),
        Output("n_images", "Images", "Number of images.", "integer"),
        Output("n_features", "Features per image", "Length of each feature vector.", "integer"),
    ),
    run=run,
    legacy_app="extract_features",
)
