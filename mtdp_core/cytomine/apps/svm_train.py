"""The svm-train app: features of labelled annotation crops -> linear SVM, the paper's protocol.

Stages: list the annotations (with a term: one class per term, or positive terms vs the rest
in binary mode) -> download their crops -> extract features with the pre-trained backbone ->
cross-validate a linear SVM over the C grid {1e-10, ..., 1} with folds grouped by image and
refit on everything, keeping the out-of-fold decisions of the chosen C and the probability
calibration fitted on them (``mtdp_core.transfer.probes.Probe``) -> attach the model (a
pickle-free ``.npz``), metrics, confusion matrix, report and set job properties.
"""

from __future__ import annotations

import argparse
import html
import logging
from pathlib import Path
from typing import Any

import numpy as np

from mtdp_core.cytomine.apps import common
from mtdp_core.cytomine.job import Job
from mtdp_core.cytomine.report import classification_metrics, metrics_table_html, write_html_report

logger = logging.getLogger(__name__)


def run(job: Job, args: argparse.Namespace) -> str:
    from mtdp_core.transfer.probes import Probe, make_cv

    device = common.check_device(args)
    extractor = common.make_extractor(args, job, device)
    extractor.get_backbone()  # a bad backbone or missing weights fail now, before any download
    data = common.training_set(job, args)
    logger.info("training set: %d crops, classes: %s", len(data.paths), data.labels.describe())
    X = common.extract_features(extractor, data.paths, job.stage("Extracting features", 35, 75))

    job.stage("Cross-validating the SVM (C grid, folds grouped by image)", 75, 90)
    probe = Probe(
        "svm",
        n_splits=args.cv_folds,
        class_weight="balanced" if args.balanced_classes else None,
        seed=args.seed,
        device="cuda" if device.startswith("cuda") else "cpu",
        calibrate=True,
    ).fit(X, data.y, [str(g) for g in data.groups])

    job.progress(90, "Saving the model and report")
    names = data.names(probe.classes_)
    extra = model_metadata(data, probe, names)
    mpp = (data.source.get("resolution") or {}).get("mpp")
    common.save_classifier(job, probe, names, data.term_ids(probe.classes_), extra, features=extractor, mpp=mpp)
    if job.flags.do_compute_metrics:
        write_cv_metrics(job, args, probe, names, data)
    grouped = make_cv(data.y, [str(g) for g in data.groups], args.cv_folds, seed=args.seed).grouped
    job.set_properties({**job_properties(job, args, probe, names, data), "cv_grouped": str(grouped).lower()})
    note = common.crops_note(data.source.get("crops_failed", 0))
    folds = "" if grouped else ungrouped_note(job, data)
    return (
        f"CV {probe.scoring_} {probe.best_score_:.3f} (C={probe.best_params_['C']:g}, {probe.n_splits_} folds) "
        f"on {len(data.paths)} crops{note}, {len(probe.classes_)} classes{folds}; model: {common.MODEL_FILENAME}"
    )


def ungrouped_note(job: Job, data: common.TrainingSet) -> str:
    """What the status says when the folds could not keep images apart (too few of them): the
    score is then optimistic (crops of one image on both sides of a fold)."""
    n = len({str(g) for g in data.groups})
    where = f"all images in {n} group" if job.local else f"all annotations on {n} image"
    note = f"; folds not grouped by image ({where}{'s' if n != 1 else ''}: the score is optimistic)"
    logger.warning("cross-validation%s", note[1:])
    return note


