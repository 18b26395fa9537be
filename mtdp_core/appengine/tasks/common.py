"""What the tasks share: the file inputs of labelled examples, and turning them into the local
folder the legacy pipelines read (BIAFLOWS ``--local`` layout: class folders and/or images with a
``labels.csv``); the training tasks' run on them (``train_on_examples``) and their common outputs.

Examples come as the App Engine allows:

- ``examples``: a **zip file** of class folders (``WBC/1.png``, ``RBC/2.png``, ...; one top
  folder around them is fine) and/or images with a ``labels.csv`` (``filename,label[,group]``;
  ``group`` = the slide or patient, to keep it on one side of the cross-validation);
- ``images`` + ``labels``: an **array of images** (annotations picked in the viewer arrive as
  their crops) and an **array of labels** in the same order (the web UI's list of texts).

Both may be given: the array's images join the zip's classes by label. Every image is checked to
decode before anything runs, and a failure names the item (``images[3]``, ``examples: WBC/x.png``).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import stat
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from mtdp_core.appengine.errors import TaskInputError
from mtdp_core.appengine.files import InputImage
from mtdp_core.appengine.runner import TaskContext
from mtdp_core.appengine.spec import FileInput, Output
from mtdp_core.cytomine.inputs import add_backbone_inputs, add_engine_input, add_image_size_input, add_runtime_inputs

logger = logging.getLogger(__name__)

#: Pillow format -> the suffix the pipelines' image listing recognises.
IMAGE_SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "BMP": ".bmp", "WEBP": ".webp", "MPO": ".jpg"}
LABELS_FILE = "labels.csv"
#: Bounds on a zip of examples (it comes from a person's upload: no zip bombs, no path tricks).
MAX_ZIP_MEMBERS = 200_000
MAX_ZIP_BYTES = 32 << 30
MAX_ARRAY_ITEMS = 20_000

EXAMPLES_INPUT = FileInput(
    "examples",
    "Examples (zip)",
    "A zip of labelled images: one folder per class (WBC/img1.png, RBC/img2.jpg, ...), and/or images "
    "with a labels.csv (columns filename,label and optionally group: the slide or patient, kept on one "
    "side of the cross-validation). PNG, JPEG, TIFF, BMP or WebP.",
    "file",
    optional=True,
)
IMAGES_INPUT = FileInput(
    "images",
    "Example images",
    "Images or annotations (their crops are used) to learn from, in the order of the labels.",
    {"id": "array", "subtype": {"id": "image"}, "min_size": 1, "max_size": MAX_ARRAY_ITEMS},
    optional=True,
)
LABELS_INPUT = FileInput(
    "labels",
    "Labels of the example images",
    "The class of each example image, in the same order (one text per image; the same text for the same "
    "class). They join the zip's class folders of the same name.",
    {"id": "array", "subtype": {"id": "string", "min_length": 1}, "min_size": 1, "max_size": MAX_ARRAY_ITEMS},
    optional=True,
)


#: The file inputs of the training tasks (train, finetune): a zip of examples and/or labelled images.
EXAMPLE_INPUTS = (EXAMPLES_INPUT, IMAGES_INPUT, LABELS_INPUT)
#: The classes of a trained model (an output of every training task).
CLASSES_OUTPUT = Output(
    "classes",
    "Classes",
    "The classes the model predicts.",
    {"id": "array", "subtype": {"id": "string"}, "min_size": 2, "max_size": 10_000},
)


def add_network_inputs(parser: argparse.ArgumentParser, *, engine: bool = True) -> None:
    """The inputs of a task that runs a network over examples (train, finetune, extract_features):
    the backbone, its input size, the runtime (no download threads: a task downloads nothing) and,
    for a frozen backbone (``engine``), the inference engine; the legacy apps' declarations."""
    add_backbone_inputs(parser)
    add_image_size_input(parser)
    add_runtime_inputs(parser, only=("batch_size", "n_workers", "device", "seed"))
    if engine:
        add_engine_input(parser)


def model_output(what: str) -> Output:
    """The model file a training task gives (``what``: the trained classifier, the fine-tuned network)."""
    return Output("model", "Model", f"{what} (mtdp model file, .npz): give it to MTDP Classify.", "file")


def confusion_matrix_output(of: str) -> Output:
    """The confusion matrix picture of a training task (``of``: on which predictions)."""
    return Output("confusion_matrix", "Confusion matrix", f"{of}, as a picture.", {"id": "image", "formats": ["png"]})


