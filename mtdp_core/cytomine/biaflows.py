"""BIAFLOWS conventions: the flags of ``BiaflowsJob.from_cli`` and local runs on folders.

biaflows-utilities (Neubias-WG5, v0.9.3) cannot be installed on Python 3.11 (it pins
Python 3.6-era packages and imports the client's job API at import time), and it has no
problem class for patch or annotation classification. The apps implement its conventions
instead, so that BIAFLOWS runners and people used to them drive the apps the same way:

============================================  ==================================================
flag                                          effect here
============================================  ==================================================
``-l/--local``                                no server: inputs from ``--infolder``, outputs to
                                              ``--outfolder`` (implied by ``-nd -nau -nmu``)
``-nd/--no_download`` (``--nodownload``)      use the crops already in ``--infolder``
                                              (``<annotation id>.png``) instead of downloading
``-nau/--no_annotations_upload``              predictions are not pushed (still written to the
(``--noexport``)                              predictions CSV)
``-nmu/--no_metrics_upload``                  metrics and report are written, not attached
``-nmc/--no_metrics_computation``             no metrics, confusion matrix or report
(``--nometrics``)
``--infolder`` / ``--outfolder`` /            inputs / outputs / ground truth folders
``--gtfolder``
``--descriptor``                              accepted (the apps read their parser, not it)
``--tilefolder``, ``-t/--tiling``, ``-tw``,   accepted and ignored with a warning: annotation
``-th``, ``-to``, ``--batch_id``              crops are classified whole
============================================  ==================================================

``--batch_size`` is the apps' model batch size (BIAFLOWS used the same name to split the
input images into batches; that is not supported).

Local folders (``--infolder``, ``--gtfolder``): images in **class folders**
(``FOLDER/<class>/*.png``: the class is the folder name), and/or **directly in the folder**
(unlabelled, or labelled by a ``labels.csv`` there with columns ``filename,label`` and an
optional ``group``: the image, slide or patient id, used to group cross-validation folds),
read by the data layer's one folder reader (``mtdp_core.data.folders``).
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from mtdp_core.cytomine.errors import LocalDataError
from mtdp_core.cytomine.params import LOCAL_GROUP_TITLE
from mtdp_core.data import folders
from mtdp_core.data.folders import FolderImage
from mtdp_core.errors import DataError

logger = logging.getLogger(__name__)


def add_biaflows_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The BIAFLOWS flags (plus the local-run options the caller adds to the returned group)."""
    group = parser.add_argument_group(
        LOCAL_GROUP_TITLE,
        "Options for runs outside Cytomine (not descriptor inputs). BIAFLOWS-compatible flags "
        "(biaflows-utilities' BiaflowsJob) and local-mode inputs.",
    )
    group.add_argument(
        "-l",
        "--local",
        action="store_true",
        help="run without a server: images from --infolder, outputs to --outfolder",
    )
    group.add_argument(
        "-nd",
        "--no_download",
        "--nodownload",
        dest="no_download",
        action="store_true",
        help="use the crops already in --infolder (<annotation id>.png) instead of downloading",
    )
    group.add_argument(
        "-nau",
        "--no_annotations_upload",
        "--noexport",
        dest="no_annotations_upload",
        action="store_true",
        help="do not push predictions to the server",
    )
    group.add_argument(
        "-nmu",
        "--no_metrics_upload",
        dest="no_metrics_upload",
        action="store_true",
        help="write metrics and report to --outfolder without attaching them to the job",
    )
    group.add_argument(
        "-nmc",
        "--no_metrics_computation",
        "--nometrics",
        dest="no_metrics_computation",
        action="store_true",
        help="skip metrics, confusion matrix and report",
    )
    group.add_argument(
        "--descriptor",
        default="/app/descriptor.json",
        help="descriptor path (accepted for BIAFLOWS compatibility; unused)",
    )
    group.add_argument(
        "--infolder",
        type=Path,
        default=None,
        help="input images (local mode: class folders and/or images with labels.csv); with a "
        "server: where crops are stored as <annotation id>.png",
    )
    group.add_argument(
        "--outfolder", type=Path, default=None, help="output folder (default: ./mtdp-out/<app>-<job id>)"
    )
    group.add_argument(
        "--gtfolder",
        type=Path,
        default=None,
        help="ground truth for metrics in predict mode (class folders or labels.csv)",
    )
    group.add_argument("--tilefolder", type=Path, default=None, help="accepted, unused (no tiling)")
    group.add_argument("--batch_id", type=int, default=0, help="accepted, unused")
    group.add_argument("-t", "--tiling", action="store_true", help="accepted, unused (crops are classified whole)")
    group.add_argument("-tw", "--tile_width", type=int, default=256, help="accepted, unused")
    group.add_argument("-th", "--tile_height", type=int, default=256, help="accepted, unused")
    group.add_argument("-to", "--tile_overlap", type=int, default=32, help="accepted, unused")
    group.add_argument(
        "--cache_dir",
        type=Path,
        default=None,
        help="crop and feature cache (default: $MTDP_CACHE_DIR or ~/.cache/mtdp)",
    )
    group.add_argument(
        "--log_level",
        "--cytomine_log_level",
        dest="log_level",
        default=None,
        help="logging level (DEBUG, INFO, ...; default: $MTDP_LOG_LEVEL or INFO)",
    )
    return group


