"""The finetune-predict app: fine-tune the network on the labelled annotations, predict the others.

Stages: list the annotations (labelled ones train; the targets are the annotations of
``cytomine_id_target_images``, or else those without a term) -> download crops -> split a
validation set grouped by image (no image on both sides) -> fine-tune the backbone and a new
linear layer (``mtdp_core.transfer.finetune.FineTuner``: the paper's augmentation, the best
(learning rate, epoch) on the validation set is kept) -> predict the targets -> push
(``push_mode``) -> attach the model, training history, validation metrics and predictions.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import numpy as np

from mtdp_core.cytomine.annotations import AnnotationFilters, TrainingLabels, list_annotations, training_labels
from mtdp_core.cytomine.apps.common import (
    MODEL_FILENAME,
    check_device,
    crop_resolution,
    crop_spec_from_args,
    fetch_crops,
    filters_from_args,
    list_project_annotations,
    local_images,
    write_rows,
)
from mtdp_core.cytomine.errors import NoAnnotationsError, TooFewClassesError
from mtdp_core.cytomine.job import CytomineJobRun, Job, Stage
from mtdp_core.cytomine.push import Prediction, PredictionPusher, software_job_users
from mtdp_core.cytomine.report import classification_metrics, confusion_matrix_png, write_json

logger = logging.getLogger(__name__)


#: Fine-tuning's batch size when the batch_size input is empty.
FINETUNE_BATCH_SIZE = 32


def make_tuner(args: argparse.Namespace, device: str, stage: Stage) -> Any:
    from mtdp_core.transfer.finetune import FineTuner

    total = args.epochs * len(args.learning_rates)
    seen = {"n": 0}

    def on_epoch(row: dict) -> None:
        seen["n"] += 1
        stage.update(seen["n"], total, f"lr {row['lr']:g} epoch {row['epoch']}: validation {row['val_score']:.3f}")

    return FineTuner(
        args.backbone,
        args.weights,
        seed=args.seed,
        image_size=args.image_size,
        learning_rates=tuple(args.learning_rates),
        epochs=args.epochs,
        batch_size=args.batch_size or FINETUNE_BATCH_SIZE,
        patience=args.patience or None,
        augment=args.augment,
        num_workers=args.n_workers,
        device=device,
        on_epoch=on_epoch,
    )


def validation_split(labels: list, groups: list, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices, grouped by ``groups`` (image ids) and stratified."""
    from mtdp_core.transfer.probes import make_cv

    y = np.asarray(labels)
    n_splits = max(2, int(round(1 / val_fraction)))
    train, val = make_cv(y, np.asarray([str(g) for g in groups]), n_splits, seed=seed).folds(y)[0]
    return train, val


