"""The svm-train app: features of labelled annotation crops -> linear SVM, the paper's protocol.

Stages: list the annotations (with a term: one class per term, or positive terms vs the rest
in binary mode) -> download their crops -> extract features with the pre-trained backbone ->
cross-validate a linear SVM over the C grid {1e-10, ..., 1} with folds grouped by image
(``mtdp_core.transfer.probes.Probe``) and refit on everything -> calibrate probabilities on
out-of-fold decisions -> attach the model (a pickle-free ``.npz``), metrics, confusion matrix,
report and set job properties.
"""

from __future__ import annotations

import argparse
import html
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from mtdp_core.cytomine.annotations import TrainingLabels, training_labels
from mtdp_core.cytomine.apps.common import (
    MODEL_FILENAME,
    check_device,
    crop_resolution,
    crop_spec_from_args,
    extract_features,
    fetch_crops,
    filters_from_args,
    list_project_annotations,
    local_images,
)
from mtdp_core.cytomine.apps.extract_features import make_extractor
from mtdp_core.cytomine.errors import TooFewClassesError
from mtdp_core.cytomine.job import CytomineJobRun, Job
from mtdp_core.cytomine.report import (
    classification_metrics,
    confusion_matrix_png,
    metrics_table_html,
    write_html_report,
    write_json,
)

logger = logging.getLogger(__name__)


@dataclass
class TrainingSet:
    """Crops, labels and groups for training, wherever they came from."""

    paths: list
    labels: TrainingLabels
    groups: list
    source: dict[str, Any]


def cytomine_training_set(
    job: CytomineJobRun, args: argparse.Namespace, positive_terms: tuple[int, ...] = ()
) -> TrainingSet:
    job.stage("Listing annotations", 0, 5)
    filters = filters_from_args(args, job.project_id)
    records, term_names = list_project_annotations(job, filters, what="annotation with a term")
    # Labels are checked before any download: a missing term fails the job at once.
    training_labels(records, term_names, selected_terms=filters.terms, positive_terms=positive_terms)
    spec = crop_spec_from_args(args)
    records, paths, report = fetch_crops(job, records, spec, args, job.stage("Downloading crops", 5, 35))
    labels = training_labels(records, term_names, selected_terms=filters.terms, positive_terms=positive_terms)
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


def local_training_set(job: Job) -> TrainingSet:
    job.stage("Reading images", 0, 5)
    images = local_images(job, labelled=True)
    names = sorted({i.label for i in images if i.label is not None})
    index = {name: k for k, name in enumerate(names)}
    if len(names) < 2:
        raise TooFewClassesError(
            f"Put images of at least two classes in --infolder: found {len(names)} ({', '.join(names) or 'none'})."
        )
    labels = TrainingLabels(
        [index[i.label] for i in images],
        dict(enumerate(names)),
        {k: None for k in index.values()},
        counts={index[n]: sum(i.label == n for i in images) for n in names},
    )
    groups = [i.group if i.group is not None else i.key for i in images]
    return TrainingSet([i.path for i in images], labels, groups, {"infolder": str(job.flags.infolder)})


