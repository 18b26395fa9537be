"""The paper's evaluation protocol (Mormont et al. 2020, Sections IV-D and IV-E).

Transfer evaluation
    ``evaluate_feature_extraction`` (features + the linear SVM protocol, scored on the
    task's test set) and ``evaluate_fine_tuning`` measure one backbone on one task;
    ``run_transfer`` does it for several backbones (``BackboneSpec``: ImageNet, multi-task,
    random initialisation...), tasks, modes and seeds, and returns a ScoreTable for
    ``reports.write_report``: the final comparison table and plots.

Leave-one-task-out (LOTO) hyper-parameter selection
    The pool's tasks are split into *left-out sets* that keep related tasks together (two
    blood-smear tasks, two colon H&E tasks...), so that a model is never evaluated on a
    task whose near-twin it was pre-trained on. For each left-out set, each multi-task
    hyper-parameter set and each seed, a model is pre-trained on the pool minus the set
    (``pretrain_fn``, pluggable: the multi-task trainer), then transferred by feature
    extraction to each task of the set. Methods (hyper-parameter sets) are ranked per task;
    the choice for a target task uses the average rank over the *other* tasks (Eq. 2).
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
from mtdp_core.evaluation.ranking import ScoreTable, average_rank, select_method

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
    """A target task: training images with labels (and group ids), test images with labels."""

    name: str
    train_inputs: Sequence[Any]
    train_labels: Sequence[Any]
    test_inputs: Sequence[Any]
    test_labels: Sequence[Any]
    train_groups: Sequence[Any] | None = None

    def __post_init__(self) -> None:
        if len(self.train_inputs) != len(self.train_labels) or len(self.test_inputs) != len(self.test_labels):
            raise ConfigurationError(f"Task {self.name}: give one label per image (train and test).")
        if self.train_groups is not None and len(self.train_groups) != len(self.train_inputs):
            raise ConfigurationError(f"Task {self.name}: give one group id per training image.")
        if not len(self.train_inputs) or not len(self.test_inputs):
            raise ConfigurationError(f"Task {self.name} has no training or no test images: both are needed.")


def load_task_folder(folder: str | os.PathLike, *, groups: str | None = None, name: str | None = None) -> TaskData:
    """A task from ``folder/train/<class>/*`` and ``folder/test/<class>/*`` (groups from file names)."""
    root = Path(folder)
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise ConfigurationError(
                f"Task folder {root} has no {split}/ folder: expected {root}/{{train,test}}/<class>/."
            )
    train, y_train = labelled_images(root / "train")
    test, y_test = labelled_images(root / "test")
    return TaskData(name or root.name, train, y_train, test, y_test, groups_from_names(train, groups))


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


def evaluate_feature_extraction(
    task: TaskData,
    spec: BackboneSpec,
    *,
    probe: Any = None,
    image_size: int = 224,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str = "auto",
    cache_dir: str | os.PathLike | None = None,
) -> dict:
    """Features of ``spec`` + the probe (default: the paper's linear SVM protocol), scored on the test set.

    The probe's CV is grouped by ``task.train_groups`` and seeded with ``spec.seed``.
    Returns a record: method, task, seed, mode, metric, score, cv_score, best_params,
    n_train, n_test, seconds.
    """
    from mtdp_core.transfer.features import FeatureExtractor
    from mtdp_core.transfer.probes import Probe

    start = time.perf_counter()
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
    X_train, X_test = fx.transform(task.train_inputs), fx.transform(task.test_inputs)
    probe = clone(probe if probe is not None else Probe()).set_params(seed=spec.seed)
    probe.fit(X_train, np.asarray(task.train_labels), task.train_groups)
    score = probe.score(X_test, np.asarray(task.test_labels))
    logger.info("%s on %s (seed %d, features): test %s %.4f", spec.label, task.name, spec.seed, probe.scoring_, score)
    return {
        "method": spec.label,
        "task": task.name,
        "seed": spec.seed,
        "mode": "fe",
        "metric": probe.scoring_,
        "score": score,
        "cv_score": probe.best_score_,
        "best_params": probe.best_params_,
        "n_train": len(task.train_inputs),
        "n_test": len(task.test_inputs),
        "seconds": time.perf_counter() - start,
    }


def evaluate_fine_tuning(task: TaskData, spec: BackboneSpec, *, finetuner: Any = None) -> dict:
    """Fine-tune ``spec`` on the task (settings from ``finetuner``, a FineTuner used as a
    template), score on the test set. Returns a record like ``evaluate_feature_extraction``."""
    from mtdp_core.transfer.finetune import FineTuner

    start = time.perf_counter()
    tuner = clone(finetuner if finetuner is not None else FineTuner())
    tuner.set_params(backbone=spec.arch, weights=spec.weights, seed=spec.seed, sha256=spec.sha256)
    tuner.fit(task.train_inputs, np.asarray(task.train_labels), task.train_groups)
    score = tuner.score(task.test_inputs, np.asarray(task.test_labels))
    logger.info("%s on %s (seed %d, fine-tuned): test %s %.4f", spec.label, task.name, spec.seed, tuner.scoring_, score)
    return {
        "method": spec.label,
        "task": task.name,
        "seed": spec.seed,
        "mode": "ft",
        "metric": tuner.scoring_,
        "score": score,
        "cv_score": tuner.best_score_,
        "best_params": {"lr": tuner.best_lr_, "epoch": tuner.best_epoch_},
        "n_train": len(task.train_inputs),
        "n_test": len(task.test_inputs),
        "seconds": time.perf_counter() - start,
    }


def method_name(label: str, mode: str) -> str:
    """How a (backbone label, mode) pair is named in score tables: ``"imagenet fe"``."""
    return f"{label} {mode}"


@dataclass
class TransferResult:
    """Records of ``run_transfer`` (one per run) and their ScoreTable (methods ``"<label> <mode>"``)."""

    records: list[dict]
    table: ScoreTable


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
) -> TransferResult:
    """Evaluate every backbone spec on every task in every mode (``"fe"``, ``"ft"``).

    Give several specs with the same label and different seeds (``expand_seeds``) for
    repeated runs; the table's runs are those seeds. Fine-tuning takes its image size and
    batch size from ``finetuner``.
    """
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ConfigurationError(
            f"Invalid mode(s) {bad or modes}: use fe (feature extraction) and/or ft (fine-tuning)."
        )
    records = []
    for task in tasks:
        for mode in modes:
            for spec in specs:
                if mode == "fe":
                    rec = evaluate_feature_extraction(
                        task,
                        spec,
                        probe=probe,
                        image_size=image_size,
                        batch_size=batch_size,
                        num_workers=num_workers,
                        device=device,
                        cache_dir=cache_dir,
                    )
                else:
                    rec = evaluate_fine_tuning(task, spec, finetuner=finetuner)
                rec["method"] = method_name(spec.label, mode)
                records.append(rec)
    methods = [method_name(s.label, m) for m in modes for s in specs]
    table = ScoreTable.from_records(records, methods=list(dict.fromkeys(methods)), tasks=[t.name for t in tasks])
    return TransferResult(records, table)


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
        table: scores (methods = hyper-parameter labels, tasks = the left-out tasks, runs = seeds).
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

    def selection_rows(self) -> list[dict]:
        """Per task: the chosen hyper-parameters, their average rank elsewhere, and the task's own score."""
        rows = []
        for task, chosen in self.selections.items():
            avg = average_rank(self.table, exclude=[task])
            runs = self.table.runs(chosen, task)
            rows.append(
                {
                    "task": task,
                    "selected": chosen,
                    "average_rank_elsewhere": float(avg[self.table.methods.index(chosen)]),
                    "score_mean": float(runs.mean()),
                    "score_std": float(runs.std()),
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
    evaluated by feature extraction + the SVM protocol on each task of L. Each task's
    hyper-parameters are then selected by average rank over the other tasks (over the
    tasks outside its whole left-out set with ``exclude_whole_set``). ``evaluate`` replaces
    ``evaluate_feature_extraction`` (same signature), e.g. to reuse finished evaluations.
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
    return LotoResult(table, sets, selections, dict(zip(labels, (dict(h) for h in hyperparams))), records)