def run(job: Job, args: argparse.Namespace) -> str:
    device = check_device(args)
    if isinstance(job, CytomineJobRun):
        train_paths, labels, groups, target_paths, targets, term_names, spec, resolution = _cytomine_data(job, args)
    else:
        job.stage("Reading images", 0, 5)
        images = local_images(job)
        labelled = [i for i in images if i.label is not None]
        names = sorted({i.label for i in labelled})
        if len(names) < 2:
            raise TooFewClassesError(f"Put images of at least two classes in --infolder: found {names or 'none'}.")
        index = {n: k for k, n in enumerate(names)}
        labels = TrainingLabels(
            [index[i.label] for i in labelled], dict(enumerate(names)), {k: None for k in index.values()}
        )
        train_paths = [i.path for i in labelled]
        groups = [i.group if i.group is not None else i.key for i in labelled]
        targets = [i for i in images if i.label is None]
        target_paths = [i.path for i in targets]
        _term_names, spec, resolution = {}, None, {"mpp": None, "why": "local images"}

    train_idx, val_idx = validation_split(labels.labels, groups, args.val_fraction, args.seed)
    y = np.asarray(labels.labels)
    logger.info(
        "fine-tuning on %d crops, validating on %d (grouped by image), predicting %d",
        len(train_idx),
        len(val_idx),
        len(target_paths),
    )
    tuner = make_tuner(args, device, job.stage("Fine-tuning", 35, 80))
    tuner.fit(
        [str(train_paths[i]) for i in train_idx],
        y[train_idx],
        X_val=[str(train_paths[i]) for i in val_idx],
        y_val=y[val_idx],
    )

    job.stage("Predicting", 80, 85)
    classes = tuner.classes_
    names = {int(c): labels.class_names[int(c)] for c in classes}
    val_probabilities = tuner.predict_proba([str(train_paths[i]) for i in val_idx])
    val_pred = classes[val_probabilities.argmax(axis=1)]
    target_probabilities = (
        tuner.predict_proba([str(p) for p in target_paths]) if target_paths else np.zeros((0, len(classes)))
    )

    from mtdp_core.transfer.persistence import save_model

    extra = {
        "app": "finetune_predict",
        "crop": spec.to_dict() if spec else None,
        "binary": False,
        "source": {"project": getattr(job, "project_id", None), "job": job.id, "resolution": resolution},
    }
    model_path = save_model(
        job.output_path(MODEL_FILENAME),
        tuner,
        class_names=names,
        class_ids={int(c): labels.class_ids[int(c)] for c in classes},
        extra=extra,
        mpp=resolution.get("mpp"),
    )
    job.attach(model_path)
    history = tuner.history_
    job.attach(
        write_rows(
            job.output_path("history.csv"),
            ["lr", "epoch", "train_loss", "val_loss", "val_score", "seconds"],
            [
                [
                    h["lr"],
                    h["epoch"],
                    f"{h['train_loss']:.5f}",
                    f"{h['val_loss']:.5f}",
                    f"{h['val_score']:.5f}",
                    f"{h['seconds']:.2f}",
                ]
                for h in history
            ],
        )
    )
    if job.flags.do_compute_metrics:
        metrics = classification_metrics(
            y[val_idx], val_pred, list(classes), names, scores=val_probabilities if len(classes) == 2 else None
        )
        metrics.update(
            {
                "note": "validation set (grouped by image) of the kept network",
                "best_lr": tuner.best_lr_,
                "best_epoch": tuner.best_epoch_,
                "scoring": tuner.scoring_,
                "best_score": tuner.best_score_,
            }
        )
        outputs = [
            write_json(job.output_path("metrics.json"), metrics),
            confusion_matrix_png(
                metrics["confusion_matrix"],
                metrics["class_names"],
                job.output_path("confusion_matrix.png"),
                title="Validation confusion matrix",
            ),
        ]
        if job.flags.do_upload_metrics:
            for path in outputs:
                job.attach(path)
    job.set_property("classes", ",".join(names[int(c)] for c in classes))
    job.set_property("validation_score", f"{tuner.best_score_:.4f}")
    job.set_property("scoring", tuner.scoring_)
    job.set_property("best_lr", f"{tuner.best_lr_:g}")
    job.set_property("best_epoch", tuner.best_epoch_)
    summary = (
        f"validation {tuner.scoring_} {tuner.best_score_:.3f} (lr {tuner.best_lr_:g}, epoch "
        f"{tuner.best_epoch_}) on {len(val_idx)} crops"
    )

    index = target_probabilities.argmax(axis=1) if len(target_paths) else np.zeros(0, dtype=int)
    if isinstance(job, CytomineJobRun):
        predictions = [
            Prediction(
                r,
                labels.class_ids[int(classes[k])],
                float(target_probabilities[i, k]),
                r.terms[0] if len(r.terms) == 1 else None,
            )
            for i, (r, k) in enumerate(zip(targets, index))
        ]
        pushed: dict[int, int] = {}
        if job.flags.do_upload_annotations and predictions:
            stage = job.stage(f"Pushing predictions ({args.push_mode} mode)", 85, 97)
            assert job.session is not None
            users = software_job_users(job.session, job.project_id, job.software_name, job.job_user_id)
            report = PredictionPusher(
                job.session, job.project_id, users, mode=args.push_mode, threads=args.n_download_threads
            ).push(predictions, lambda d, t: stage.update(d, t))
            pushed = report.pushed
            job.set_property("push", report.summary())
            summary += f"; {len(predictions)} predicted: {report.summary()}"
        rows = [
            [
                p.annotation.id,
                p.annotation.image,
                names[int(classes[k])],
                p.term or "",
                f"{p.rate:.6f}",
                pushed.get(p.annotation.id, ""),
            ]
            for p, k in zip(predictions, index)
        ]
        job.attach(
            write_rows(
                job.output_path("predictions.csv"),
                ["annotation", "image", "predicted_class", "predicted_term", "rate", "pushed_to"],
                rows,
            )
        )
    else:
        rows = [
            [t.key, names[int(classes[k])], f"{target_probabilities[i, k]:.6f}"]
            for i, (t, k) in enumerate(zip(targets, index))
        ]
        job.attach(write_rows(job.output_path("predictions.csv"), ["filename", "predicted_class", "probability"], rows))
        summary += f"; {len(targets)} images predicted"
    job.set_property("n_predictions", len(target_paths))
    return summary


def _cytomine_data(job: CytomineJobRun, args: argparse.Namespace):
    job.stage("Listing annotations", 0, 5)
    filters = filters_from_args(args, job.project_id)
    everything = AnnotationFilters(filters.project, filters.images, filters.users, (), filters.reviewed_only)
    records, term_names = list_project_annotations(job, everything)
    selected = set(filters.terms)
    training = [r for r in records if r.terms and (not selected or selected & set(r.terms))]
    if args.cytomine_id_target_images:
        assert job.session is not None
        target_filter = AnnotationFilters(filters.project, tuple(args.cytomine_id_target_images), filters.users)
        targets = [r for r in list_annotations(job.session, target_filter)]
    else:
        targets = [r for r in records if not r.terms]
    training_ids = {r.id for r in training}
    targets = [r for r in targets if r.id not in training_ids]
    if not training:
        raise NoAnnotationsError(
            f"Give terms to some annotations: none of those selected ({everything.describe(term_names)}) has a term."
        )
    training_labels(training, term_names, selected_terms=filters.terms)  # fail early on bad labels
    spec = crop_spec_from_args(args)
    records_ok, paths, _ = fetch_crops(job, training + targets, spec, args, job.stage("Downloading crops", 5, 35))
    path_of = {r.id: p for r, p in zip(records_ok, paths)}
    training = [r for r in training if r.id in path_of]
    targets = [r for r in targets if r.id in path_of]
    labels = training_labels(training, term_names, selected_terms=filters.terms)
    _, resolution = crop_resolution(job, training, spec, args.image_size)
    if not targets:
        logger.warning("no annotation to predict: the model is trained and attached, nothing is pushed")
    return (
        [path_of[r.id] for r in training],
        labels,
        [r.image for r in training],
        [path_of[r.id] for r in targets],
        targets,
        term_names,
        spec,
        resolution,
    )
