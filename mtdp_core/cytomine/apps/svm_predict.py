"""The svm-predict app: a trained model (from its training job) classifies annotations, and the
predictions go back to Cytomine.

Stages: download the model attached to the training job (``cytomine_id_job``) and check it
fits the asked backbone -> list the annotations to classify -> download their crops (with
the training job's crop settings unless others are given) -> features and predictions
(probabilities: calibrated on the training job's out-of-fold decisions for an SVM) -> push
(``push_mode``: suggested terms, or new annotations; idempotent) -> attach the predictions
CSV, and metrics when the annotations already have terms (agreement with them).

Any mtdp model works: an svm-train model, or a finetune-predict one (its own network).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtdp_core.cytomine.annotations import AnnotationRecord
from mtdp_core.cytomine.apps.common import (
    cache_root,
    check_device,
    crop_spec_from_args,
    fetch_crops,
    filters_from_args,
    list_project_annotations,
    load_trained_model,
    local_images,
    write_rows,
)
from mtdp_core.cytomine.biaflows import ground_truth
from mtdp_core.cytomine.crops import CropSpec
from mtdp_core.cytomine.job import CytomineJobRun, Job, Stage
from mtdp_core.cytomine.push import Prediction, PredictionPusher, software_job_users
from mtdp_core.cytomine.report import classification_metrics, confusion_matrix_png, write_json

logger = logging.getLogger(__name__)


def predict_scores(
    model: Any, paths: Sequence[Path], args: argparse.Namespace, job: Job, device: str, stage: Stage, chunk: int = 512
) -> np.ndarray:
    """Class probabilities (n, n_classes) of the crops, in chunks (job progress between them)."""
    from mtdp_core.transfer.calibration import scaled_softmax

    runtime = {"batch_size": args.batch_size, "num_workers": args.n_workers, "device": device}
    extractor = None
    if model.kind != "finetune":
        weights = args.weights or None
        w = model.backbone.get("weights", {})
        if weights is None and w.get("source") == "file" and w.get("file") and Path(w["file"]).is_file():
            weights = w["file"]  # the weights file the model was trained with, present here
        extractor = model.feature_extractor(weights=weights, cache_dir=cache_root(job) / "features", **runtime)
    calibration = model.extra.get("calibration") or {}
    if model.kind == "svm" and not calibration:
        logger.warning("the model has no calibration: probabilities are softmax(decision values)")
    out = np.empty((len(paths), len(model.classes)), dtype=np.float64)
    stage.update(0, len(paths))
    for start in range(0, len(paths), chunk):
        part = [str(p) for p in paths[start : start + chunk]]
        if extractor is None:
            scores = model.predict_images(part, **runtime).scores
        else:
            scores = model.decision_scores(extractor.transform(part))
            if model.kind == "svm":
                scores = scaled_softmax(scores, float(calibration.get("scale", 1.0)))
        out[start : start + len(part)] = scores
        stage.update(min(len(paths), start + chunk), len(paths))
    return out


@dataclass
class Targets:
    """What is predicted: crop files, with their annotations (server) or keys (local)."""

    paths: list[Path]
    records: list[AnnotationRecord] | None = None
    keys: list[str] | None = None
    truth: list[Any] | None = None


def run(job: Job, args: argparse.Namespace) -> str:
    device = check_device(args)
    job.stage("Loading the model", 0, 5)
    model = load_trained_model(job, args)
    if isinstance(job, CytomineJobRun):
        return _run_cytomine(job, args, model, device)
    return _run_local(job, args, model, device)


def model_crop_spec(model: Any) -> CropSpec | None:
    crop = model.extra.get("crop") or (model.extra.get("source") or {}).get("crop")
    return CropSpec.from_dict(crop) if crop else None


def _run_cytomine(job: CytomineJobRun, args: argparse.Namespace, model: Any, device: str) -> str:
    job.stage("Listing annotations", 5, 10)
    filters = filters_from_args(args, job.project_id)
    records, term_names = list_project_annotations(job, filters)
    spec = crop_spec_from_args(args, model_crop_spec(model))
    records, paths, crops = fetch_crops(job, records, spec, args, job.stage("Downloading crops", 10, 40))
    probabilities = predict_scores(model, paths, args, job, device, job.stage("Predicting", 40, 75))
    index = probabilities.argmax(axis=1)
    predictions = [
        Prediction(
            record, model.classes[k].id, float(probabilities[i, k]), record.terms[0] if len(record.terms) == 1 else None
        )
        for i, (record, k) in enumerate(zip(records, index))
    ]
    pushed: dict[int, int] = {}
    comment_push = "not pushed (--no_annotations_upload)"
    if job.flags.do_upload_annotations:
        stage = job.stage(f"Pushing predictions ({args.push_mode} mode)", 75, 97)
        assert job.session is not None
        users = software_job_users(job.session, job.project_id, job.software_name, job.job_user_id)
        pusher = PredictionPusher(
            job.session, job.project_id, users, mode=args.push_mode, threads=args.n_download_threads
        )
        report = pusher.push(predictions, progress=lambda d, t: stage.update(d, t))
        pushed = report.pushed
        comment_push = report.summary()
        job.set_property("push", comment_push)
        job.set_property("push_failed", len(report.failed))
    job.progress(97, "Saving the predictions")
    rows = [
        [
            p.annotation.id,
            p.annotation.image,
            model.classes[k].name,
            p.term if p.term is not None else "",
            f"{p.rate:.6f}",
            pushed.get(p.annotation.id, ""),
            ";".join(term_names.get(t, str(t)) for t in p.annotation.terms),
        ]
        for p, k in zip(predictions, index)
    ]
    csv_path = write_rows(
        job.output_path("predictions.csv"),
        ["annotation", "image", "predicted_class", "predicted_term", "rate", "pushed_to", "current_terms"],
        rows,
    )
    job.attach(csv_path)
    agreement = ""
    if job.flags.do_compute_metrics:
        agreement = _agreement(job, model, records, index, probabilities)
    job.set_property("n_predictions", len(predictions))
    job.set_property("model_job", args.cytomine_id_job)
    crops_note = f", {crops.n_failed} crops failed" if crops.n_failed else ""
    return f"{len(predictions)} annotations predicted{crops_note}: {comment_push}{agreement}"


def _truth_label(model: Any, terms: Sequence[int]) -> Any:
    """The model class an annotation's own terms correspond to (None when unknown/ambiguous)."""
    positive = model.extra.get("positive_terms") or []
    if model.extra.get("binary") and positive and terms:
        return 1 if any(t in positive for t in terms) else 0
    ids = [c.id for c in model.classes]
    known = [t for t in terms if t in ids]
    return known[0] if len(known) == 1 else None