def train_on_examples(context: TaskContext, pipeline: Callable[..., str], *, split: str) -> tuple[Any, Any, str]:
    """Run a legacy training ``pipeline`` (``svm_train.run``, ``finetune_predict.run``) on the
    task's labelled examples, as a local job over their folder, and write the outputs every
    training task gives: ``model``, ``classes``, ``confusion_matrix``. ``split`` names what a
    missing ``group`` column leaves ungrouped (a warning). Returns the job, the model and the
    pipeline's summary."""
    from mtdp_core.cytomine.apps.common import MODEL_FILENAME
    from mtdp_core.transfer.persistence import load_model

    examples = gather_examples(context, need_labels=True)
    if not examples.grouped:
        logger.warning(
            "%s not grouped by slide or patient (the App Engine does not say where an image comes from): examples "
            "of one slide may fall on both sides and make the score optimistic. Give a zip with a labels.csv "
            "that has a group column to group them.",
            split,
        )
    job = context.local_job(examples.folder)
    summary = pipeline(job, context.args)
    model_path = job.output_path(MODEL_FILENAME)
    model = load_model(model_path)
    out = context.outputs
    out.file("model", model_path)
    out.array("classes", [c.name for c in model.classes])
    out.file("confusion_matrix", job.output_path("confusion_matrix.png"))
    return job, model, summary


