"""The paper's evaluation protocol (Mormont et al. 2020, Sections IV-D and IV-E).

Splits
    A target task (``TaskData``) has a training set, a validation split inside it (the
    task's own ``val`` split; ``val_mask``) and a test set. Choices (hyper-parameters, the
    fine-tuning learning rate and epoch) are made on the validation split; the test set is
    read once, by the final comparison, for models refit on train + val (feature
    extraction) or fine-tuned on train and stopped on val (fine-tuning). A task without a
    validation split gets a random grouped hold-out of its training set instead.

Transfer evaluation
    ``evaluate_feature_extraction`` (features + the linear SVM protocol, fit on train and
    scored on val with ``split="val"``; refit on train + val and scored on test with
    ``split="test"``), ``evaluate_fine_tuning`` and ``evaluate_learning_curve`` (the test
    score at several training-set fractions) measure one backbone on one task;
    ``run_transfer`` does it for several backbones (``BackboneSpec``: ImageNet, multi-task,
    random initialisation...), tasks, modes and seeds, and returns a ScoreTable for
    ``reports.write_report``: the final comparison table and plots.

Leave-one-task-out (LOTO) hyper-parameter selection
    The pool's tasks are split into *left-out sets* that keep related tasks together (two
    blood-smear tasks, two colon H&E tasks...), so that a model is never evaluated on a
    task whose near-twin it was pre-trained on. For each left-out set, each multi-task
    hyper-parameter set and each seed, a model is pre-trained on the pool minus the set
    (``pretrain_fn``, pluggable: the multi-task trainer), then transferred by feature
    extraction to each task of the set: the SVM is trained on the task's training split and
    scored on its validation split (never its test set). Methods (hyper-parameter sets) are
    ranked per task on those validation scores; the choice for a target task uses the
    average rank over the *other* tasks (Eq. 2).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import clone

from mtdp_core.data.folders import groups_from_names, labelled_images
from mtdp_core.errors import ConfigurationError
from mtdp_core.evaluation.ranking import DDOF, ScoreTable, average_rank, select_method

logger = logging.getLogger(__name__)

#: Left-out sets for the ../shared/data pool (task names = folder names): related tasks stay
#: together: BCCD and malaria are both Giemsa/Wright blood smears; NCT-CRC-HE and LC25000
#: both contain colon H&E tissue. Oral mucosa H&E and Pap-smear cytology stand alone.
SHARED_POOL_LEFT_OUT_SETS: tuple[tuple[str, ...], ...] = (
    ("oral_cancer",),
    ("herlev_papsmear",),
    ("bccd", "malaria"),
    ("nct_crc_he", "lc25000"),
)
MODES: tuple[str, ...] = ("fe", "ft")
MODE_NAMES = {"fe": "feature extraction + linear SVM", "ft": "fine-tuning"}

#: pretrain_fn(excluded_tasks, hyperparams, seed) -> path of the pre-trained backbone weights
#: (a file ``create_backbone(arch, weights=path)`` loads, e.g. written by ``save_backbone``).
PretrainFn = Callable[[tuple[str, ...], dict, int], "str | os.PathLike"]


# --------------------------------------------------------------------------- tasks and backbones


@dataclass
class TaskData:
    """A target task: its training images (labels, group ids), its validation split among them, its test set.

    ``train_inputs`` is everything a final model may be fit on: the task's train *and*
    validation splits, in a fixed order; ``val_mask`` (one bool per training image, None when
    the task has no validation split) marks the validation split. ``fit_and_validation``
    gives the two parts used to make choices (the SVM's training data and the images that
    rank hyper-parameters; fine-tuning's training and stopping data).
    """

    name: str
    train_inputs: Sequence[Any]
    train_labels: Sequence[Any]
    test_inputs: Sequence[Any]
    test_labels: Sequence[Any]
    train_groups: Sequence[Any] | None = None
    val_mask: Sequence[bool] | None = None

    def __post_init__(self) -> None:
        if len(self.train_inputs) != len(self.train_labels) or len(self.test_inputs) != len(self.test_labels):
            raise ConfigurationError(f"Task {self.name}: give one label per image (train and test).")
        if self.train_groups is not None and len(self.train_groups) != len(self.train_inputs):
            raise ConfigurationError(f"Task {self.name}: give one group id per training image.")
        if not len(self.train_inputs) or not len(self.test_inputs):
            raise ConfigurationError(f"Task {self.name} has no training or no test images: both are needed.")
        if self.val_mask is not None:
            mask = np.asarray(self.val_mask, dtype=bool)
            if mask.shape != (len(self.train_inputs),):
                raise ConfigurationError(
                    f"Task {self.name}: val_mask has {mask.size} entries for {len(self.train_inputs)} training images: "
                    "give one bool per training image (True: validation split)."
                )
            if mask.all():
                raise ConfigurationError(
                    f"Task {self.name}: every training image is in the validation split: keep some to train on."
                )
            self.val_mask = mask if mask.any() else None

    @classmethod
    def from_splits(
        cls,
        name: str,
        train: tuple[Sequence[Any], Sequence[Any]],
        test: tuple[Sequence[Any], Sequence[Any]],
        *,
        val: tuple[Sequence[Any], Sequence[Any]] | None = None,
        train_groups: Sequence[Any] | None = None,
        val_groups: Sequence[Any] | None = None,
    ) -> TaskData:
        """A task from separate (inputs, labels) splits; the validation split goes after the training one."""
        if val is None or not len(val[0]):
            return cls(name, list(train[0]), list(train[1]), list(test[0]), list(test[1]), train_groups)
        if (train_groups is None) != (val_groups is None):
            raise ConfigurationError(f"Task {name}: give group ids for both the train and the val split, or neither.")
        groups = None if train_groups is None else np.concatenate([np.asarray(train_groups), np.asarray(val_groups)])
        mask = np.r_[np.zeros(len(train[0]), bool), np.ones(len(val[0]), bool)]
        return cls(
            name,
            [*train[0], *val[0]],
            [*train[1], *val[1]],
            list(test[0]),
            list(test[1]),
            groups,
            mask,
        )

    @property
    def has_validation(self) -> bool:
        return self.val_mask is not None

    def fit_and_validation(self, seed: int = 0, fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
        """Indices into the training images: (fit on, validate on).

        The task's own validation split when it has one; otherwise a seeded hold-out of
        ``fraction`` of the training images, grouped by ``train_groups``, stratified.
        """
        if self.val_mask is not None:
            mask = np.asarray(self.val_mask)
            return np.flatnonzero(~mask), np.flatnonzero(mask)
        from mtdp_core.transfer.probes import holdout_split

        return holdout_split(np.asarray(self.train_labels), self.train_groups, fraction, seed=seed)


def load_task_folder(folder: str | os.PathLike, *, groups: str | None = None, name: str | None = None) -> TaskData:
    """A task from ``folder/train/<class>/*``, ``folder/test/<class>/*`` and, when present,
    ``folder/val/<class>/*`` (its validation split; groups from file names)."""
    root = Path(folder)
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise ConfigurationError(
                f"Task folder {root} has no {split}/ folder: expected {root}/{{train,test}}/<class>/ (val/ optional)."
            )
    train, y_train = labelled_images(root / "train")
    test, y_test = labelled_images(root / "test")
    val, y_val = labelled_images(root / "val") if (root / "val").is_dir() else ([], [])
    return TaskData.from_splits(
        name or root.name,
        (train, y_train),
        (test, y_test),
        val=(val, y_val),
        train_groups=groups_from_names(train, groups),
        val_groups=groups_from_names(val, groups),
    )


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone to evaluate: a label for reports, an architecture, weights, a seed.

    ``weights`` may contain ``{seed}`` (e.g. one multi-task model per pre-training seed:
    ``"runs/mtdp-seed{seed}.pth"``), filled in by ``expand_seeds``.
    """

    label: str
    arch: str
    weights: str = "imagenet"
    seed: int = 0
    sha256: str | None = None


def parse_backbone_spec(text: str) -> BackboneSpec:
    """``"LABEL=ARCH:WEIGHTS"`` or ``"ARCH:WEIGHTS"`` (label = the text), e.g.
    ``"imagenet=efficientnet_lite0:imagenet"``, ``"mtdp=densenet121:runs/seed{seed}.pth"``."""
    label, _, rest = text.partition("=") if "=" in text else (text, "", text)
    arch, sep, weights = rest.partition(":")
    if not sep or not arch or not weights or not label:
        raise ConfigurationError(
            f"Invalid backbone spec {text!r}: use LABEL=ARCH:WEIGHTS, e.g. imagenet=efficientnet_lite0:imagenet."
        )
    return BackboneSpec(label.strip(), arch.strip(), weights.strip())


def expand_seeds(specs: Sequence[BackboneSpec], seeds: Sequence[int]) -> list[BackboneSpec]:
    """One spec per (spec, seed), with ``{seed}`` in the weights filled in."""
    return [replace(s, seed=int(seed), weights=s.weights.replace("{seed}", str(seed))) for s in specs for seed in seeds]


# --------------------------------------------------------------------------- transfer evaluation


#: Where a feature-extraction evaluation is scored: ``"val"`` (fit on the training split,
#: scored on the validation split: choices) or ``"test"`` (refit on train + val, scored on
#: the test set: the final comparison).
SCORED_ON: tuple[str, ...] = ("val", "test")


def _task_features(
    task: TaskData,
    spec: BackboneSpec,
    *,
    test: bool,
    image_size: int,
    batch_size: int | None,
    num_workers: int | None,
    device: str,
    cache_dir: str | os.PathLike | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Features of the task's training images (train + val, in their order: one cache entry)
    and, only when ``test``, of its test images."""
    from mtdp_core.transfer.features import FeatureExtractor

    fx = FeatureExtractor(
        spec.arch,
        spec.weights,
        seed=spec.seed,
        sha256=spec.sha256,
        image_size=image_size,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        cache_dir=cache_dir,
    )
    X_train = fx.transform(task.train_inputs)
    return X_train, (fx.transform(task.test_inputs) if test else None)


def evaluate_feature_extraction(
    task: TaskData,
    spec: BackboneSpec,
    *,
    split: str = "test",
    probe: Any = None,
    image_size: int = 224,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str = "auto",
    cache_dir: str | os.PathLike | None = None,
) -> dict:
    """Features of ``spec`` + the probe (default: the paper's linear SVM protocol), scored on ``split``.

    - ``split="val"``: the probe is trained on the task's training split and scored on its
      validation split (``TaskData.fit_and_validation``): the score that ranks
      hyper-parameters. The test images are not read.
    - ``split="test"``: the probe is trained on train + val (the refit of the paper's final
      models) and scored on the test set.

    In both, the probe's own CV (which chooses C) is grouped by ``task.train_groups`` and
    seeded with ``spec.seed``. Returns a record: method, task, seed, mode, scored_on, metric,
    score, cv_score, best_params, n_train (images the probe was trained on), n_test (images
    scored), seconds.
    """
    from mtdp_core.transfer.probes import Probe

    if split not in SCORED_ON:
        raise ConfigurationError(f"Invalid split {split!r}: score on val (selection) or test (final comparison).")
    start = time.perf_counter()
    X, X_test = _task_features(
        task,
        spec,
        test=split == "test",
        image_size=image_size,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        cache_dir=cache_dir,
    )
    y = np.asarray(task.train_labels)
    if split == "val":
        fit, scored = task.fit_and_validation(seed=spec.seed)
        groups = None if task.train_groups is None else np.asarray(task.train_groups)[fit]
        X_fit, y_fit, X_eval, y_eval = X[fit], y[fit], X[scored], y[scored]
    else:
        X_fit, y_fit, groups, X_eval, y_eval = X, y, task.train_groups, X_test, np.asarray(task.test_labels)
    probe = clone(probe if probe is not None else Probe()).set_params(seed=spec.seed)
    probe.fit(X_fit, y_fit, groups)
    score = probe.score(X_eval, y_eval)
    logger.info(
        "%s on %s (seed %d, features): %s %s %.4f", spec.label, task.name, spec.seed, split, probe.scoring_, score
    )
    return {
        "method": spec.label,
        "task": task.name,
        "seed": spec.seed,
        "mode": "fe",
        "scored_on": split,
        "metric": probe.scoring_,
        "score": score,
        "cv_score": probe.best_score_,
        "best_params": probe.best_params_,
        "n_train": len(y_fit),
        "n_test": len(y_eval),
        "seconds": time.perf_counter() - start,
    }


def evaluate_fine_tuning(task: TaskData, spec: BackboneSpec, *, finetuner: Any = None) -> dict:
    """Fine-tune ``spec`` on the task (settings from ``finetuner``, a FineTuner used as a
    template) and score the kept network once on the test set.

    The network trains on the task's training split; the learning rate and the epoch are
    chosen on its validation split (the paper's protocol), or on the FineTuner's grouped
    hold-out of the training images when the task has no validation split. Returns a record
    like ``evaluate_feature_extraction``, with ``validation`` (which set chose, its size).
    """
    from mtdp_core.transfer.finetune import FineTuner

    start = time.perf_counter()
    tuner = clone(finetuner if finetuner is not None else FineTuner())
    tuner.set_params(backbone=spec.arch, weights=spec.weights, seed=spec.seed, sha256=spec.sha256)
    y = np.asarray(task.train_labels)
    if task.has_validation:
        fit, val = task.fit_and_validation()
        inputs = list(task.train_inputs)
        groups = None if task.train_groups is None else np.asarray(task.train_groups)[fit]
        tuner.fit([inputs[i] for i in fit], y[fit], groups, X_val=[inputs[i] for i in val], y_val=y[val])
        n_train = len(fit)
    else:
        tuner.fit(task.train_inputs, y, task.train_groups)
        n_train = len(y) - tuner.validation_["n"]
    score = tuner.score(task.test_inputs, np.asarray(task.test_labels))
    logger.info("%s on %s (seed %d, fine-tuned): test %s %.4f", spec.label, task.name, spec.seed, tuner.scoring_, score)
    return {
        "method": spec.label,
        "task": task.name,
        "seed": spec.seed,
        "mode": "ft",
        "scored_on": "test",
        "metric": tuner.scoring_,
        "score": score,
        "cv_score": tuner.best_score_,
        "best_params": {"lr": tuner.best_lr_, "epoch": tuner.best_epoch_},
        "validation": tuner.validation_,
        "n_train": n_train,
        "n_test": len(task.test_inputs),
        "seconds": time.perf_counter() - start,
    }


def evaluate_learning_curve(
    task: TaskData,
    spec: BackboneSpec,
    *,
    fractions: Sequence[float],
    probe: Any = None,
    min_per_class: int = 2,
    image_size: int = 224,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str = "auto",
    cache_dir: str | os.PathLike | None = None,
) -> list[dict]:
    """Feature extraction + the probe trained on class-stratified subsets of the task's
    training images (train + val) at each fraction, each scored on the test set.

    The subsets are drawn with ``spec.seed`` from the labels alone
    (``probes.stratified_subset``): every backbone evaluated with the same seed on the same
    task gets the same subsets, so differences between backbones are paired. Returns one
    record per fraction: method, task, seed, mode ``"curve"``, scored_on, fraction, n_train,
    metric, score (test), cv_score, best_params.
    """
    from mtdp_core.transfer.probes import LearningCurve, Probe

    X, X_test = _task_features(
        task,
        spec,
        test=True,
        image_size=image_size,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        cache_dir=cache_dir,
    )
    curve = LearningCurve(probe if probe is not None else Probe(), tuple(fractions), (spec.seed,), min_per_class)
    rows = curve.run(X, task.train_labels, X_test, task.test_labels, groups=task.train_groups)
    return [
        {
            "method": spec.label,
            "task": task.name,
            "seed": spec.seed,
            "mode": "curve",
            "scored_on": "test",
            "fraction": r["fraction"],
            "n_train": r["n_train"],
            "metric": r["metric"],
            "score": r["test_score"],
            "cv_score": r["cv_score"],
            "best_params": r["best_params"],
        }
        for r in rows
    ]


def learning_curve_with_final(
    task: TaskData,
    spec: BackboneSpec,
    fractions: Sequence[float],
    final: Mapping[str, Any] | None,
    *,
    evaluate: Callable[..., list[dict]] | None = None,
    **kwargs: Any,
) -> list[dict]:
    """``evaluate_learning_curve`` (method ``"<label> fe"``), except the point at fraction 1, taken from
    ``final`` when given: the spec's test-set feature-extraction record, which is the same computation
    (every training image, in order, the probe seeded alike), so it is not run twice.
    ``evaluate`` replaces ``evaluate_learning_curve`` (e.g. through a journal); ``kwargs`` go to it."""
    wanted = sorted({float(f) for f in fractions})
    partial = [f for f in wanted if f < 1] if final is not None else wanted
    rows = (evaluate or evaluate_learning_curve)(task, spec, fractions=partial, **kwargs) if partial else []
    if final is not None and 1.0 in wanted:
        rows.append(
            {
                "method": spec.label,
                "task": task.name,
                "seed": spec.seed,
                "mode": "curve",
                "scored_on": "test",
                "fraction": 1.0,
                "n_train": final["n_train"],
                "metric": final["metric"],
                "score": final["score"],
                "cv_score": final["cv_score"],
                "best_params": final["best_params"],
            }
        )
    return [dict(r, method=method_name(spec.label, "fe")) for r in rows]


def method_name(label: str, mode: str) -> str:
    """How a (backbone label, mode) pair is named in score tables: ``"imagenet fe"``."""
    return f"{label} {mode}"


@dataclass
class TransferResult:
    """Records of ``run_transfer`` (one per run), their ScoreTable (methods ``"<label> <mode>"``)
    and the learning-curve records (empty without ``curve_fractions``)."""

    records: list[dict]
    table: ScoreTable
    curves: list[dict] = field(default_factory=list)


def run_transfer(
    tasks: Sequence[TaskData],
    specs: Sequence[BackboneSpec],
    *,
    modes: Sequence[str] = ("fe",),
    probe: Any = None,
    finetuner: Any = None,
    image_size: int = 224,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    curve_fractions: Sequence[float] | None = None,
    curve_min_per_class: int = 2,
) -> TransferResult:
    """Evaluate every backbone spec on every task in every mode (``"fe"``, ``"ft"``), scored on
    each task's test set (feature extraction: the probe refit on train + val).

    Give several specs with the same label and different seeds (``expand_seeds``) for
    repeated runs; the table's runs are those seeds. Fine-tuning takes its image size and
    batch size from ``finetuner``. With ``curve_fractions``, each spec also gets a learning
    curve by feature extraction (``evaluate_learning_curve``; its subsets are drawn with the
    spec's seed, so specs of the same seed share them), method ``"<label> fe"``.
    """
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ConfigurationError(
            f"Invalid mode(s) {bad or modes}: use fe (feature extraction) and/or ft (fine-tuning)."
        )
    features = dict(
        image_size=image_size, batch_size=batch_size, num_workers=num_workers, device=device, cache_dir=cache_dir
    )
    records, curves = [], []
    for task in tasks:
        for mode in modes:
            for spec in specs:
                if mode == "fe":
                    rec = evaluate_feature_extraction(task, spec, split="test", probe=probe, **features)
                else:
                    rec = evaluate_fine_tuning(task, spec, finetuner=finetuner)
                rec["method"] = method_name(spec.label, mode)
                records.append(rec)
        if curve_fractions:
            final = {(r["method"], r["seed"]): r for r in records if r["task"] == task.name and r["mode"] == "fe"}
            for spec in specs:
                own = final.get((method_name(spec.label, "fe"), spec.seed))
                curves += learning_curve_with_final(
                    task, spec, curve_fractions, own, probe=probe, min_per_class=curve_min_per_class, **features
                )
    methods = [method_name(s.label, m) for m in modes for s in specs]
    table = ScoreTable.from_records(records, methods=list(dict.fromkeys(methods)), tasks=[t.name for t in tasks])
    return TransferResult(records, table, curves)


# --------------------------------------------------------------------------- leave-one-task-out


def check_left_out_sets(left_out_sets: Sequence[Sequence[str]], tasks: Sequence[str]) -> list[tuple[str, ...]]:
    """Validate left-out sets: non-empty, disjoint, made of known tasks. Returns them as tuples."""
    sets = [tuple(s) for s in left_out_sets]
    known = set(tasks)
    seen: dict[str, int] = {}
    if not sets:
        raise ConfigurationError("No left-out sets: give at least one, e.g. [['oral_cancer'], ['bccd', 'malaria']].")
    for i, s in enumerate(sets):
        if not s:
            raise ConfigurationError(f"Left-out set #{i + 1} is empty: each set needs at least one task.")
        for t in s:
            if t not in known:
                raise ConfigurationError(
                    f"Unknown task {t!r} in left-out set {list(s)}: tasks are {', '.join(sorted(known))}."
                )
            if t in seen:
                raise ConfigurationError(
                    f"Task {t!r} is in two left-out sets (#{seen[t] + 1} and #{i + 1}): sets must be disjoint."
                )
            seen[t] = i
    return sets


def hyperparams_label(hyperparams: Mapping[str, Any]) -> str:
    """A short stable name for a hyper-parameter set: ``"lr=0.0001,tau=5,warmup=True"``."""
    if not hyperparams:
        return "default"
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(hyperparams.items()))


@dataclass
class LotoResult:
    """What ``run_loto`` measured and chose.

    Attributes:
        table: validation scores (methods = hyper-parameter labels, tasks = the left-out tasks,
            runs = seeds): the SVM trained on each task's training split, scored on its
            validation split.
        left_out_sets: the sets used.
        selections: {task: the hyper-parameter label chosen for it without its own rank}.
        hyperparams: {label: hyper-parameter dict}.
        records: one dict per (set, hyper-parameters, seed, task) run, with the weights path.
    """

    table: ScoreTable
    left_out_sets: list[tuple[str, ...]]
    selections: dict[str, str]
    hyperparams: dict[str, dict]
    records: list[dict] = field(default_factory=list)
    exclude_whole_set: bool = False

    def selection_rows(self) -> list[dict]:
        """Per task: the chosen hyper-parameters, their average rank over the tasks that chose them
        (the other tasks; the tasks outside the set with ``exclude_whole_set``), and the task's own
        validation score with them (mean and sample std over seeds)."""
        rows = []
        set_of = {t: s for s in self.left_out_sets for t in s}
        for task, chosen in self.selections.items():
            avg = average_rank(self.table, exclude=list(set_of[task]) if self.exclude_whole_set else [task])
            runs = self.table.runs(chosen, task)
            rows.append(
                {
                    "task": task,
                    "selected": chosen,
                    "average_rank_elsewhere": float(avg[self.table.methods.index(chosen)]),
                    "val_score_mean": float(runs.mean()),
                    "val_score_std": float(runs.std(ddof=DDOF)) if runs.size > DDOF else 0.0,
                    "ddof": DDOF,
                }
            )
        return rows


def run_loto(
    tasks: Mapping[str, TaskData],
    left_out_sets: Sequence[Sequence[str]],
    hyperparams: Sequence[Mapping[str, Any]],
    seeds: Sequence[int],
    pretrain_fn: PretrainFn,
    *,
    arch: str,
    probe: Any = None,
    exclude_whole_set: bool = False,
    image_size: int = 224,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    evaluate: Callable[..., dict] | None = None,
) -> LotoResult:
    """The leave-one-task-out protocol around a pre-training function.

    For each left-out set L, hyper-parameter set h and seed s: ``pretrain_fn(L, h, s)``
    pre-trains on the pool minus L and returns the weights path; the backbone is then
    evaluated by feature extraction + the SVM protocol on each task of L: trained on the
    task's training split, scored on its validation split (``split="val"``; the test set is
    never read here). Each task's hyper-parameters are then selected by average rank of those
    validation scores over the other tasks (over the tasks outside its whole left-out set with
    ``exclude_whole_set``). ``evaluate`` replaces ``evaluate_feature_extraction`` (same
    signature), e.g. to reuse finished evaluations.
    """
    sets = check_left_out_sets(left_out_sets, list(tasks))
    if not hyperparams:
        raise ConfigurationError("No hyper-parameter sets to compare: give at least one (e.g. [{'lr': 1e-4}]).")
    labels = [hyperparams_label(h) for h in hyperparams]
    if len(set(labels)) != len(labels):
        raise ConfigurationError(f"Duplicate hyper-parameter sets {labels}: give each once.")
    records = []
    for left_out in sets:
        for hp, label in zip(hyperparams, labels):
            for seed in seeds:
                logger.info("LOTO: pre-training without %s, %s, seed %d", list(left_out), label, seed)
                weights = os.fspath(pretrain_fn(tuple(left_out), dict(hp), int(seed)))
                spec = BackboneSpec(label=label, arch=arch, weights=weights, seed=int(seed))
                for task in left_out:
                    rec = (evaluate or evaluate_feature_extraction)(
                        tasks[task],
                        spec,
                        split="val",
                        probe=probe,
                        image_size=image_size,
                        batch_size=batch_size,
                        num_workers=num_workers,
                        device=device,
                        cache_dir=cache_dir,
                    )
                    rec.update(left_out=list(left_out), weights=weights)
                    records.append(rec)
    order = [t for s in sets for t in s]
    table = ScoreTable.from_records(records, methods=labels, tasks=order)
    set_of = {t: s for s in sets for t in s}
    selections = {t: select_method(table, t, exclude=list(set_of[t]) if exclude_whole_set else [t]) for t in order}
    return LotoResult(
        table, sets, selections, dict(zip(labels, (dict(h) for h in hyperparams))), records, exclude_whole_set
    )
