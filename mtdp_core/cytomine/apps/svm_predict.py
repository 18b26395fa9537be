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
from pathlib import Path
from typing import Any

import numpy as np

from mtdp_core.cytomine.annotations import AnnotationRecord
from mtdp_core.cytomine.apps import common
from mtdp_core.cytomine.biaflows import ground_truth
from mtdp_core.cytomine.crops import CropSpec
from mtdp_core.cytomine.job import CytomineJobRun, Job, Stage
from mtdp_core.cytomine.report import classification_metrics

logger = logging.getLogger(__name__)


def predict_scores(
    model: Any, paths: Sequence[Path], args: argparse.Namespace, job: Job, device: str, stage: Stage, chunk: int = 512
) -> np.ndarray:
    """Class probabilities (n, n_classes) of the crops, in chunks (job progress between them)."""
    from mtdp_core.transfer.calibration import scaled_softmax

    runtime = {"batch_size": args.batch_size, "num_workers": args.n_workers, "device": device}
    extractor = None
    if model.kind != "finetune":
        weights = common.model_weights(model, args)
        extractor = model.feature_extractor(
            weights=weights, cache_dir=common.cache_root(job) / "features", engine=args.engine, **runtime
        )
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


def run(job: Job, args: argparse.Namespace) -> str:
    device = common.check_device(args)
    job.stage("Loading the model", 0, 5)
    model = common.load_trained_model(job, args)
    if isinstance(job, CytomineJobRun):
        return _run_cytomine(job, args, model, device)
    return _run_local(job, args, model, device)


def model_crop_spec(model: Any) -> CropSpec | None:
    crop = model.extra.get("crop") or (model.extra.get("source") or {}).get("crop")
    return CropSpec.from_dict(crop) if crop else None


def _run_cytomine(job: CytomineJobRun, args: argparse.Namespace, model: Any, device: str) -> str:
    job.stage("Listing annotations", 5, 10)
    filters = common.filters_from_args(args, job.project_id)
    records, term_names = common.list_project_annotations(job, filters)
    common.check_model_terms(model, term_names, job.project_id, f"job {args.cytomine_id_job}")
    spec = common.crop_spec_from_args(args, model_crop_spec(model))
    records, paths, crops = common.fetch_crops(job, records, spec, args, job.stage("Downloading crops", 10, 40))
    probabilities = predict_scores(model, paths, args, job, device, job.stage("Predicting", 40, 75))
    predictions, index = common.make_predictions(records, [c.id for c in model.classes], probabilities)
    pushed: dict[int, int] = {}
    comment_push = "not pushed (--no_annotations_upload)"
    if job.flags.do_upload_annotations:
        report = common.push_predictions(job, args, predictions, 75, 97)
        pushed, comment_push = report.pushed, report.summary()
    job.progress(97, "Saving the predictions")
    common.write_predictions(job, predictions, [c.name for c in model.classes], index, pushed, term_names)
    agreement = _agreement(job, model, records, index, probabilities) if job.flags.do_compute_metrics else ""
    job.set_properties({"n_predictions": len(predictions), "model_job": args.cytomine_id_job})
    failed = f", {crops.n_failed} crops failed" if crops.n_failed else ""
    return f"{len(predictions)} annotations predicted{failed}: {comment_push}{agreement}"


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
    common.write_metrics(job, metrics, title="Predictions vs existing terms")
    job.set_property("agreement_accuracy", f"{metrics['accuracy']:.4f}")
    return f"; agreement with existing terms {metrics['accuracy']:.3f} on {len(keep)}"


def _run_local(job: Job, args: argparse.Namespace, model: Any, device: str) -> str:
    job.stage("Reading images", 5, 10)
    images = common.local_images(job)
    probabilities = predict_scores(model, [i.path for i in images], args, job, device, job.stage("Predicting", 10, 90))
    names = [c.name for c in model.classes]
    index = common.write_local_predictions(job, [i.key for i in images], names, probabilities, every_class=True)
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
        common.write_metrics(job, metrics)
        job.set_property("accuracy", f"{metrics['accuracy']:.4f}")
        summary += f"; accuracy {metrics['accuracy']:.3f} on {len(keep)} with ground truth"
    return summary