def run(job: Job, args: argparse.Namespace) -> str:
    from mtdp_core.transfer.calibration import fit_softmax_scale
    from mtdp_core.transfer.linear_svm import decision_values, linear_svm_path
    from mtdp_core.transfer.persistence import save_model
    from mtdp_core.transfer.probes import Probe, make_cv

    device = check_device(args)
    extractor = make_extractor(args, job, device)
    extractor.get_backbone()  # a bad backbone or missing weights fail now, before any download
    if isinstance(job, CytomineJobRun):
        data = cytomine_training_set(job, args, tuple(args.cytomine_positive_terms or ()))
    else:
        data = local_training_set(job)
    logger.info("training set: %d crops, classes: %s", len(data.paths), data.labels.describe())
    X = extract_features(extractor, data.paths, job.stage("Extracting features", 35, 75))
    y = np.asarray(data.labels.labels)
    groups = np.asarray([str(g) for g in data.groups])

    job.stage("Cross-validating the SVM (C grid, folds grouped by image)", 75, 90)
    probe = Probe(
        "svm",
        n_splits=args.cv_folds,
        class_weight="balanced" if args.balanced_classes else None,
        seed=args.seed,
        device="cuda" if device.startswith("cuda") else "cpu",
    ).fit(X, y, groups)
    # Out-of-fold decisions of the chosen C, on the same folds: per-class metrics and calibration.
    # The path up to the chosen C, warm-started from the smallest C, is ~3x faster than C alone from zero.
    folds = make_cv(y, groups, args.cv_folds, seed=args.seed).folds(y)
    best_c = float(probe.best_params_["C"])
    path = sorted(float(p["C"]) for p in probe.cv_results_["params"] if float(p["C"]) <= best_c)
    coef, classes = linear_svm_path(X, y, [train for train, _ in folds], path, class_weight=probe.class_weight)
    oof = np.zeros((len(y), 1 if len(classes) == 2 else len(classes)))
    for f, (_, test) in enumerate(folds):
        oof[test] = decision_values(coef[-1, f], X[test])
    oof = oof[:, 0] if len(classes) == 2 else oof
    y_index = np.searchsorted(classes, y)
    scale, nll = fit_softmax_scale(oof, y_index)
    predicted = classes[(oof > 0).astype(int)] if oof.ndim == 1 else classes[oof.argmax(axis=1)]

    job.progress(90, "Saving the model and report")
    names = {int(c): data.labels.class_names[int(c)] for c in classes}
    extra = {
        "app": "svm_train",
        "source": data.source,
        "binary": data.labels.binary,
        "positive_terms": list(data.labels.positive_terms),
        "crop": data.source.get("crop"),
        "calibration": {"method": "softmax_scale", "scale": scale, "oof_nll": nll},
        "class_counts": {names[int(c)]: int(n) for c, n in zip(*np.unique(y, return_counts=True))},
    }
    model_path = save_model(
        job.output_path(MODEL_FILENAME),
        probe,
        features=extractor,
        class_names=names,
        class_ids={int(c): data.labels.class_ids[int(c)] for c in classes},
        extra=extra,
        mpp=(data.source.get("resolution") or {}).get("mpp"),
    )
    job.attach(model_path)
    cv_rows = [
        {"C": p["C"], "mean": float(m), "std": float(s)}
        for p, m, s in zip(
            probe.cv_results_["params"], probe.cv_results_["mean_test_score"], probe.cv_results_["std_test_score"]
        )
    ]
    summary = {
        "cv_score": probe.best_score_,
        "scoring": probe.scoring_,
        "best_C": probe.best_params_["C"],
        "cv": probe.cv_,
        "grid": cv_rows,
        "n_samples": int(len(y)),
        "classes": [names[int(c)] for c in classes],
    }
    if job.flags.do_compute_metrics:
        metrics = classification_metrics(y, predicted, list(classes), names, scores=oof if oof.ndim == 1 else None)
        metrics["note"] = "out-of-fold predictions of the chosen C (C was chosen on the same folds)"
        summary["cross_validated"] = metrics
        outputs = [write_json(job.output_path("metrics.json"), summary)]
        png = confusion_matrix_png(
            metrics["confusion_matrix"],
            metrics["class_names"],
            job.output_path("confusion_matrix.png"),
            title=f"Cross-validated confusion matrix (C={probe.best_params_['C']:g})",
        )
        outputs += [png, _report(job, args, probe, summary, metrics, data)]
        if job.flags.do_upload_metrics:
            for path in outputs:
                job.attach(path)
    job.set_property("classes", ",".join(names[int(c)] for c in classes))
    job.set_property("class_term_ids", ",".join(str(data.labels.class_ids[int(c)]) for c in classes))
    job.set_property("binary", str(data.labels.binary).lower())
    if data.labels.binary:
        job.set_property("positive_terms", ",".join(str(t) for t in data.labels.positive_terms))
    job.set_property("cv_score", f"{probe.best_score_:.4f}")
    job.set_property("scoring", probe.scoring_)
    job.set_property("best_C", f"{probe.best_params_['C']:g}")
    job.set_property("n_annotations" if not job.local else "n_images", int(len(y)))
    job.set_property("backbone", f"{args.backbone} ({args.weights})")
    failed = data.source.get("crops_failed", 0)
    note = f" ({failed} crops failed: see crop_failures.csv)" if failed else ""
    return (
        f"CV {probe.scoring_} {probe.best_score_:.3f} (C={probe.best_params_['C']:g}, {probe.n_splits_} folds) "
        f"on {len(y)} crops{note}, {len(classes)} classes; model: {MODEL_FILENAME}"
    )


def _report(job: Job, args: argparse.Namespace, probe: Any, summary: dict, metrics: dict, data: TrainingSet):
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
