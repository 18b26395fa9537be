"""Steps the apps share: selecting annotations, getting their crops, extracting features, the
training job's model, the resolution of training crops."""

from __future__ import annotations

import argparse
import csv
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtdp_core.cytomine.annotations import (
    AnnotationFilters,
    AnnotationRecord,
    list_annotations,
    project_terms,
    require_annotations,
)
from mtdp_core.cytomine.biaflows import LocalImage, read_image_folder
from mtdp_core.cytomine.crops import DEFAULT_MAX_FAILED_FRACTION, CropReport, CropSpec, CropStore, download_crops
from mtdp_core.cytomine.errors import BackboneMismatchError, CropDownloadError, ParameterError
from mtdp_core.cytomine.job import CytomineJobRun, Job, Stage
from mtdp_core.cytomine.models import download_job_model
from mtdp_core.errors import ConfigurationError

logger = logging.getLogger(__name__)

#: The file name of a model attached to a training job (and written to the outfolder).
MODEL_FILENAME = "mtdp-model.npz"


def cache_root(job: Job) -> Path:
    """Crop and feature cache: ``--cache_dir``, ``$MTDP_CACHE_DIR``, ``~/.cache/mtdp``, or a
    temporary folder when none of them can be written."""
    candidates = [job.flags.cache_dir, os.environ.get("MTDP_CACHE_DIR"), Path.home() / ".cache" / "mtdp"]
    for candidate in candidates:
        if not candidate:
            continue
        path = Path(candidate)
        try:
            path.mkdir(parents=True, exist_ok=True)
            if os.access(path, os.W_OK):
                return path
        except OSError:
            continue
    return Path(tempfile.gettempdir()) / "mtdp-cache"


def check_device(args: argparse.Namespace) -> str:
    """The device argument, checked now (a missing GPU fails the job at once, not after the crops)."""
    from mtdp_core.runtime import describe_device, resolve_device

    try:
        device = resolve_device(args.device)
    except ConfigurationError as exc:
        raise ParameterError(f"Set device to auto or cpu: {exc}") from None
    logger.info("device: %s", describe_device(device))
    return str(device)


def filters_from_args(args: argparse.Namespace, project: int) -> AnnotationFilters:
    return AnnotationFilters(
        project=project,
        images=tuple(args.cytomine_id_images or ()),
        users=tuple(args.cytomine_id_users or ()),
        terms=tuple(args.cytomine_id_terms or ()),
        reviewed_only=bool(args.cytomine_reviewed_only),
    )


def crop_spec_from_args(args: argparse.Namespace, trained: CropSpec | None = None) -> CropSpec:
    """The crop parameters; empty ones (predict apps) come from the training job's ``trained``."""
    base = trained or CropSpec(max_size=256)
    zoom = base.zoom if args.crop_zoom is None else args.crop_zoom
    max_size = base.max_size if args.crop_max_size is None else (args.crop_max_size or None)
    increase = base.increase_area if args.crop_increase_area is None else args.crop_increase_area
    return CropSpec(zoom=zoom, max_size=max_size, increase_area=increase)


@dataclass
class CytomineInputs:
    """Annotations (those whose crop could be read) and their crop files, aligned."""

    records: list[AnnotationRecord]
    paths: list[Path]
    term_names: dict[int, str]
    report: CropReport | None = None


def list_project_annotations(
    job: CytomineJobRun, filters: AnnotationFilters, *, what: str = "annotation"
) -> tuple[list[AnnotationRecord], dict[int, str]]:
    assert job.session is not None
    term_names = project_terms(job.session, filters.project)
    records = list_annotations(job.session, filters)
    require_annotations(records, filters, term_names, what)
    return records, term_names


def fetch_crops(
    job: CytomineJobRun, records: Sequence[AnnotationRecord], spec: CropSpec, args: argparse.Namespace, stage: Stage
) -> tuple[list[AnnotationRecord], list[Path], CropReport]:
    """Crops of ``records`` (cache, or ``--infolder`` as ``<id>.png`` with BIAFLOWS flags).

    Failed crops are skipped, counted, listed in ``crop_failures.csv`` (attached) and the
    ``crops_failed`` job property; too many fail the job (:class:`CropDownloadError`).
    """
    if not job.flags.do_download and job.flags.infolder is None:
        raise ParameterError("Give --infolder with --no_download: the crops are read from it (<annotation id>.png).")
    if job.flags.infolder is not None:
        store = CropStore.flat_folder(job.flags.infolder, spec)
    else:
        assert job.session is not None
        store = CropStore(cache_root(job), job.session.server_url, spec)
    report = download_crops(
        job.session,
        records,
        store,
        threads=args.n_download_threads,
        download=job.flags.do_download,
        progress=lambda d, t: stage.update(d, t),
    )
    job.set_property("crops_failed", report.n_failed)
    if report.failures:
        path = job.workdir / "crop_failures.csv"  # type: ignore[operator]
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["annotation", "reason"])
            writer.writerows(report.failures)
        job.attach(path)
        job.progress(stage.end, f"{report.summary()}: skipped (see crop_failures.csv)")
    report.check(DEFAULT_MAX_FAILED_FRACTION)
    kept = [(r, p) for r, p in zip(records, report.paths) if p is not None]
    if not kept:
        raise CropDownloadError("Check the server and images: no crop could be downloaded.")
    return [r for r, _ in kept], [p for _, p in kept], report