def image_suffix(path: Path, label: str) -> str:
    """The suffix of an image file by its content (App Engine inputs have no extension); a file
    Pillow cannot decode is refused with a message naming the item."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
            kind = image.format or ""
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise TaskInputError(
            f"Give {label} as an image file (PNG, JPEG, TIFF, BMP or WebP): it cannot be read ({exc})."
        ) from None
    if kind not in IMAGE_SUFFIXES:
        raise TaskInputError(f"Give {label} as PNG, JPEG, TIFF, BMP or WebP: it is {kind or 'an unknown format'}.")
    return IMAGE_SUFFIXES[kind]


def link(source: Path, target: Path) -> Path:
    """``target`` pointing at ``source`` (a symlink, or a copy where links are not allowed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        target.symlink_to(source.resolve())
    except OSError:
        shutil.copyfile(source, target)
    return target


@dataclass
class Examples:
    """The examples of a run, laid out for the legacy pipelines.

    Attributes:
        folder: class folders and/or images with labels.csv (the pipelines' ``--infolder``).
        counts: images per label; unlabelled: images without one.
        grouped: whether groups (slides, patients) came with them.
    """

    folder: Path
    counts: Counter = field(default_factory=Counter)
    unlabelled: int = 0
    grouped: bool = False

    @property
    def n_images(self) -> int:
        return sum(self.counts.values()) + self.unlabelled

    def describe(self) -> str:
        classes = ", ".join(f"{name} {n}" for name, n in sorted(self.counts.items()))
        extra = f", {self.unlabelled} unlabelled" if self.unlabelled else ""
        return f"{self.n_images} images ({classes or 'no label'}{extra})"


def gather_examples(context: TaskContext, *, need_labels: bool) -> Examples:
    """The ``examples`` zip and the ``images``/``labels`` arrays of ``context`` as one folder.

    ``need_labels``: training (every array image needs a label; at least two classes).
    """
    inputs = context.inputs
    folder = context.workdir / "examples"
    folder.mkdir(parents=True, exist_ok=True)
    zip_path = inputs.file("examples") if "examples" in _file_ids(context) else None
    images = inputs.images("images") if "images" in _file_ids(context) else None
    labels = inputs.texts("labels") if "labels" in _file_ids(context) else None
    if zip_path is None and not images:
        raise TaskInputError(
            "Give examples: a zip of class folders (examples), or images with their labels (images and labels)."
        )
    if zip_path is not None:
        extract_examples(zip_path, folder)
    if labels is not None and images is None:
        raise TaskInputError(f"Give the images the labels are for: {len(labels)} labels but no images.")
    if images:
        if labels is None and need_labels:
            raise TaskInputError(f"Give labels for the {len(images)} example images (one per image, in order).")
        if labels is not None and len(labels) != len(images):
            raise TaskInputError(
                f"Give one label per example image: {len(images)} images but {len(labels)} labels "
                "(the App Engine keeps their order)."
            )
        _place_array(images, labels, folder)
    return survey(folder, need_labels=need_labels)


def _file_ids(context: TaskContext) -> set[str]:
    return {item.id for item in context.task.file_inputs}


def _place_array(images: list[InputImage], labels: list[str] | None, folder: Path) -> None:
    for i, image in enumerate(images):
        suffix = image_suffix(image.path, image.label)
        name = f"{image.label.replace('[', '_').replace(']', '')}{suffix}"
        if labels is None:
            link(image.path, _free(folder / name))
            continue
        label = labels[i].strip()
        if not label:
            raise TaskInputError(f"Give a label to images[{i}]: labels[{i}] is empty.")
        if "/" in label or "\\" in label or label in (".", "..") or label.startswith(".") or len(label) > 200:
            raise TaskInputError(
                f"Use a class name without '/', '\\' or a leading '.' (at most 200 characters): labels[{i}] is "
                f"{label[:60]!r}."
            )
        link(image.path, _free(folder / label / name))


def _free(path: Path) -> Path:
    """``path``, or a variant of it that no file uses yet."""
    candidate, n = path, 1
    while candidate.exists() or candidate.is_symlink():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate


def extract_examples(zip_path: Path, folder: Path) -> None:
    """Extract the images and labels.csv of a zip into ``folder``, safely: no absolute or ``..``
    paths, no links, bounded member count and size (counted while writing: a zip can lie about
    sizes); other files are skipped. One top folder around everything is removed."""
    from mtdp_core.data.images import IMAGE_EXTENSIONS

    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise TaskInputError(f"Give the examples as a zip file: the one given cannot be opened ({exc}).") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) > MAX_ZIP_MEMBERS:
            raise TaskInputError(f"Give at most {MAX_ZIP_MEMBERS} files in the examples zip: it holds {len(members)}.")
        wanted = []
        for member in members:
            parts = PurePosixPath(member.filename.replace("\\", "/")).parts
            if member.filename.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                raise TaskInputError(f"Fix the examples zip: {member.filename!r} points outside the zip.")
            if stat.S_ISLNK(member.external_attr >> 16):
                raise TaskInputError(f"Fix the examples zip: {member.filename!r} is a link (give the files).")
            if any(p.startswith(".") or p == "__MACOSX" for p in parts):
                continue
            name = parts[-1].lower()
            if name == LABELS_FILE or os.path.splitext(name)[1] in IMAGE_EXTENSIONS:
                wanted.append((member, parts))
        if not wanted:
            raise TaskInputError(
                "Put images in the examples zip (class folders of PNG, JPEG, TIFF, BMP or WebP files, or images "
                "with a labels.csv): it holds none."
            )
        # One folder around everything (zipping a folder makes one): class folders are inside it.
        tops = {parts[0] for _, parts in wanted}
        nested = all(len(parts) > 2 for _, parts in wanted) or any(p[1:] == (LABELS_FILE,) for _, p in wanted)
        strip = 1 if len(tops) == 1 and all(len(parts) >= 2 for _, parts in wanted) and nested else 0
        written = 0
        for member, parts in wanted:
            target = folder.joinpath(*parts[strip:])
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, open(target, "wb") as sink:
                while chunk := source.read(1 << 20):
                    written += len(chunk)
                    if written > MAX_ZIP_BYTES:
                        raise TaskInputError(
                            f"Give an examples zip of at most {MAX_ZIP_BYTES >> 30} GiB once unpacked: it is larger."
                        )
                    sink.write(chunk)
    logger.info("examples zip: %d files extracted", len(wanted))


def survey(folder: Path, *, need_labels: bool) -> Examples:
    """Check every image of ``folder`` decodes and count them per label (as the pipelines will
    read the folder: class folders, and labels.csv for images at the top)."""
    from mtdp_core.cytomine.biaflows import read_image_folder
    from mtdp_core.cytomine.errors import LocalDataError

    try:
        images = read_image_folder(folder, what="the examples")
    except LocalDataError as exc:
        raise TaskInputError(str(exc).replace(str(folder), "the examples")) from None
    counts: Counter = Counter()
    unlabelled = 0
    for image in images:
        image_suffix(image.path, f"the example {image.key}")
        if image.label is None:
            unlabelled += 1
        else:
            counts[image.label] += 1
    examples = Examples(folder, counts, unlabelled, grouped=any(i.group for i in images))
    if need_labels:
        if len(counts) < 2:
            raise TaskInputError(
                f"Give examples of at least two classes: found {len(counts)} "
                f"({', '.join(counts) or 'no labelled image'}) among {examples.describe()}."
            )
        if unlabelled:
            logger.warning("%d examples have no label: they are left out (classify predicts them)", unlabelled)
    logger.info("examples: %s", examples.describe())
    return examples