def _agreement(
    job: Job, model: Any, records: Sequence[AnnotationRecord], index: np.ndarray, probabilities: np.ndarray
) -> str:
    """Metrics of the predictions against the terms the annotations already have (when they have one)."""
    labels = [c.label for c in model.classes]
    truth = [_truth_label(model, r.terms) for r in records]
    keep = [i for i, t in enumerate(truth) if t is not None]
    if not keep:
        return ""
    if not model.extra.get("binary"):
        by_term = {c.id: c.label for c in model.classes}
        truth = [by_term.get(t) if t is not None else None for t in truth]
    names = {c.label: c.name for c in model.classes}
    y_true = [truth[i] for i in keep]
    y_pred = [labels[index[i]] for i in keep]
    scores = probabilities[keep] if len(labels) == 2 else None
    metrics = classification_metrics(y_true, y_pred, labels, names, scores=scores)
    metrics["note"] = "agreement of the predictions with the terms the annotations already have"
    outputs = [
        write_json(job.output_path("metrics.json"), metrics),
        confusion_matrix_png(
            metrics["confusion_matrix"],
            metrics["class_names"],
            job.output_path("confusion_matrix.png"),
            title="Predictions vs existing terms",
        ),
    ]
    if job.flags.do_upload_metrics:
        for path in outputs:
            job.attach(path)
    job.set_property("agreement_accuracy", f"{metrics['accuracy']:.4f}")
    return f"; agreement with existing terms {metrics['accuracy']:.3f} on {len(keep)}"


def _run_local(job: Job, args: argparse.Namespace, model: Any, device: str) -> str:
    job.stage("Reading images", 5, 10)
    images = local_images(job)
    probabilities = predict_scores(model, [i.path for i in images], args, job, device, job.stage("Predicting", 10, 90))
    index = probabilities.argmax(axis=1)
    names = [c.name for c in model.classes]
    rows = [
        [image.key, names[k], f"{probabilities[i, k]:.6f}", *(f"{p:.6f}" for p in probabilities[i])]
        for i, (image, k) in enumerate(zip(images, index))
    ]
    csv_path = write_rows(
        job.output_path("predictions.csv"),
        ["filename", "predicted_class", "probability", *(f"p_{n}" for n in names)],
        rows,
    )
    job.attach(csv_path)
    truth = {i.key: i.label for i in images if i.label is not None}
    if job.flags.gtfolder is not None:
        truth.update(ground_truth(job.flags.gtfolder))
    summary = f"{len(images)} images predicted (predictions.csv)"
    if truth and job.flags.do_compute_metrics:
        keep = [i for i, image in enumerate(images) if truth.get(image.key, truth.get(image.path.name)) is not None]
        y_true = [truth.get(images[i].key, truth.get(images[i].path.name)) for i in keep]
        y_pred = [names[index[i]] for i in keep]
        labels = names + sorted(set(y_true) - set(names))
        metrics = classification_metrics(
            y_true, y_pred, labels, None, scores=probabilities[keep] if len(names) == 2 else None
        )
        write_json(job.output_path("metrics.json"), metrics)
        confusion_matrix_png(
            metrics["confusion_matrix"], metrics["class_names"], job.output_path("confusion_matrix.png")
        )
        job.set_property("accuracy", f"{metrics['accuracy']:.4f}")
        summary += f"; accuracy {metrics['accuracy']:.3f} on {len(keep)} with ground truth"
    return summary
