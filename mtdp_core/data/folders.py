"""Folders of images on disk: the one reader of class sub-folders, label files and group ids.

A folder of images is read one way everywhere (the transfer CLI, the evaluation protocol,
the apps' local mode): images in **class folders** (``FOLDER/<class>/**``: the class is the
top-level sub-folder's name), and/or **directly in the folder** (unlabelled, or labelled by a
``labels.csv`` there with columns ``filename,label`` and an optional ``group``: the image,
slide or patient id that groups cross-validation folds). Hidden folders are skipped.

No torch import here: command-line ``--help`` and argument checks stay fast.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtdp_core.errors import ConfigurationError, DataError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
LABELS_FILE = "labels.csv"


def list_images(folder: str | os.PathLike, *, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` (by extension, case-insensitive), sorted."""
    root = Path(folder)
    if not root.is_dir():
        raise ConfigurationError(f"Image folder {root} does not exist or is not a folder: give a folder of images.")
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in root.glob(pattern) if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


@dataclass(frozen=True)
class FolderImage:
    """An image of a folder: its path, its key (path relative to the folder, with ``/``), its
    label (class folder name, or ``labels.csv``; None when unlabelled) and its group (``labels.csv``)."""

    path: Path
    key: str
    label: str | None = None
    group: str | None = None


def read_image_folder(folder: str | os.PathLike, *, labels_file: str | None = LABELS_FILE) -> list[FolderImage]:
    """The images of ``folder`` (see the module docstring), sorted by key; empty when it has none.

    ``labels_file``: the CSV (in ``folder``) labelling the images directly in it and giving
    groups; None: class folders only label images.

    Raises:
        ConfigurationError: ``folder`` is not a folder.
        DataError: the labels file has no filename or label column.
    """
    root = Path(folder)
    labels = read_labels_file(root / labels_file) if labels_file and root.is_dir() else {}
    images = []
    for path in list_images(root):
        parts = path.relative_to(root).parts
        if any(part.startswith(".") for part in parts[:-1]):
            continue
        key = "/".join(parts)
        label, group = labels.get(key, (None, None))
        images.append(FolderImage(path, key, parts[0] if len(parts) > 1 else label, group))
    missing = sorted(set(labels) - {i.key for i in images})
    if missing:
        logger.warning("%s lists %d files that are not in %s (e.g. %s)", labels_file, len(missing), root, missing[0])
    return images


def read_labels_file(path: str | os.PathLike) -> dict[str, tuple[str | None, str | None]]:
    """``filename -> (label, group)`` from a CSV with columns filename, label[, group] (other
    usual names accepted: file/image/path/name, class/term/category, slide/patient/image_id;
    ``,``, ``;`` or tab separated). Empty when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8-sig") as handle:
        sample = handle.read(4096)
        handle.seek(0)
        try:
            dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
        except csv.Error:
            dialect = csv.excel
        reader = csv.DictReader(handle, dialect=dialect)
        fields = {name.strip().lower(): name for name in reader.fieldnames or []}
        file_col = next((fields[c] for c in ("filename", "file", "image", "path", "name") if c in fields), None)
        label_col = next((fields[c] for c in ("label", "class", "term", "category") if c in fields), None)
        group_col = next((fields[c] for c in ("group", "slide", "patient", "image_id") if c in fields), None)
        if file_col is None or label_col is None:
            raise DataError(
                f"Name the columns of {path} 'filename' and 'label' (optionally 'group'): found {reader.fieldnames}."
            )
        out = {}
        for row in reader:
            name = (row.get(file_col) or "").strip()
            if not name:
                continue
            label = (row.get(label_col) or "").strip() or None
            group = (row.get(group_col) or "").strip() or None if group_col else None
            out[name] = (label, group)
    return out


def labelled_images(folder: str | os.PathLike) -> tuple[list[Path], list[str]]:
    """Images under ``folder/<class>/...``: paths and class names (every image in a class folder)."""
    root = Path(folder)
    images = read_image_folder(root, labels_file=None)
    if any(i.label is None for i in images):
        raise ConfigurationError(f"{root} has images outside class folders: put each image in {root}/<class>/.")
    if not images:
        raise ConfigurationError(f"No images under {root}: expected {root}/<class>/<image files>.")
    return [i.path for i in images], [str(i.label) for i in images]


def groups_from_names(paths: Sequence[str | os.PathLike], pattern: str | None) -> np.ndarray | None:
    """Group ids from file names with a regular expression (its first group, or the whole match).

    ``"prefix"`` is a shorthand for the text before the first ``_`` (Cytomine crops are
    named ``{image}_{annotation}.png``, so the group is the image). None: no groups.
    """
    if pattern is None:
        return None
    regex = re.compile(r"^([^_]+)_" if pattern == "prefix" else pattern)
    out = []
    for p in paths:
        match = regex.search(Path(p).name)
        if match is None:
            raise ConfigurationError(
                f"File name {Path(p).name!r} does not match the group pattern {pattern!r}: fix the pattern or the "
                "names."
            )
        out.append(match.group(1) if match.groups() else match.group(0))
    return np.array(out)
