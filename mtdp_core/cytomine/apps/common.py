"""Steps the four apps share: selecting annotations, getting their crops, extracting features."""

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
from mtdp_core.cytomine.errors import CropDownloadError, ModelJobError, ParameterError, PushError
from mtdp_core.cytomine.job import CytomineJobRun, Job, Stage
from mtdp_core.cytomine.push import Prediction, PredictionPusher, PushReport
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


def check_model_terms(model: Any, term_names: dict[int, str], project: int, origin: str) -> None:
    """Refuse a model whose classes are terms of another ontology: every push would be refused
    (``origin``: where the model comes from, e.g. "job 41")."""
    foreign = [c for c in model.classes if c.id is not None and int(c.id) not in term_names]
    if foreign:
        names = ", ".join(str(c.name) for c in foreign)
        ids = ", ".join(str(c.id) for c in foreign)
        ontology = ", ".join(term_names.values()) or "no terms"
        raise ModelJobError(
            f"Use a model trained on this project's terms: the model of {origin} predicts {names} (terms {ids}), "
            f"which are not in the ontology of project {project} ({ontology})."
        )


def push_predictions(
    job: CytomineJobRun, predictions: Sequence[Prediction], args: argparse.Namespace, stage: Stage
) -> PushReport:
    """Push (``args.push_mode``; idempotent, one job of the software at a time), record the
    ``push`` and ``push_failed`` properties; a push that wrote nothing fails the job."""
    assert job.session is not None
    report = PredictionPusher(
        job.session,
        job.project_id,
        mode=args.push_mode,
        software=job.software_name,
        job=job.id,
        own_user=job.job_user_id,
        threads=args.n_download_threads,
    ).push(predictions, progress=lambda d, t: stage.update(d, t))
    job.set_property("push", report.summary())
    job.set_property("push_failed", len(report.failed))
    pushable = report.n_predictions - report.not_pushable
    if pushable and report.written == 0:
        annotation, reason = report.failed[0] if report.failed else (None, "none is on the server")
        raise PushError(
            f"Check the annotations and the model: the server refused all {pushable} predictions; e.g. annotation "
            f"{annotation}: {reason}"
        )
    return report
