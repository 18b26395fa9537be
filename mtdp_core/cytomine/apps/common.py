"""Steps the apps share; each app's ``run`` is a short pipeline of them.

Inputs: the device, annotation filters and crop settings from the parameters, the project's
annotations and their crops (or a local folder), labelled training sets. Features: the
extractor and extraction with job progress. Outputs: predictions (rows, CSV, pushed to
Cytomine), metrics with their confusion matrix, attachments.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtdp_core.cytomine.annotations import (
    AnnotationFilters,
    AnnotationRecord,
    TrainingLabels,
    list_annotations,
    project_terms,
    require_annotations,
    training_labels,
)
from mtdp_core.cytomine.biaflows import read_image_folder
from mtdp_core.cytomine.crops import DEFAULT_MAX_FAILED_FRACTION, CropReport, CropSpec, CropStore, download_crops
from mtdp_core.cytomine.errors import (
    BackboneMismatchError,
    CropDownloadError,
    ModelJobError,
    ParameterError,
    PushError,
    TooFewClassesError,
)
from mtdp_core.cytomine.job import CytomineJobRun, Job, Stage
from mtdp_core.cytomine.models import load_job_model
from mtdp_core.cytomine.push import Prediction, PredictionPusher, PushReport
from mtdp_core.cytomine.report import confusion_matrix_png, write_json
from mtdp_core.data.folders import FolderImage
from mtdp_core.errors import ConfigurationError

logger = logging.getLogger(__name__)

#: The file name of a model attached to a training job (and written to the outfolder).
MODEL_FILENAME = "mtdp-model.npz"


# --------------------------------------------------------------------------- parameters


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
    """The device (with the engine, where the app has one), checked now: a missing GPU or
    runtime fails the job at once, not after the crops. ``auto`` resolves to the engine's
    device (onnxruntime: the CPU)."""
    from mtdp_core.errors import MissingDependencyError
    from mtdp_core.inference.engines import resolve_engine
    from mtdp_core.runtime import describe_device

    try:
        engine, device = resolve_engine(getattr(args, "engine", "torch"), args.device)
    except (ConfigurationError, MissingDependencyError) as exc:
        raise ParameterError(f"Set device to auto or cpu and engine to auto: {exc}") from None
    logger.info("device: %s; engine: %s", describe_device(device), engine)
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


# --------------------------------------------------------------------------- inputs


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
        job.attach(write_rows(job.workdir / "crop_failures.csv", ["annotation", "reason"], report.failures))  # type: ignore[operator]
        job.progress(stage.end, f"{report.summary()}: skipped (see crop_failures.csv)")
    report.check(DEFAULT_MAX_FAILED_FRACTION)
    kept = [(r, p) for r, p in zip(records, report.paths) if p is not None]
    if not kept:
        raise CropDownloadError("Check the server and images: no crop could be downloaded.")
    return [r for r, _ in kept], [p for _, p in kept], report


def crops_note(n_failed: int) -> str:
    """What the final status says of failed crops ('' when none failed)."""
    return f" ({n_failed} crops failed: see crop_failures.csv)" if n_failed else ""


def local_images(job: Job, *, labelled: bool | None = None) -> list[FolderImage]:
    """Images of ``--infolder``; ``labelled`` True/False keeps only (un)labelled ones."""
    images = read_image_folder(job.flags.infolder)
    if labelled is not None:
        images = [i for i in images if (i.label is not None) == labelled]
    return images


@dataclass
class TrainingSet:
    """Crops, labels and groups (image ids, for grouped folds) for training, wherever they came from."""

    paths: list[Path]
    labels: TrainingLabels
    groups: list[Any]
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def y(self) -> np.ndarray:
        return np.asarray(self.labels.labels)

    def names(self, classes: Sequence[Any]) -> dict[int, str]:
        """Display name of each of ``classes`` (the labels a classifier learnt)."""
        return {int(c): self.labels.class_names[int(c)] for c in classes}

    def term_ids(self, classes: Sequence[Any]) -> dict[int, int | None]:
        """Cytomine term id of each of ``classes`` (None for a binary class of several terms)."""
        return {int(c): self.labels.class_ids[int(c)] for c in classes}


def training_set(job: Job, args: argparse.Namespace) -> TrainingSet:
    """The labelled crops of the selected annotations (``--cytomine_positive_terms``: binary
    mode), or the labelled images of ``--infolder`` in local mode."""
    if not isinstance(job, CytomineJobRun):
        job.stage("Reading images", 0, 5)
        return local_training_set(local_images(job, labelled=True), {"infolder": str(job.flags.infolder)})
    positive_terms = tuple(getattr(args, "cytomine_positive_terms", None) or ())
    job.stage("Listing annotations", 0, 5)
    filters = filters_from_args(args, job.project_id)
    records, term_names = list_project_annotations(job, filters, what="annotation with a term")
    # Labels are checked before any download: a missing term fails the job at once. Cross-validation
    # needs 2 annotations per class: checked now, and again without the crops that failed.
    options = {"selected_terms": filters.terms, "positive_terms": positive_terms, "min_per_class": 2}
    training_labels(records, term_names, **options)
    spec = crop_spec_from_args(args)
    records, paths, report = fetch_crops(job, records, spec, args, job.stage("Downloading crops", 5, 35))
    labels = training_labels(records, term_names, **options)
    _, resolution = crop_resolution(job, records, spec, args.image_size)
    source = {
        "project": job.project_id,
        "job": job.id,
        "software": job.software_name,
        "host": job.session.server_url if job.session else None,
        "filters": filters.describe(term_names),
        "crop": spec.to_dict(),
        "n_images": len({r.image for r in records}),
        "crops_failed": report.n_failed,
        "annotation_ids": [r.id for r in records],
        "resolution": resolution,
    }
    return TrainingSet(paths, labels, [r.image for r in records], source)


def local_training_set(images: Sequence[FolderImage], source: dict[str, Any] | None = None) -> TrainingSet:
    """Labelled local images: one class per label, grouped by their ``group`` (else each its own)."""
    names = sorted({i.label for i in images if i.label is not None})
    if len(names) < 2:
        raise TooFewClassesError(
            f"Put images of at least two classes in --infolder: found {len(names)} ({', '.join(names) or 'none'})."
        )
    index = {name: k for k, name in enumerate(names)}
    labels = TrainingLabels(
        [index[str(i.label)] for i in images],
        dict(enumerate(names)),
        {k: None for k in index.values()},
        counts={index[n]: sum(i.label == n for i in images) for n in names},
    )
    groups = [i.group if i.group is not None else i.key for i in images]
    return TrainingSet([i.path for i in images], labels, groups, source or {})


# --------------------------------------------------------------------------- features


def make_extractor(args: argparse.Namespace, job: Job, device: str) -> Any:
    """The FeatureExtractor of the backbone parameters, caching features under ``cache_root``."""
    from mtdp_core.transfer.features import FeatureExtractor

    return FeatureExtractor(
        args.backbone,
        args.weights,
        seed=args.seed,
        image_size=args.image_size,
        batch_size=args.batch_size,
        num_workers=args.n_workers,
        device=device,
        cache_dir=cache_root(job) / "features",
        engine=getattr(args, "engine", "auto"),
    )


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


# --------------------------------------------------------------------------- outputs


def save_classifier(
    job: Job,
    model: Any,
    class_names: Mapping,
    class_ids: Mapping,
    extra: dict,
    features: Any = None,
    mpp: float | None = None,
) -> Path:
    """The trained model as ``mtdp-model.npz`` (pickle-free, ``transfer.persistence``), attached;
    ``mpp``: the resolution of its training crops when they have one (:func:`crop_resolution`)."""
    from mtdp_core.transfer.persistence import save_model

    path = job.output_path(MODEL_FILENAME)
    save_model(path, model, features=features, class_names=class_names, class_ids=class_ids, extra=extra, mpp=mpp)
    job.attach(path)
    return path


def write_rows(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_metrics(
    job: Job, metrics: Mapping[str, Any], *, title: str = "Confusion matrix", payload: Any = None, also: Sequence = ()
) -> list[Path]:
    """``metrics.json`` (``payload``, by default the metrics) and ``confusion_matrix.png``,
    attached with the ``also`` files unless metrics are not uploaded (``-nmu``)."""
    outputs = [
        write_json(job.output_path("metrics.json"), metrics if payload is None else payload),
        confusion_matrix_png(
            metrics["confusion_matrix"], metrics["class_names"], job.output_path("confusion_matrix.png"), title=title
        ),
        *also,
    ]
    if job.flags.do_upload_metrics:
        for path in outputs:
            job.attach(path)
    return outputs


def make_predictions(
    records: Sequence[AnnotationRecord], term_ids: Sequence[int | None], probabilities: np.ndarray
) -> tuple[list[Prediction], np.ndarray]:
    """One Prediction per annotation (the most probable class's term; the expected term is the
    annotation's own when it has exactly one), and the predicted class indices."""
    index = probabilities.argmax(axis=1) if len(records) else np.zeros(0, dtype=int)
    predictions = [
        Prediction(r, term_ids[k], float(probabilities[i, k]), r.terms[0] if len(r.terms) == 1 else None)
        for i, (r, k) in enumerate(zip(records, index))
    ]
    return predictions, index


def push_predictions(
    job: CytomineJobRun,
    args: argparse.Namespace,
    predictions: Sequence[Prediction],
    start: int,
    end: int,
    mode: str | None = None,
) -> PushReport:
    """Push to Cytomine (``mode``, default ``push_mode``): exactly one prediction per target
    (earlier jobs of this software count as done; one job of it pushes at a time). Sets the
    ``push`` and ``push_failed`` properties; a push that wrote nothing fails the job
    (:class:`PushError`)."""
    mode = mode or args.push_mode
    stage = job.stage(f"Pushing predictions ({mode} mode)", start, end)
    assert job.session is not None
    pusher = PredictionPusher(
        job.session,
        job.project_id,
        mode=mode,
        software=job.software_name,
        job=job.id,
        own_user=job.job_user_id,
        threads=args.n_download_threads,
    )
    report = pusher.push(predictions, progress=lambda d, t: stage.update(d, t))
    job.set_properties({"push": report.summary(), "push_failed": len(report.failed)})
    pushable = report.n_predictions - report.not_pushable
    if pushable and report.written == 0:
        annotation, reason = report.failed[0] if report.failed else (None, "none is on the server")
        raise PushError(
            f"Check the annotations and the model: the server refused all {pushable} predictions; e.g. annotation "
            f"{annotation}: {reason}"
        )
    return report


def check_model_terms(model: Any, term_names: Mapping[int, str], project: int, origin: str) -> None:
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


def write_predictions(
    job: Job,
    predictions: Sequence[Prediction],
    class_names: Sequence[str],
    index: np.ndarray,
    pushed: Mapping[int, int],
    term_names: Mapping[int, str] | None = None,
) -> Path:
    """``predictions.csv`` of annotations (attached): class, term, rate, where it was pushed
    (and the annotation's current terms, given ``term_names``)."""
    header = ["annotation", "image", "predicted_class", "predicted_term", "rate", "pushed_to"]
    rows = [
        [
            p.annotation.id,
            p.annotation.image,
            class_names[k],
            p.term if p.term is not None else "",
            f"{p.rate:.6f}",
            pushed.get(p.annotation.id, ""),
        ]
        for p, k in zip(predictions, index)
    ]
    if term_names is not None:
        header.append("current_terms")
        for row, p in zip(rows, predictions):
            row.append(";".join(term_names.get(t, str(t)) for t in p.annotation.terms))
    path = write_rows(job.output_path("predictions.csv"), header, rows)
    job.attach(path)
    return path


def write_local_predictions(
    job: Job, keys: Sequence[str], class_names: Sequence[str], probabilities: np.ndarray, *, every_class: bool = False
) -> np.ndarray:
    """``predictions.csv`` of local images (attached): class and probability (and every class's
    probability with ``every_class``). Returns the predicted class indices."""
    index = probabilities.argmax(axis=1) if len(keys) else np.zeros(0, dtype=int)
    header = ["filename", "predicted_class", "probability"]
    if every_class:
        header += [f"p_{n}" for n in class_names]
    rows = [
        [key, class_names[k], f"{probabilities[i, k]:.6f}", *(f"{p:.6f}" for p in probabilities[i] if every_class)]
        for i, (key, k) in enumerate(zip(keys, index))
    ]
    job.attach(write_rows(job.output_path("predictions.csv"), header, rows))
    return index


# --------------------------------------------------------------------------- models of training jobs


def load_trained_model(job: Job, args: argparse.Namespace) -> Any:
    """The model (``SavedModel``) of ``--cytomine_id_job`` (or ``--model`` in local mode), checked
    against the asked backbone and weights."""
    from mtdp_core.transfer.persistence import load_model

    if isinstance(job, CytomineJobRun):
        if not args.cytomine_id_job:
            raise ParameterError("Set cytomine_id_job to the id of the training job whose model to use.")
        assert job.session is not None and job.workdir is not None
        model = load_job_model(job.session, args.cytomine_id_job, MODEL_FILENAME, job.workdir)
    else:
        if not args.model:
            raise ParameterError("Give --model PATH (the mtdp-model.npz of a training run) in local mode.")
        model = load_model(Path(args.model))
    check_backbone(model, args)
    return model


def model_weights(model: Any, args: argparse.Namespace) -> str | None:
    """The backbone weights to extract a probe's features with: the ``weights`` asked, else the
    weights file the model was trained with when it is here (None: the model's own source)."""
    if args.weights:
        return args.weights
    w = model.backbone.get("weights", {}) if model.kind != "finetune" else {}
    if w.get("source") == "file" and w.get("file") and Path(w["file"]).is_file():
        return w["file"]
    return None


#: Weight sources named by the catalogue (anything else given as weights is a file path).
WEIGHT_SOURCES = ("imagenet", "imagenet_v2", "mtdp", "random")


def check_backbone(model: Any, args: argparse.Namespace) -> None:
    """Refuse a backbone or weights other than the model's (its classifier only fits those features)."""
    from mtdp_core.errors import IncompatibleModelError

    trained = model.describe_backbone()
    source = model.backbone.get("weights", {}).get("source")
    fix = f"Leave backbone and weights empty (or set {model.arch} and {source})"
    origin = (
        f"the model of job {args.cytomine_id_job}"
        if args.cytomine_id_job
        else (f"the model {args.model}" if args.model else "the model")
    )
    if args.backbone and args.backbone != model.arch:
        raise BackboneMismatchError(f"{fix}: {origin} was trained on {trained} features, not {args.backbone}.")
    if not args.weights or model.kind == "finetune":
        return
    if args.weights in WEIGHT_SOURCES and args.weights != source:
        # Known before loading anything (the other weights may not even be on this machine).
        raise BackboneMismatchError(f"{fix}: {origin} was trained on {trained} features, not {args.weights} weights.")
    try:
        model.check_backbone(model.feature_extractor(weights=args.weights, engine=args.engine).identity())
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