def local_images(job: Job, *, labelled: bool | None = None) -> list[LocalImage]:
    """Images of ``--infolder``; ``labelled`` True/False keeps only (un)labelled ones."""
    images = read_image_folder(job.flags.infolder)
    if labelled is not None:
        images = [i for i in images if (i.label is not None) == labelled]
    return images


def extract_features(extractor: Any, paths: Sequence[Path], stage: Stage, chunk: int = 512) -> np.ndarray:
    """Features of ``paths`` (n, n_features) with job progress between chunks.

    Chunks are fixed slices of the (stable, id-ordered) input, so a re-run on the same
    annotations finds each chunk in the feature cache.
    """
    n = len(paths)
    out: np.ndarray | None = None
    stage.update(0, n)
    for start in range(0, n, chunk):
        rows = np.asarray(extractor.transform([str(p) for p in paths[start : start + chunk]]), dtype=np.float32)
        if out is None:
            out = np.empty((n, rows.shape[1]), dtype=np.float32)
        out[start : start + len(rows)] = rows
        stage.update(min(n, start + chunk), n)
    assert out is not None
    return out


def write_rows(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def load_trained_model(job: Job, args: argparse.Namespace) -> Any:
    """The model (``SavedModel``) of ``--cytomine_id_job`` (or ``--model`` in local mode), checked
    against the asked backbone and weights."""
    from mtdp_core.transfer.persistence import load_model

    if isinstance(job, CytomineJobRun):
        if not args.cytomine_id_job:
            raise ParameterError("Set cytomine_id_job to the id of the training job whose model to use.")
        assert job.session is not None and job.workdir is not None
        path, _ = download_job_model(job.session, args.cytomine_id_job, MODEL_FILENAME, job.workdir / MODEL_FILENAME)
    else:
        if not args.model:
            raise ParameterError("Give --model PATH (the mtdp-model.npz of a training run) in local mode.")
        path = Path(args.model)
    model = load_model(path)
    check_backbone(model, args)
    return model


#: Weight sources named by the catalogue (anything else given as weights is a file path).
WEIGHT_SOURCES = ("imagenet", "imagenet_v2", "mtdp", "random")


def check_backbone(model: Any, args: argparse.Namespace) -> None:
    """Refuse a backbone or weights other than the model's (its classifier only fits those features)."""
    from mtdp_core.errors import IncompatibleModelError

    trained = model.describe_backbone()
    source = model.backbone.get("weights", {}).get("source")
    fix = f"Leave backbone and weights empty (or set {model.arch} and {source})"
    origin = f"the model of job {args.cytomine_id_job or args.model}"
    if args.backbone and args.backbone != model.arch:
        raise BackboneMismatchError(f"{fix}: {origin} was trained on {trained} features, not {args.backbone}.")
    if not args.weights or model.kind == "finetune":
        return
    if args.weights in WEIGHT_SOURCES and args.weights != source:
        # Known before loading anything (the other weights may not even be on this machine).
        raise BackboneMismatchError(f"{fix}: {origin} was trained on {trained} features, not {args.weights} weights.")
    try:
        model.check_backbone(model.feature_extractor(weights=args.weights).identity())
    except IncompatibleModelError as exc:
        raise BackboneMismatchError(f"{fix}: {exc}") from None


#: Crops whose resolutions differ by at most this factor count as one resolution.
RESOLUTION_SPREAD = 1.25


def crop_resolution(
    job: CytomineJobRun, records: Sequence[AnnotationRecord], spec: CropSpec, image_size: int
) -> tuple[float | None, dict[str, Any]]:
    """The µm per pixel the network saw in the training crops, when it is one resolution.

    A crop covers the annotation's box (times ``increase_area``; a point: 100 pixels) of level-0
    pixels, and the network sees its shorter side resized to ``image_size``: its input resolution
    is the image's µm/px x that side / ``image_size``, whatever ``crop_zoom`` and
    ``crop_max_size`` did in between. It is one resolution, recorded in the model (the slide app
    reads tiles at it), when every image has a resolution and the crops agree within 25% (e.g.
    square annotations of one size); otherwise None, and ``info`` says why.
    """
    import shapely

    assert job.session is not None
    images = job.session.get_collection(f"project/{job.project_id}/imageinstance.json")
    mpp = {int(i["id"]): i.get("physicalSizeX") or i.get("resolution") for i in images}
    without = sorted({r.image for r in records if not mpp.get(r.image)})
    if without:
        return None, {"mpp": None, "why": f"images without a resolution (physicalSizeX): {without[:5]}"}
    values = []
    for record in records:
        minx, miny, maxx, maxy = shapely.from_wkt(record.location).bounds
        side = min(maxx - minx, maxy - miny) * float(spec.increase_area or 1.0)
        side = side if side > 0 else 100.0  # a point (or a line) is cropped with a 100-pixel box
        values.append(float(mpp[record.image]) * side / image_size)
    low, high, median = min(values), max(values), float(np.median(values))
    info = {"median": round(median, 4), "min": round(low, 4), "max": round(high, 4), "n": len(values)}
    if high > low * RESOLUTION_SPREAD:
        why = "the crops are seen at different resolutions (annotations of different sizes)"
        return None, {"mpp": None, "why": why, **info}
    return median, {"mpp": round(median, 4), **info}