def job_properties(job: Job, args: argparse.Namespace, probe: Any, names: dict, data: common.TrainingSet) -> dict:
    labels = data.labels
    term_ids = [labels.class_ids[int(c)] for c in probe.classes_]
    return {
        "classes": ",".join(names[int(c)] for c in probe.classes_),
        # Local mode has no terms (`classes` names the folders): no ids. A binary class of several
        # terms has no single id: its slot stays empty (positive_terms lists them).
        "class_term_ids": ",".join("" if t is None else str(t) for t in term_ids)
        if any(t is not None for t in term_ids)
        else None,
        "binary": str(labels.binary).lower(),
        "positive_terms": ",".join(map(str, labels.positive_terms)) if labels.binary else None,
        "cv_score": f"{probe.best_score_:.4f}",
        "scoring": probe.scoring_,
        "best_C": f"{probe.best_params_['C']:g}",
        "n_images" if job.local else "n_annotations": len(data.paths),
        "backbone": f"{args.backbone} ({args.weights})",
    }


def write_cv_metrics(job: Job, args: argparse.Namespace, probe: Any, names: dict, data: common.TrainingSet) -> None:
    """metrics.json (the C grid's scores and out-of-fold per-class metrics), confusion matrix and report."""
    from mtdp_core.transfer.probes import predict_from_decisions

    oof = probe.oof_decisions_
    predicted = predict_from_decisions(oof, probe.classes_)
    scores = oof if oof.ndim == 1 else None
    metrics = classification_metrics(data.y, predicted, list(probe.classes_), names, scores=scores)
    metrics["note"] = "out-of-fold predictions of the chosen C (C was chosen on the same folds)"
    summary = {**cv_summary(probe, names), "cross_validated": metrics}
    report = write_report(job, args, probe, summary, metrics, data)
    title = f"Cross-validated confusion matrix (C={probe.best_params_['C']:g})"
    common.write_metrics(job, metrics, title=title, payload=summary, also=[report])


def model_metadata(data: common.TrainingSet, probe: Any, names: dict[int, str]) -> dict:
    """What the model file keeps of the training: its source, classes, crops and calibration."""
    labels, counts = np.unique(data.y, return_counts=True)
    return {
        "app": "svm_train",
        "source": data.source,
        "binary": data.labels.binary,
        "positive_terms": list(data.labels.positive_terms),
        "crop": data.source.get("crop"),
        "calibration": probe.calibration_,
        "class_counts": {names[int(c)]: int(n) for c, n in zip(labels, counts)},
    }


def cv_summary(probe: Any, names: dict[int, str]) -> dict:
    """The cross-validation over the C grid (``metrics.json``)."""
    r = probe.cv_results_
    grid = [
        {"C": p["C"], "mean": float(m), "std": float(s)}
        for p, m, s in zip(r["params"], r["mean_test_score"], r["std_test_score"])
    ]
    return {
        "cv_score": probe.best_score_,
        "scoring": probe.scoring_,
        "best_C": probe.best_params_["C"],
        "cv": probe.cv_,
        "grid": grid,
        "n_samples": int(len(probe.oof_decisions_)),
        "classes": [names[int(c)] for c in probe.classes_],
    }


def write_report(
    job: Job, args: argparse.Namespace, probe: Any, summary: dict, metrics: dict, data: common.TrainingSet
) -> Path:
    grid = "".join(
        f"<tr><td>{r['C']:g}</td><td>{r['mean']:.4f}</td><td>{r['std']:.4f}</td></tr>" for r in summary["grid"]
    )
    sections = [
        (
            "Model",
            f"<p>Linear SVM on <code>{html.escape(args.backbone)}</code> ({html.escape(str(args.weights))}) "
            f"features of {len(data.paths)} crops ({html.escape(data.labels.describe())}); "
            f"{html.escape(probe.cv_)}; best C = {probe.best_params_['C']:g}, CV {probe.scoring_} "
            f"{probe.best_score_:.4f}.</p>",
        ),
        (
            "Cross-validation over C",
            f"<table><tr><th>C</th><th>mean {probe.scoring_}</th><th>std</th></tr>{grid}</table>",
        ),
        ("Per-class metrics (out-of-fold)", metrics_table_html(metrics)),
        ("Confusion matrix (out-of-fold)", "<img src='confusion_matrix.png' alt='confusion matrix'>"),
    ]
    return write_html_report(job.output_path("report.html"), "svm-train report", sections)
