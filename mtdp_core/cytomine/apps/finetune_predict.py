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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtdp_core.cytomine.annotations import AnnotationFilters, AnnotationRecord, list_annotations, training_labels
from mtdp_core.cytomine.apps import common
from mtdp_core.cytomine.errors import NoAnnotationsError
from mtdp_core.cytomine.job import CytomineJobRun, Job, Stage
from mtdp_core.cytomine.report import classification_metrics

logger = logging.getLogger(__name__)


@dataclass
class Targets:
    """What is predicted: crop files, with their annotations (server) or file keys (local)."""

    paths: list[Path]
    records: list[AnnotationRecord] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)


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
    device = common.check_device(args)
    data, targets = cytomine_data(job, args) if isinstance(job, CytomineJobRun) else local_data(job)
    train_idx, val_idx = validation_split(data.labels.labels, data.groups, args.val_fraction, args.seed)
    n = (len(train_idx), len(val_idx), len(targets.paths))
    logger.info("fine-tuning on %d crops, validating on %d (grouped by image), predicting %d", *n)
    y, val_paths = data.y, [str(data.paths[i]) for i in val_idx]
    tuner = make_tuner(args, device, job.stage("Fine-tuning", 35, 80))
    tuner.fit([str(data.paths[i]) for i in train_idx], y[train_idx], X_val=val_paths, y_val=y[val_idx])

    job.stage("Predicting", 80, 85)
    classes, names = tuner.classes_, data.names(tuner.classes_)
    val_probabilities = tuner.predict_proba(val_paths)
    probabilities = (
        tuner.predict_proba([str(p) for p in targets.paths]) if targets.paths else np.zeros((0, len(classes)))
    )
    resolution = data.source.get("resolution") or {"mpp": None, "why": "local images"}
    source = {"project": data.source.get("project"), "job": job.id, "resolution": resolution}
    extra = {"app": "finetune_predict", "crop": data.source.get("crop"), "binary": False, "source": source}
    common.save_classifier(job, tuner, names, data.term_ids(classes), extra, mpp=resolution.get("mpp"))
    job.attach(write_history(job, tuner.history_))
    if job.flags.do_compute_metrics:
        write_validation_metrics(job, tuner, y[val_idx], val_probabilities, names)
    job.set_properties(
        {
            "classes": ",".join(names[int(c)] for c in classes),
            "validation_score": f"{tuner.best_score_:.4f}",
            "scoring": tuner.scoring_,
            "best_lr": f"{tuner.best_lr_:g}",
            "best_epoch": tuner.best_epoch_,
        }
    )
    summary = (
        f"validation {tuner.scoring_} {tuner.best_score_:.3f} (lr {tuner.best_lr_:g}, epoch "
        f"{tuner.best_epoch_}) on {len(val_idx)} crops"
    )
    term_ids = [data.labels.class_ids[int(c)] for c in classes]
    summary += deliver(job, args, targets, [names[int(c)] for c in classes], term_ids, probabilities)
    job.set_property("n_predictions", len(targets.paths))
    return summary


def write_validation_metrics(
    job: Job, tuner: Any, y_val: np.ndarray, probabilities: np.ndarray, names: dict[int, str]
) -> None:
    """metrics.json and confusion matrix of the kept network on the validation set."""
    classes = tuner.classes_
    scores = probabilities if len(classes) == 2 else None
    metrics = classification_metrics(y_val, classes[probabilities.argmax(axis=1)], list(classes), names, scores=scores)
    metrics.update(
        note="validation set (grouped by image) of the kept network",
        best_lr=tuner.best_lr_,
        best_epoch=tuner.best_epoch_,
        scoring=tuner.scoring_,
        best_score=tuner.best_score_,
    )
    common.write_metrics(job, metrics, title="Validation confusion matrix")