@dataclass(frozen=True)
class BiaflowsFlags:
    """The flags as BiaflowsJob exposes them (``cj.flags``)."""

    local: bool = False
    do_download: bool = True
    do_upload_annotations: bool = True
    do_upload_metrics: bool = True
    do_compute_metrics: bool = True
    infolder: Path | None = None
    outfolder: Path | None = None
    gtfolder: Path | None = None
    tiling: bool = False
    batch_id: int = 0
    cache_dir: Path | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def warnings(self) -> list[str]:
        return list(self.notes)


def biaflows_flags(args: argparse.Namespace) -> BiaflowsFlags:
    no_download = bool(getattr(args, "no_download", False))
    no_annotations = bool(getattr(args, "no_annotations_upload", False))
    no_metrics_upload = bool(getattr(args, "no_metrics_upload", False))
    local = bool(getattr(args, "local", False)) or (no_download and no_annotations and no_metrics_upload)
    notes = []
    if getattr(args, "tiling", False) or getattr(args, "tilefolder", None):
        notes.append("tiling options are ignored: annotation crops are classified whole")
    if getattr(args, "batch_id", 0):
        notes.append("--batch_id is ignored: inputs are not split into batches")
    if getattr(args, "log_level", None):
        logging.getLogger().setLevel(str(args.log_level).upper())
    return BiaflowsFlags(
        local=local,
        do_download=not no_download,
        do_upload_annotations=not no_annotations,
        do_upload_metrics=not no_metrics_upload,
        do_compute_metrics=not bool(getattr(args, "no_metrics_computation", False)),
        infolder=getattr(args, "infolder", None),
        outfolder=getattr(args, "outfolder", None),
        gtfolder=getattr(args, "gtfolder", None),
        tiling=bool(getattr(args, "tiling", False)),
        batch_id=int(getattr(args, "batch_id", 0) or 0),
        cache_dir=getattr(args, "cache_dir", None),
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------- local folders


def read_image_folder(folder: str | os.PathLike | None, *, what: str = "--infolder") -> list[FolderImage]:
    """Images of a BIAFLOWS-style local folder (see the module docstring), sorted by key."""
    if folder is None:
        raise LocalDataError(f"Give {what} FOLDER: local mode reads its images from a folder.")
    root = Path(folder)
    if not root.is_dir():
        raise LocalDataError(f"Give an existing folder as {what}: {root} does not exist or is not a folder.")
    try:
        images = folders.read_image_folder(root)
    except DataError as exc:
        raise LocalDataError(str(exc)) from None
    if not images:
        raise LocalDataError(
            f"Put images in {root} (in class sub-folders, or with a {folders.LABELS_FILE}): it has no image file."
        )
    logger.info(
        "%s: %d images, %d labelled, %d classes",
        root,
        len(images),
        sum(i.label is not None for i in images),
        len({i.label for i in images if i.label is not None}),
    )
    return images


def ground_truth(folder: str | os.PathLike) -> dict[str, str]:
    """Ground-truth labels of a ``--gtfolder`` by file name (and relative path): images in class
    folders, and/or a ``labels.csv`` (which may list files that are only in ``--infolder``)."""
    root = Path(folder)
    if not root.is_dir():
        raise LocalDataError(f"Give an existing folder as --gtfolder: {root} does not exist or is not a folder.")
    try:
        labels = folders.read_labels_file(root / folders.LABELS_FILE)
        images = folders.read_image_folder(root, labels_file=None)
    except DataError as exc:
        raise LocalDataError(str(exc)) from None
    truth = {name: label for name, (label, _) in labels.items() if label is not None}
    for image in images:
        if image.label is not None:  # in a class folder
            truth[image.key] = image.label
            truth.setdefault(image.path.name, image.label)
    if not truth:
        raise LocalDataError(
            f"Put class folders or a {folders.LABELS_FILE} (filename,label) in --gtfolder {root}: it has neither."
        )
    return truth
