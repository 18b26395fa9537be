"""Turn the real image sets of ``../shared/data`` into tasks of a pool.

Each set has a ``MANIFEST.tsv`` (``path  split  label  sha256``). A converter reads it and
returns the task's classes, samples, group ids and metadata; ``build_task`` then completes
the splits (existing train/test splits are kept, a validation split is carved out of train,
sets without splits get a seeded, stratified, grouped-where-possible train/val/test split)
and writes the task. Images are not copied: ``task.json``'s ``root`` points at the set's
folder. The one exception is BCCD, whose boxes are cropped once into the pool folder (the
crop cache) and reused as long as ``boxes.csv`` does not change.

| task | classes | metric | groups | splits |
|---|---|---|---|---|
| oral_cancer | Normal, OSCC | roc_auc | none (no patient ids) | MANIFEST train/test, val from train |
| herlev_papsmear | 7 cell classes | accuracy | image (1st number in file name) | MANIFEST train/test, val from train |
| bccd | Platelets, RBC, WBC (box crops) | accuracy | image (source blood smear) | VOC ImageSets train/val/test |
| nct_crc_he | 7 tissue classes | accuracy | none | made: 60/20/20 |
| lc25000 | 5 classes | accuracy | none | made: 60/20/20 |
| malaria | Parasitized, Uninfected | roc_auc | slide (the C..P.. code) | made: 60/20/20 |
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from mtdp_core.data.pools import (
    SampleRow,
    Task,
    TaskInfo,
    TaskPool,
    assign_splits,
    default_metric,
    load_pool,
    write_pool_index,
    write_task,
)
from mtdp_core.errors import ChecksumMismatchError, DataError, UnknownNameError

logger = logging.getLogger(__name__)

MANIFEST = "MANIFEST.tsv"


@dataclass(frozen=True)
class RawTask:
    """What a converter extracts from a set, before splits are completed and files written.

    ``paths`` are relative to ``root``; ``splits`` hold the set's own split ("" if none).
    """

    classes: tuple[str, ...]
    paths: list[str]
    labels: list[str]
    splits: list[str]
    groups: list[str] | None
    root: Path
    group_kind: str
    description: str
    source: str


@dataclass(frozen=True)
class SourceEntry:
    name: str
    folder: str  # relative to the shared data folder
    convert: Callable[[Path, Path, bool, bool], RawTask]  # (set folder, task folder, verify, progress)
    description: str


_SOURCES: dict[str, SourceEntry] = {}


def register_source(name: str, folder: str, description: str):
    def decorator(fn: Callable[[Path, Path, bool, bool], RawTask]):
        if name in _SOURCES:
            raise ValueError(f"source {name!r} registered twice")
        _SOURCES[name] = SourceEntry(name, folder, fn, description)
        return fn

    return decorator


def list_sources() -> list[str]:
    """Names of the sets that can become tasks, in pool order."""
    return list(_SOURCES)


def get_source(name: str) -> SourceEntry:
    try:
        return _SOURCES[name]
    except KeyError:
        raise UnknownNameError(f"Unknown source {name!r}: use one of {', '.join(_SOURCES)}.") from None


# --------------------------------------------------------------------------- manifests


@dataclass(frozen=True)
class ManifestRow:
    path: str
    split: str
    label: str
    sha256: str


def read_manifest(folder: Path, *, verify: bool = False) -> list[ManifestRow]:
    """Rows of a set's MANIFEST.tsv; with ``verify``, checks every file's sha256."""
    path = folder / MANIFEST
    if not path.is_file():
        raise DataError(f"{path} is missing: is {folder} one of the sets described in shared/data/README.md?")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        if reader.fieldnames is None or not {"path", "split", "label", "sha256"} <= set(reader.fieldnames):
            raise DataError(f"{path} must have the columns path, split, label, sha256; got {reader.fieldnames}.")
        rows = [
            ManifestRow(r["path"], r["split"] or "", r["label"] or "", r["sha256"] or "") for r in reader if r["path"]
        ]
    if verify:
        for row in rows:
            file = folder / row.path
            if not file.is_file():
                raise DataError(f"{file} is listed in {path} but missing: restore the set (see shared/data/README.md).")
            digest = hashlib.sha256(file.read_bytes()).hexdigest()
            if row.sha256 and digest != row.sha256:
                raise ChecksumMismatchError(
                    f"{file} has sha256 {digest[:16]}..., the manifest says {row.sha256[:16]}...: the file changed; "
                    "restore it."
                )
    return rows


def _labelled(set_dir: Path, verify: bool, *, label_from_name: bool = False) -> list[ManifestRow]:
    rows = read_manifest(set_dir, verify=verify)
    if label_from_name:  # e.g. nct_crc_he: the class is the file-name prefix before '___'
        rows = [ManifestRow(r.path, r.split, r.label or Path(r.path).name.split("___")[0], r.sha256) for r in rows]
    unlabelled = [r.path for r in rows if not r.label]
    if unlabelled:
        raise DataError(f"{set_dir / MANIFEST}: {len(unlabelled)} rows have no label (e.g. {unlabelled[0]}).")
    return rows


def _raw(
    rows: Sequence[ManifestRow], root: Path, *, groups: list[str] | None, group_kind: str, description: str, source: str
) -> RawTask:
    return RawTask(
        classes=tuple(sorted({r.label for r in rows})),
        paths=[r.path for r in rows],
        labels=[r.label for r in rows],
        splits=[r.split for r in rows],
        groups=groups,
        root=root,
        group_kind=group_kind,
        description=description,
        source=source,
    )


# --------------------------------------------------------------------------- converters


@register_source("oral_cancer", "oral_cancer", "normal vs oral squamous cell carcinoma, H&E tiles (100x and 400x)")
def _oral_cancer(set_dir: Path, task_dir: Path, verify: bool, progress: bool) -> RawTask:
    rows = _labelled(set_dir, verify)
    # No patient ids in this set (100x and 400x tiles of the same patients): splits are not
    # patient-disjoint, and cannot be made so.
    return _raw(
        rows,
        set_dir,
        groups=None,
        group_kind="none",
        description="Normal vs OSCC, oral mucosa H&E (Rahman et al. 2020); no patient ids",
        source="atlan-antillia/EfficientNet-Histopathologic-Oral-Cancer@91e63ad; CC BY 4.0",
    )


_HERLEV_IMAGE = re.compile(r"(?:rotated_\d+_)?(\d+)-\d+-\d+")


@register_source("herlev_papsmear", "herlev_papsmear", "Herlev Pap-smear single-cell classification, 7 classes")
def _herlev(set_dir: Path, task_dir: Path, verify: bool, progress: bool) -> RawTask:
    rows = _labelled(set_dir, verify)
    groups = []
    for r in rows:
        # Herlev file names are <image id>-<cell id>-<n>: cells sharing the first number were
        # cut from the same microscope image, so that number is the group.
        match = _HERLEV_IMAGE.match(Path(r.path).stem)
        if not match:
            raise DataError(
                f"Herlev file name {r.path} does not look like <image>-<cell>-<n>.jpg: cannot find its image id."
            )
        groups.append(match.group(1))
    return _raw(
        rows,
        set_dir,
        groups=groups,
        group_kind="image",
        description="Herlev Pap-smear cells, 7 classes; groups = source image (file-name prefix)",
        source="atlan-antillia/EfficientNet-Pap-Smear@628ad60; Herlev/DTU, free for research",
    )


def _name_label_task(
    folder: str, description: str, source: str, group_re: re.Pattern | None = None, group_kind: str = "none"
):
    def convert(set_dir: Path, task_dir: Path, verify: bool, progress: bool) -> RawTask:
        rows = _labelled(set_dir, verify, label_from_name=True)
        groups = None
        if group_re is not None:
            groups = []
            for r in rows:
                match = group_re.search(Path(r.path).name)
                if not match:
                    raise DataError(f"Cannot find the group id in file name {r.path} (pattern {group_re.pattern!r}).")
                groups.append(match.group(1))
        return _raw(rows, set_dir, groups=groups, group_kind=group_kind, description=description, source=source)

    return convert


register_source("nct_crc_he", "mini/nct_crc_he", "colorectal H&E tissue classes (NCT-CRC-HE-100K sample), 7 classes")(
    _name_label_task(
        "mini/nct_crc_he",
        "Colorectal H&E tissue types (Kather et al. 2018), 10 per class",
        "atlan-antillia/EfficientNet-Colorectal-Cancer@710493d; CC BY 4.0",
    )
)
register_source("lc25000", "mini/lc25000", "lung and colon H&E histology (LC25000 sample), 5 classes")(
    _name_label_task(
        "mini/lc25000",
        "Lung and colon histology (Borkowski et al. 2019), 20 per class",
        "atlan-antillia/EfficientNet-Lung-Colon-Cancer@7691511; CC BY-SA 4.0",
    )
)
# NIH malaria cell names start with the smear code (e.g. C80P41ThinF): cells of one smear
# stay on the same side of every split.
register_source("malaria", "mini/malaria", "parasitized vs uninfected red blood cells (NIH), binary")(
    _name_label_task(
        "mini/malaria",
        "Parasitized vs uninfected thin-smear red blood cells (NIH/NLM); groups = smear",
        "atlan-antillia/EfficientNet-Malaria@c69a4b2; public (NIH/NLM)",
        group_re=re.compile(r"___([^_]+)_"),
        group_kind="slide",
    )
)


BCCD_CROP_VERSION = 1
BCCD_MIN_SIDE = 4  # boxes thinner than this (a few in the set) are annotation slips


@register_source("bccd", "bccd", "blood smear cells cropped from BCCD boxes: Platelets, RBC, WBC")
def _bccd(set_dir: Path, task_dir: Path, verify: bool, progress: bool) -> RawTask:
    images = {Path(r.path).name: r for r in read_manifest(set_dir, verify=verify)}
    boxes_csv = set_dir / "boxes.csv"
    if not boxes_csv.is_file():
        raise DataError(
            f"{boxes_csv} is missing: BCCD's boxes (filename, cell_type, xmin, xmax, ymin, ymax) are needed."
        )
    split_of = {}
    for split in ("train", "val", "test"):  # BCCD's own VOC split, by image
        listing = set_dir / "ImageSets" / "Main" / f"{split}.txt"
        if listing.is_file():
            for stem in listing.read_text().split():
                split_of[stem] = split
    crops = _bccd_crops(set_dir, boxes_csv, images, task_dir / "crops", progress)
    return RawTask(
        classes=tuple(sorted({c["label"] for c in crops})),
        paths=[c["path"] for c in crops],
        labels=[c["label"] for c in crops],
        splits=[split_of.get(c["image"], "") for c in crops],
        groups=[c["image"] for c in crops],
        root=task_dir,
        group_kind="image",
        description="BCCD blood smear cells (box crops): Platelets, RBC, WBC; groups = source image",
        source="Shenggan/BCCD_Dataset@d272fb1; MIT licence, (c) 2017 shenggan",
    )


def _bccd_crops(set_dir: Path, boxes_csv: Path, images: dict, crop_dir: Path, progress: bool) -> list[dict]:
    """Crop every box once; later builds reuse the crops while boxes.csv is unchanged."""
    stamp_path = crop_dir / "crops.json"
    boxes_digest = hashlib.sha256(boxes_csv.read_bytes()).hexdigest()
    if stamp_path.is_file():
        stamp = json.loads(stamp_path.read_text())
        if stamp.get("boxes_sha256") == boxes_digest and stamp.get("version") == BCCD_CROP_VERSION:
            crops = stamp["crops"]
            if all((crop_dir.parent / c["path"]).is_file() for c in crops):
                logger.info("bccd: reusing %d cached crops in %s", len(crops), crop_dir)
                return crops
    with boxes_csv.open(newline="") as handle:
        boxes = list(csv.DictReader(handle))
    by_image: dict[str, list[dict]] = {}
    for box in boxes:
        by_image.setdefault(box["filename"], []).append(box)
    crops, skipped = [], 0
    for filename in tqdm(sorted(by_image), desc="bccd crops", unit="image", disable=not progress):
        if filename not in images:
            raise DataError(f"{boxes_csv} names {filename}, which is not in {set_dir / MANIFEST}.")
        stem = Path(filename).stem
        with Image.open(set_dir / images[filename].path) as image:
            image = image.convert("RGB")
            w, h = image.size
            for k, box in enumerate(by_image[filename]):
                x0, x1 = sorted((int(box["xmin"]), int(box["xmax"])))
                y0, y1 = sorted((int(box["ymin"]), int(box["ymax"])))
                x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
                if x1 - x0 < BCCD_MIN_SIDE or y1 - y0 < BCCD_MIN_SIDE:
                    skipped += 1
                    continue
                label = box["cell_type"].strip()
                rel = f"crops/{label}/{stem}_{k:03d}.png"
                out = crop_dir.parent / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                image.crop((x0, y0, x1, y1)).save(out, compress_level=1)  # lossless, 5x faster than the default
                crops.append({"path": rel, "label": label, "image": stem})
    if skipped:
        logger.info("bccd: skipped %d degenerate boxes (side < %d px)", skipped, BCCD_MIN_SIDE)
    crop_dir.mkdir(parents=True, exist_ok=True)
    stamp_path.write_text(json.dumps({"version": BCCD_CROP_VERSION, "boxes_sha256": boxes_digest, "crops": crops}))
    return crops


# --------------------------------------------------------------------------- building


def build_task(
    name: str,
    shared_data: str | os.PathLike,
    pool_dir: str | os.PathLike,
    *,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    verify: bool = True,
    progress: bool = False,
) -> Task:
    """Convert one set of ``shared_data`` into the task ``pool_dir/<name>``."""
    entry = get_source(name)
    set_dir = Path(shared_data) / entry.folder
    if not set_dir.is_dir():
        raise DataError(
            f"Set folder {set_dir} for task {name!r} does not exist: check --shared-data (e.g. ../shared/data)."
        )
    task_dir = Path(pool_dir) / name
    raw = entry.convert(set_dir.resolve(), task_dir.resolve(), verify, progress)
    labels = np.array(raw.labels)
    groups = None if raw.groups is None else np.array(raw.groups)
    splits = assign_splits(
        labels,
        groups,
        np.array(raw.splits, dtype=object),
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
    )
    rows = [
        SampleRow(p, s, lab, "" if groups is None else str(g))
        for p, s, lab, g in zip(raw.paths, splits, raw.labels, raw.groups or [""] * len(raw.paths))
    ]
    root = os.path.relpath(raw.root, task_dir.resolve())
    info = TaskInfo(
        name=name,
        classes=raw.classes,
        metric=default_metric(len(raw.classes)),
        group_kind=raw.group_kind,
        description=raw.description,
        source=raw.source,
        root=root,
    )
    task = write_task(task_dir, info, rows)
    logger.info("task %s: %d classes, %s", name, len(raw.classes), task.info.counts)
    return task


def pool_needs_building(path: str | os.PathLike) -> bool:
    """True when ``path`` holds no pool yet: it does not exist, or it is an empty folder (e.g.
    made by hand, or left by a build that failed before builds were staged)."""
    path = Path(path)
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


def build_shared_pool(
    shared_data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    tasks: Sequence[str] | None = None,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    verify: bool = True,
    progress: bool = True,
) -> TaskPool:
    """Build (or rebuild) a pool from the sets of ``shared_data`` and index it.

    Rebuilding is cheap and idempotent: the same seed gives the same splits, and BCCD's crops
    are reused from ``out/bccd/crops`` while ``boxes.csv`` is unchanged. A new pool is built
    in a hidden sibling folder (``.<name>.building``) and renamed to ``out`` once complete:
    a build that fails (a wrong ``shared_data``, a checksum mismatch, Ctrl-C) leaves no
    ``out`` behind, so the next run builds it again instead of finding a half-made pool; the
    staging folder's BCCD crops are reused by that next build.
    """
    names = list(tasks) if tasks else list_sources()
    for name in names:
        get_source(name)
    out = Path(out)
    staged = pool_needs_building(out)
    # A sibling at the same depth: task.json roots are relative paths, valid after the rename.
    work = out.parent / f".{out.name}.building" if staged else out
    work.mkdir(parents=True, exist_ok=True)
    built = [
        build_task(
            n,
            shared_data,
            work,
            seed=seed,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            verify=verify,
            progress=progress,
        )
        for n in names
    ]
    write_pool_index(
        work,
        built,
        name=out.name,
        description=(
            f"built by mtdp from {Path(shared_data).resolve()} (seed {seed}, val {val_fraction}, test {test_fraction})"
        ),
    )
    if staged:
        if out.is_dir():
            out.rmdir()  # empty (pool_needs_building)
        work.rename(out)
    return load_pool(out)