def deliver(
    job: Job,
    args: argparse.Namespace,
    targets: Targets,
    class_names: list[str],
    term_ids: list[int | None],
    probabilities: np.ndarray,
) -> str:
    """Predictions of the targets: pushed to Cytomine and listed in predictions.csv (a local
    run lists them only). Returns what the job's final status adds."""
    if not isinstance(job, CytomineJobRun):
        common.write_local_predictions(job, targets.keys, class_names, probabilities)
        return f"; {len(targets.paths)} images predicted"
    predictions, index = common.make_predictions(targets.records, term_ids, probabilities)
    pushed: dict[int, int] = {}
    note = ""
    if job.flags.do_upload_annotations and predictions:
        report = common.push_predictions(job, args, predictions, 85, 97)
        pushed = report.pushed
        note = f"; {len(predictions)} predicted: {report.summary()}"
    common.write_predictions(job, predictions, class_names, index, pushed)
    return note


def write_history(job: Job, history: list[dict]) -> Path:
    """``history.csv``: per learning rate and epoch, the losses, validation score and time."""
    rows = [
        [
            h["lr"],
            h["epoch"],
            f"{h['train_loss']:.5f}",
            f"{h['val_loss']:.5f}",
            f"{h['val_score']:.5f}",
            f"{h['seconds']:.2f}",
        ]
        for h in history
    ]
    header = ["lr", "epoch", "train_loss", "val_loss", "val_score", "seconds"]
    return common.write_rows(job.output_path("history.csv"), header, rows)


def local_data(job: Job) -> tuple[common.TrainingSet, Targets]:
    """The labelled images of ``--infolder`` train, the unlabelled ones are predicted."""
    job.stage("Reading images", 0, 5)
    images = common.local_images(job)
    targets = [i for i in images if i.label is None]
    data = common.local_training_set([i for i in images if i.label is not None])
    return data, Targets([i.path for i in targets], keys=[i.key for i in targets])


def cytomine_data(job: CytomineJobRun, args: argparse.Namespace) -> tuple[common.TrainingSet, Targets]:
    """Annotations with a (selected) term train; those of the target images (or without a term) are predicted."""
    job.stage("Listing annotations", 0, 5)
    filters = common.filters_from_args(args, job.project_id)
    everything = AnnotationFilters(filters.project, filters.images, filters.users, (), filters.reviewed_only)
    records, term_names = common.list_project_annotations(job, everything)
    selected = set(filters.terms)
    training = [r for r in records if r.terms and (not selected or selected & set(r.terms))]
    if args.cytomine_id_target_images:
        assert job.session is not None
        target_filter = AnnotationFilters(filters.project, tuple(args.cytomine_id_target_images), filters.users)
        targets = list_annotations(job.session, target_filter)
    else:
        targets = [r for r in records if not r.terms]
    training_ids = {r.id for r in training}
    targets = [r for r in targets if r.id not in training_ids]
    if not training:
        raise NoAnnotationsError(
            f"Give terms to some annotations: none of those selected ({everything.describe(term_names)}) has a term."
        )
    training_labels(training, term_names, selected_terms=filters.terms)  # fail early on bad labels
    spec = common.crop_spec_from_args(args)
    stage = job.stage("Downloading crops", 5, 35)
    records_ok, paths, _ = common.fetch_crops(job, training + targets, spec, args, stage)
    path_of = {r.id: p for r, p in zip(records_ok, paths)}
    training = [r for r in training if r.id in path_of]
    targets = [r for r in targets if r.id in path_of]
    labels = training_labels(training, term_names, selected_terms=filters.terms)
    if not targets:
        logger.warning("no annotation to predict: the model is trained and attached, nothing is pushed")
    _, resolution = common.crop_resolution(job, training, spec, args.image_size)
    source = {"project": job.project_id, "crop": spec.to_dict(), "resolution": resolution}
    data = common.TrainingSet([path_of[r.id] for r in training], labels, [r.image for r in training], source)
    return data, Targets([path_of[r.id] for r in targets], records=targets)
