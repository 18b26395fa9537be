"""The leave-one-task-out experiment on a task pool, end to end (paper Sections IV-D/E).

``run_experiment(config)`` plugs the multi-task trainer (``mtdp_core.training.train``) into
``protocol.run_loto`` and adds the final comparison:

1. for each left-out set L, each multi-task hyper-parameter set h and each seed s, pre-train
   on the pool minus L (``multitask_pretrainer``; runs that completed earlier are reused, so
   an interrupted experiment resumes where it stopped);
2. transfer each of those models by feature extraction + the linear SVM protocol to each
   task of L, the SVM trained on the task's training split and scored on its validation
   split; rank the hyper-parameter sets per task on those validation scores and select, for
   each task, the set with the best average rank over the *other* tasks (Eq. 2). No test
   split is read up to here;
3. compare, per task, on its test split, the selected multi-task models (one per seed,
   pre-trained without the task's left-out set; the SVM refit on train + val) with the
   baselines (ImageNet) by feature extraction, and by fine-tuning on the tasks listed in
   ``finetune_tasks`` (learning rate and epoch chosen on the validation split; baselines
   ImageNet and training from scratch);
4. with ``learning_curve``, the same feature-extraction comparison at several fractions of
   the training set (the same subsets for every method), with paired differences.

Outputs under ``output_dir``: ``pretrain/`` (one training run per (set, h, seed)),
``features/`` (the feature cache), ``loto/`` (validation scores, rank summary, selection),
``comparison_fe/`` and ``comparison_ft/`` (``reports.write_report``: CSV, Markdown, plots),
``learning_curves/`` (``reports.write_learning_curve_report``),
``records.jsonl`` (every evaluation), ``evaluations.jsonl`` (the journal of finished
evaluations: running the experiment again, after an interruption or with other fine-tuning
settings, redoes only what is missing or changed), ``summary.json`` (wall time, selections) and
``results.md`` (all tables together). ``report_experiment(output_dir)`` writes the reports
again from records.jsonl without computing anything.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtdp_core.errors import ConfigurationError, DataError
from mtdp_core.evaluation.protocol import (
    MODES,
    SHARED_POOL_LEFT_OUT_SETS,
    BackboneSpec,
    LotoResult,
    PretrainFn,
    TaskData,
    evaluate_feature_extraction,
    evaluate_fine_tuning,
    evaluate_learning_curve,
    hyperparams_label,
    learning_curve_with_final,
    method_name,
    run_loto,
)
from mtdp_core.evaluation.ranking import DDOF, ScoreTable, rank_matrix, select_method
from mtdp_core.evaluation.reports import (
    markdown_comparison,
    markdown_learning_curves,
    summary_rows,
    write_csv,
    write_learning_curve_report,
    write_report,
)

logger = logging.getLogger(__name__)

#: The label of the selected multi-task models in the comparison tables.
MULTITASK_LABEL = "multitask"


@dataclass
class ExperimentConfig:
    """Settings of ``run_experiment`` (a JSON file for ``training/loto.py``).

    Attributes:
        pool: the task pool folder (docs/task_pools.md).
        build_pool_from: a shared-data folder to build the pool from when ``pool`` is absent.
        output_dir: where everything is written (see the module docstring).
        left_out_sets: disjoint sets of related tasks; default: the shared pool's sets when the
            pool has exactly its tasks, else one set per task.
        pretrain: TrainConfig fields shared by every pre-training (backbone, weights,
            image_size, iterations, ...; ``pool``, ``exclude_tasks``, ``seed`` and
            ``output_dir`` are set per run).
        hyperparams: the grid: TrainConfig fields that differ between the compared sets.
        seeds: pre-training seeds (each also seeds its SVM cross-validation); the baselines
            use the same seeds (random init: its weights; ImageNet: only the SVM folds).
        exclude_whole_set: select a task's hyper-parameters without any task of its left-out
            set (stricter than the paper, which excludes only the task itself).
        train_splits: pool splits the transfer trains on (the SVM's grouped CV picks C on them).
        val_split: pool split that makes the choices: hyper-parameters are ranked by SVMs
            trained on ``train_splits`` and scored on it; fine-tuning picks its learning rate
            and epoch on it. The final feature-extraction models are refit on
            ``train_splits`` + ``val_split``. None (or a task without it): a grouped hold-out
            of 20% of the training images plays its part.
        test_split: pool split of the final comparison, read once per final model.
        image_size: input size of transfer (default: the pre-training image size).
        batch_size, num_workers, device: feature extraction settings (default: automatic).
        probe: ``transfer.probes.Probe`` parameters (default: the paper's linear SVM protocol).
        baselines: weights compared with the multi-task models: ``{"label", "weights"}`` each,
            and ``"modes"`` (default both): ``["fe"]`` feature extraction, ``["ft"]``
            fine-tuning. Default: ImageNet in both; training from scratch (random
            initialisation, the paper's baseline) in fine-tuning only: random-init *features*
            are degenerate (see docs/transfer.md) and the paper has no such baseline.
        finetune_tasks: tasks also compared by fine-tuning.
        finetune_seeds: seeds of fine-tuning (default: ``seeds``).
        finetune: ``transfer.finetune.FineTuner`` parameters (image_size defaults to ``image_size``).
        learning_curve: None, or ``{"fractions": [...], "seeds": [...], "min_per_class": 2}``:
            the feature-extraction comparison again at these fractions of each task's
            training images (class-stratified subsets drawn per seed, the same for every
            method; seeds default to ``seeds``, must be among them: seed s uses the models
            of seed s).
    """

    pool: str
    build_pool_from: str | None = None
    output_dir: str = "runs/loto"
    left_out_sets: list[list[str]] | None = None
    pretrain: dict = field(default_factory=dict)
    hyperparams: list[dict] = field(default_factory=lambda: [{}])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    exclude_whole_set: bool = False
    train_splits: list[str] = field(default_factory=lambda: ["train"])
    val_split: str | None = "val"
    test_split: str = "test"
    image_size: int | None = None
    batch_size: int | None = None
    num_workers: int | None = None
    device: str = "auto"
    probe: dict = field(default_factory=dict)
    baselines: list[dict] = field(
        default_factory=lambda: [
            {"label": "imagenet", "weights": "imagenet"},
            {"label": "scratch", "weights": "random", "modes": ["ft"]},
        ]
    )
    finetune_tasks: list[str] = field(default_factory=list)
    finetune_seeds: list[int] | None = None
    finetune: dict = field(default_factory=dict)
    learning_curve: dict | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "the experiment config") -> ExperimentConfig:
        """Build from a mapping (keys starting with ``_`` are comments); unknown keys are errors."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if not k.startswith("_")}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigurationError(f"Unknown key(s) {unknown} in {where}: valid keys are {', '.join(sorted(known))}.")
        if not values.get("pool"):
            raise ConfigurationError(f"No 'pool' in {where}: give the task pool folder (e.g. \"pools/shared\").")
        config = cls(**values)
        config.validate()
        return config

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> ExperimentConfig:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigurationError(f"Experiment config {path} does not exist: give an existing JSON file.") from None
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"Experiment config {path} is not valid JSON ({exc}): fix the file.") from None
        if not isinstance(data, dict):
            raise ConfigurationError(f"Experiment config {path} must hold a JSON object, not {type(data).__name__}.")
        return cls.from_dict(data, where=str(path))

    def validate(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigurationError(f"seeds {self.seeds} must be a non-empty list without repeats, e.g. [0, 1, 2].")
        if not self.hyperparams:
            raise ConfigurationError(
                "hyperparams is empty: give at least one set, e.g. [{}] for the pretrain settings alone."
            )
        from mtdp_core.training.config import TrainConfig

        train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
        per_run = {"pool", "exclude_tasks", "seed", "output_dir", "tasks"}
        for where, mapping in [("pretrain", self.pretrain)] + [
            (f"hyperparams[{i}]", h) for i, h in enumerate(self.hyperparams)
        ]:
            bad = sorted(set(mapping) - train_fields)
            if bad:
                raise ConfigurationError(
                    f"Unknown training option(s) {bad} in {where}: see `python training/train_multitask.py --help`."
                )
            fixed = sorted(set(mapping) & per_run)
            if fixed:
                raise ConfigurationError(f"{where} sets {fixed}: the experiment sets these per run; remove them.")
        for i, b in enumerate(self.baselines):
            if not isinstance(b, dict) or not {"label", "weights"} <= set(b) <= {"label", "weights", "modes"}:
                raise ConfigurationError(
                    f'baselines[{i}] = {b!r}: give {{"label": ..., "weights": ...}}, optionally "modes": ["fe", "ft"].'
                )
            if b["label"] == MULTITASK_LABEL:
                raise ConfigurationError(
                    f"baselines[{i}] uses the label {MULTITASK_LABEL!r}, reserved for the multi-task models."
                )
            modes = b.get("modes", list(MODES))
            if not isinstance(modes, list) or not modes or set(modes) - set(MODES):
                raise ConfigurationError(
                    f"baselines[{i}] has modes {modes!r}: give a non-empty list among {list(MODES)}."
                )
        if self.val_split is not None and self.val_split in (*self.train_splits, self.test_split):
            raise ConfigurationError(
                f"val_split {self.val_split!r} is also a training or the test split: choices must be made on a "
                'split of their own (e.g. train_splits ["train"], val_split "val", test_split "test").'
            )
        if self.test_split in self.train_splits:
            raise ConfigurationError(f"test_split {self.test_split!r} is also in train_splits {self.train_splits}.")
        if self.learning_curve is not None:
            self._validate_curve()

    def _validate_curve(self) -> None:
        curve = self.learning_curve
        known = {"fractions", "seeds", "min_per_class"}
        if (
            not isinstance(curve, dict)
            or {k for k in curve if not k.startswith("_")} - known
            or "fractions" not in curve
        ):
            raise ConfigurationError(
                f'learning_curve = {curve!r}: give {{"fractions": [0.05, 0.25, 1.0]}} and optionally "seeds", '
                '"min_per_class".'
            )
        fractions = curve["fractions"]
        if (
            not isinstance(fractions, list)
            or not fractions
            or not all(isinstance(f, (int, float)) and 0 < f <= 1 for f in fractions)
        ):
            raise ConfigurationError(f"learning_curve fractions {fractions!r}: give values in (0, 1], e.g. [0.1, 1.0].")
        extra = sorted(set(curve.get("seeds") or []) - set(self.seeds))
        if extra:
            raise ConfigurationError(
                f"learning_curve seeds {extra} were not pre-trained: use seeds from {self.seeds} (seed s uses the "
                "models of seed s)."
            )
        per_class = curve.get("min_per_class", 2)
        if not isinstance(per_class, int) or per_class < 1:
            raise ConfigurationError(f"learning_curve min_per_class {per_class!r}: use an integer >= 1.")

    def baselines_for(self, mode: str) -> list[dict]:
        """The baselines compared in ``mode`` (``"fe"`` or ``"ft"``)."""
        return [b for b in self.baselines if mode in b.get("modes", MODES)]

    @property
    def backbone(self) -> str:
        return str(self.pretrain.get("backbone", "resnet50"))

    @property
    def transfer_image_size(self) -> int:
        return int(self.image_size or self.pretrain.get("image_size", 224))


# --------------------------------------------------------------------------- pool -> tasks


def task_data_from_pool(
    task: Any, train_splits: Sequence[str], test_split: str, val_split: str | None = None
) -> TaskData:
    """A pool task as a transfer target: train on ``train_splits``, make choices on
    ``val_split``, score the final models on ``test_split``.

    The training images are those of ``train_splits`` + ``val_split`` in the pool's order,
    ``val_mask`` marking the validation split. Labels are class names; groups (patient,
    slide or image) go to the grouped CV.
    """
    train = task.samples([*train_splits, *([val_split] if val_split else [])])
    test = task.samples(test_split)
    names = np.asarray(train.classes)
    return TaskData(
        task.name,
        [str(p) for p in train.paths],
        names[train.labels].tolist(),
        [str(p) for p in test.paths],
        np.asarray(test.classes)[test.labels].tolist(),
        train.groups,
        (np.asarray(train.splits) == val_split) if val_split else None,
    )


def default_left_out_sets(task_names: Sequence[str]) -> list[list[str]]:
    """The shared pool's sets when the pool has exactly its tasks, else one set per task."""
    shared = {t for s in SHARED_POOL_LEFT_OUT_SETS for t in s}
    if set(task_names) == shared:
        return [list(s) for s in SHARED_POOL_LEFT_OUT_SETS]
    return [[t] for t in task_names]


def _open_pool(config: ExperimentConfig):
    from mtdp_core.data.pools import load_pool
    from mtdp_core.data.sources import build_shared_pool, pool_needs_building

    path = Path(config.pool)
    if pool_needs_building(path):
        if not config.build_pool_from:
            raise DataError(f"Task pool {path} does not exist: build it (`mtdp pool build`) or set build_pool_from.")

        logger.info("building the task pool %s from %s", path, config.build_pool_from)
        build_shared_pool(config.build_pool_from, path)
    return load_pool(path)


# --------------------------------------------------------------------------- pre-training


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=+-]+", "_", text).strip("_") or "default"


def multitask_pretrainer(pool: str | os.PathLike, base: Mapping[str, Any], runs_dir: str | os.PathLike) -> PretrainFn:
    """A ``PretrainFn`` that trains with ``mtdp_core.training.train`` on the pool minus the left-out set.

    Run folders: ``runs_dir/without_<tasks>/<hyper-parameters>/seed<s>``. A run whose
    ``backbone.pt`` and ``summary.json`` exist is reused (the experiment resumes); an
    interrupted run resumes from its last checkpoint.
    """
    from mtdp_core.training import TrainConfig, train

    runs = Path(runs_dir)

    def pretrain(left_out: tuple[str, ...], hyperparams: dict, seed: int) -> Path:
        out = runs / _slug("without_" + "+".join(left_out)) / _slug(hyperparams_label(hyperparams)) / f"seed{seed}"
        config = TrainConfig.from_dict(
            {
                **base,
                **hyperparams,
                "pool": os.fspath(pool),
                "exclude_tasks": list(left_out),
                "seed": int(seed),
                "output_dir": os.fspath(out),
                "stop_after": None,
            }
        )
        backbone, summary = out / "backbone.pt", out / "summary.json"
        if backbone.is_file() and summary.is_file():
            _check_same_run(out, config)
            logger.info("reusing the completed pre-training %s", out)
            return backbone
        start = time.perf_counter()
        result = train(config)
        if not result.completed or result.backbone_path is None:
            raise ConfigurationError(
                f"Pre-training in {out} stopped at iteration {result.iteration}: run the experiment again to resume it."
            )
        logger.info(
            "pre-trained without %s (%s, seed %d) in %.0f s",
            list(left_out),
            hyperparams_label(hyperparams),
            seed,
            time.perf_counter() - start,
        )
        return Path(result.backbone_path)

    return pretrain


#: TrainConfig fields that do not change the trained model (a completed run is reused across them).
_RUNTIME_FIELDS = frozenset(
    {
        "device",
        "num_workers",
        "prefetch_factor",
        "progress",
        "log_every",
        "val_every",
        "val_max_samples",
        "val_batch_size",
        "checkpoint_every",
        "stop_after",
        "resume",
    }
)


def _check_same_run(out: Path, config: Any) -> None:
    """A completed run is only reused when it was trained with the same settings."""
    try:
        saved = json.loads((out / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise ConfigurationError(
            f"Completed pre-training {out} has no readable config.json: delete the folder to train it again."
        ) from None
    wanted = config.to_dict()
    diff = sorted(k for k in set(wanted) | set(saved) if k not in _RUNTIME_FIELDS and saved.get(k) != wanted.get(k))
    if diff:
        raise ConfigurationError(
            f"Pre-training {out} was completed with other settings "
            f"({', '.join(f'{k}: {saved.get(k)!r} != {wanted.get(k)!r}' for k in diff[:3])}): "
            "delete it or use another output_dir."
        )


# --------------------------------------------------------------------------- finished evaluations


class EvaluationJournal:
    """Finished evaluations, appended to a JSONL file as each one ends, so that running the
    experiment again (after an interruption, or with other fine-tuning settings) redoes only
    what is missing or changed.

    An evaluation is keyed by everything its result depends on: the task (name and sizes),
    the mode, architecture, weights (a file's path, size and modification time), seed, input
    size and the probe's or fine-tuner's parameters. Its label is not part of the key.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.done: dict[str, dict] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                    self.done[entry["key"]] = entry["record"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut short by an interruption: that evaluation runs again
        self.reused = 0

    @staticmethod
    def key(
        task: TaskData,
        spec: BackboneSpec,
        mode: str,
        settings: Mapping[str, Any],
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """The evaluation's identity as JSON. ``extra`` adds what only some evaluations depend
        on (the validation split); without it the key has the form journals have always had,
        so test-set evaluations recorded before validation splits existed are still found."""
        weights: Any = spec.weights
        path = Path(spec.weights)
        if path.is_file():
            stat = path.stat()
            weights = [os.fspath(path.resolve()), stat.st_size, stat.st_mtime_ns]
        return json.dumps(
            {
                "task": task.name,
                "n": [len(task.train_inputs), len(task.test_inputs)],
                "mode": mode,
                "arch": spec.arch,
                "weights": weights,
                "sha256": spec.sha256,
                "seed": spec.seed,
                "settings": settings,
                **(extra or {}),
            },
            sort_keys=True,
            default=_jsonable,
        )

    def run(self, key: str, label: str, compute: Any) -> dict:
        if key in self.done:
            self.reused += 1
            return dict(self.done[key], method=label)
        record = compute()
        self.done[key] = record
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"key": key, "record": record}, default=_jsonable) + "\n")
        return dict(record)

    @staticmethod
    def _validation(task: TaskData) -> dict:
        # What the choices were made on: the task's validation split (its size; the pool's
        # seeded split fixes which images) or a seeded hold-out of the training images.
        n_val = int(np.asarray(task.val_mask).sum()) if task.has_validation else None
        return {"validation": "val split" if n_val else "holdout", "n_val": n_val}

    def feature_extraction(self, probe: Any, common: Mapping[str, Any]):
        """``evaluate_feature_extraction`` through the journal (the ``evaluate`` of ``run_loto``)."""
        settings = {"image_size": common["image_size"], "probe": probe.get_params()}

        def evaluate(task: TaskData, spec: BackboneSpec, *, split: str = "test", **kwargs: Any) -> dict:
            extra = {"scored_on": split, **self._validation(task)} if split != "test" else None
            return self.run(
                self.key(task, spec, "fe", settings, extra),
                spec.label,
                lambda: evaluate_feature_extraction(task, spec, split=split, **kwargs),
            )

        return evaluate

    def fine_tuning(self, finetuner: Any):
        settings = {
            k: v
            for k, v in finetuner.get_params().items()
            if k not in ("backbone", "weights", "seed", "sha256", "progress", "on_epoch", "num_workers", "device")
        }

        def evaluate(task: TaskData, spec: BackboneSpec) -> dict:
            return self.run(
                self.key(task, spec, "ft", settings, self._validation(task)),
                spec.label,
                lambda: evaluate_fine_tuning(task, spec, finetuner=finetuner),
            )

        return evaluate

    def learning_curve(self, probe: Any, common: Mapping[str, Any], min_per_class: int):
        """``evaluate_learning_curve`` through the journal: one entry per (task, backbone, seed, fractions)."""

        def evaluate(task: TaskData, spec: BackboneSpec, *, fractions: Sequence[float]) -> list[dict]:
            settings = {
                "image_size": common["image_size"],
                "probe": probe.get_params(),
                "fractions": sorted(float(f) for f in fractions),
                "min_per_class": min_per_class,
            }
            entry = self.run(
                self.key(task, spec, "curve", settings),
                spec.label,
                lambda: {
                    "rows": evaluate_learning_curve(
                        task, spec, fractions=fractions, probe=probe, min_per_class=min_per_class, **common
                    )
                },
            )
            return [dict(r, method=spec.label) for r in entry["rows"]]

        return evaluate


# --------------------------------------------------------------------------- the experiment


@dataclass
class ExperimentResult:
    """What ``run_experiment`` measured.

    Attributes:
        loto: the leave-one-task-out result (validation scores of every hyper-parameter set,
            selections).
        fe: feature-extraction test scores: ``"multitask fe"`` (the selected sets) and the baselines.
        ft: fine-tuning test scores (None without ``finetune_tasks``).
        records: every evaluation (stages ``loto``, ``comparison``, ``curve``), as written to
            records.jsonl.
        paths: the files written.
        curves: learning-curve records (empty without ``learning_curve``).
    """

    loto: LotoResult
    fe: ScoreTable
    ft: ScoreTable | None
    records: list[dict]
    paths: dict[str, Path]
    curves: list[dict] = field(default_factory=list)


def run_experiment(config: ExperimentConfig | Mapping[str, Any]) -> ExperimentResult:
    """Run the whole leave-one-task-out experiment; see the module docstring."""
    if not isinstance(config, ExperimentConfig):
        config = ExperimentConfig.from_dict(config)
    config.validate()
    start = time.perf_counter()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "experiment.json").write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
    pool = _open_pool(config)
    sets = config.left_out_sets or default_left_out_sets(pool.names)
    known = set(pool.names)
    for t in config.finetune_tasks:
        if t not in known:
            raise ConfigurationError(
                f"Unknown task {t!r} in finetune_tasks: the pool's tasks are {', '.join(pool.names)}."
            )
    tasks = {
        name: task_data_from_pool(pool[name], config.train_splits, config.test_split, config.val_split)
        for name in pool.names
    }

    from mtdp_core.transfer.probes import Probe

    probe = Probe(**config.probe)
    size, arch = config.transfer_image_size, config.backbone
    common = dict(
        image_size=size,
        batch_size=config.batch_size,
        num_workers=config.num_workers,
        device=config.device,
        cache_dir=out / "features",
    )
    pretrain = multitask_pretrainer(pool.path or config.pool, config.pretrain, out / "pretrain")
    journal = EvaluationJournal(out / "evaluations.jsonl")
    evaluate_fe = journal.feature_extraction(probe, common)
    # Selection: validation scores only (run_loto asks for split="val").
    loto = run_loto(
        tasks,
        sets,
        config.hyperparams,
        config.seeds,
        pretrain,
        arch=arch,
        probe=probe,
        exclude_whole_set=config.exclude_whole_set,
        evaluate=evaluate_fe,
        **common,
    )
    paths = _write_loto(loto, out / "loto")

    # The final comparison, on the test sets, once per final model: the selected multi-task
    # models (refit on train + val) and the baselines.
    order = [t for s in loto.left_out_sets for t in s]
    chosen = _selected_models(loto)
    records: list[dict] = []
    for task in order:
        for seed in config.seeds:
            spec = BackboneSpec(MULTITASK_LABEL, arch, chosen[(task, seed)], seed=seed)
            rec = evaluate_fe(tasks[task], spec, split="test", probe=probe, **common)
            records.append(
                dict(
                    rec,
                    method=method_name(MULTITASK_LABEL, "fe"),
                    hyperparams=loto.selections[task],
                    weights=spec.weights,
                )
            )
        for b in config.baselines_for("fe"):
            for seed in config.seeds:
                spec = BackboneSpec(b["label"], arch, b["weights"], seed=seed)
                rec = evaluate_fe(tasks[task], spec, split="test", probe=probe, **common)
                records.append(dict(rec, method=method_name(b["label"], "fe")))
    if config.finetune_tasks:
        records += _fine_tune(config, tasks, loto, chosen, arch, size, journal)
    curves = _learning_curves(config, tasks, loto, chosen, arch, records, common, journal)
    fe, ft = _write_comparisons(out, config, order, records, paths)
    if curves:
        paths.update(_write_curves(out, config, curves))

    all_records = (
        [dict(r, stage="loto") for r in loto.records]
        + [dict(r, stage="comparison") for r in records]
        + [dict(r, stage="curve") for r in curves]
    )
    with open(out / "records.jsonl", "w") as fh:
        fh.writelines(json.dumps(r, default=_jsonable) + "\n" for r in all_records)
    paths["records"] = out / "records.jsonl"
    seconds = time.perf_counter() - start
    if journal.reused:
        logger.info("%d evaluations reused from %s", journal.reused, journal.path)
    (out / "summary.json").write_text(
        json.dumps(
            {"wall_seconds": round(seconds, 1), "evaluations_reused": journal.reused, "selections": loto.selections},
            indent=2,
        )
        + "\n"
    )
    paths["summary"] = out / "summary.json"
    paths["results"] = _write_results(out / "results.md", config, loto, fe, ft, curves, seconds)
    logger.info("experiment done in %.0f s: %s", time.perf_counter() - start, paths["results"])
    return ExperimentResult(loto, fe, ft, all_records, paths, curves)


def _selected_models(loto: LotoResult) -> dict[tuple[str, int], str]:
    """{(task, seed): weights of the model pre-trained without the task's set with its selected hyper-parameters}."""
    return {(r["task"], r["seed"]): r["weights"] for r in loto.records if r["method"] == loto.selections[r["task"]]}


def _baseline_note(config: ExperimentConfig, mode: str) -> list[str]:
    """Where a baseline's spread comes from, when its weights do not depend on the seed."""
    if mode != "fe":
        return []
    return [
        f"{method_name(b['label'], 'fe')}: the same {b['weights']} features for every seed; its spread comes only "
        "from the seeds of the SVM's cross-validation folds (which C is chosen)."
        for b in config.baselines_for("fe")
        if b["weights"] != "random"
    ]


def _write_comparisons(
    out: Path, config: ExperimentConfig, order: Sequence[str], records: Sequence[dict], paths: dict[str, Path]
) -> tuple[ScoreTable, ScoreTable | None]:
    """The final comparison tables (feature extraction; fine-tuning when there are such records)
    and their reports; adds the files written to ``paths``."""
    tables: dict[str, ScoreTable] = {}
    for mode, title in (("fe", "Feature extraction + linear SVM"), ("ft", "Fine-tuning")):
        rows = [r for r in records if r["mode"] == mode]
        if not rows:
            continue
        methods = [method_name(MULTITASK_LABEL, mode)] + [
            method_name(b["label"], mode) for b in config.baselines_for(mode)
        ]
        tasks = [t for t in order if any(r["task"] == t for r in rows)]
        tables[mode] = ScoreTable.from_records(rows, methods=methods, tasks=tasks)
        report = write_report(
            tables[mode],
            out / f"comparison_{mode}",
            reference=methods[0],
            title=f"{title} (test sets)",
            notes=_baseline_note(config, mode),
        )
        paths.update({f"{mode}:{k}": v for k, v in report.items()})
    return tables["fe"], tables.get("ft")


def _write_curves(out: Path, config: ExperimentConfig, curves: Sequence[dict]) -> dict[str, Path]:
    reference = method_name(MULTITASK_LABEL, "fe")
    report = write_learning_curve_report(
        curves,
        out / "learning_curves",
        reference=reference,
        title="Learning curves: feature extraction + linear SVM, test sets",
    )
    return {f"curve:{k}": v for k, v in report.items()}


def report_experiment(output_dir: str | os.PathLike) -> ExperimentResult:
    """Write the reports of a finished experiment again from its records.jsonl and experiment.json
    (e.g. after a change of the report format), without training or evaluating anything."""
    out = Path(output_dir)
    try:
        config = ExperimentConfig.from_dict(
            json.loads((out / "experiment.json").read_text()), where=str(out / "experiment.json")
        )
        records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines() if line.strip()]
    except FileNotFoundError as exc:
        raise ConfigurationError(
            f"{exc.filename} is missing: {out} is not a finished experiment (run training/loto.py first)."
        ) from None
    loto_records = [r for r in records if r.get("stage") == "loto"]
    sets = [tuple(s) for s in dict.fromkeys(tuple(r["left_out"]) for r in loto_records)]
    labels = [hyperparams_label(h) for h in config.hyperparams]
    order = [t for s in sets for t in s]
    table = ScoreTable.from_records(loto_records, methods=labels, tasks=order)
    set_of = {t: s for s in sets for t in s}
    selections = {
        t: select_method(table, t, exclude=list(set_of[t]) if config.exclude_whole_set else [t]) for t in order
    }
    loto = LotoResult(
        table, sets, selections, dict(zip(labels, config.hyperparams)), loto_records, config.exclude_whole_set
    )
    paths = _write_loto(loto, out / "loto")
    fe, ft = _write_comparisons(out, config, order, [r for r in records if r.get("stage") == "comparison"], paths)
    curves = [r for r in records if r.get("stage") == "curve"]
    if curves:
        paths.update(_write_curves(out, config, curves))
    try:
        seconds = float(json.loads((out / "summary.json").read_text())["wall_seconds"])
    except (OSError, KeyError, ValueError):
        seconds = None
    paths["records"] = out / "records.jsonl"
    paths["results"] = _write_results(out / "results.md", config, loto, fe, ft, curves, seconds)
    return ExperimentResult(loto, fe, ft, records, paths, curves)


def _fine_tune(
    config: ExperimentConfig,
    tasks: Mapping[str, TaskData],
    loto: LotoResult,
    chosen: Mapping[tuple[str, int], str],
    arch: str,
    size: int,
    journal: EvaluationJournal,
) -> list[dict]:
    from mtdp_core.transfer.finetune import FineTuner

    params = {"image_size": size, "device": config.device, **config.finetune}
    template = FineTuner(arch, **params)
    evaluate = journal.fine_tuning(template)
    records = []
    for task in [t for s in loto.left_out_sets for t in s if t in config.finetune_tasks]:
        for seed in config.finetune_seeds or config.seeds:
            if (task, seed) not in chosen:
                raise ConfigurationError(
                    f"finetune_seeds has seed {seed}, which was not pre-trained: use seeds from {config.seeds}."
                )
            specs = [BackboneSpec(MULTITASK_LABEL, arch, chosen[(task, seed)], seed=seed)]
            specs += [BackboneSpec(b["label"], arch, b["weights"], seed=seed) for b in config.baselines_for("ft")]
            for spec in specs:
                logger.info("fine-tuning %s on %s (seed %d)", spec.label, task, seed)
                rec = evaluate(tasks[task], spec)
                rec["method"] = method_name(spec.label, "ft")
                records.append(rec)
    return records


def _learning_curves(
    config: ExperimentConfig,
    tasks: Mapping[str, TaskData],
    loto: LotoResult,
    chosen: Mapping[tuple[str, int], str],
    arch: str,
    comparison: Sequence[dict],
    common: Mapping[str, Any],
    journal: EvaluationJournal,
) -> list[dict]:
    """Feature-extraction learning curves of the selected multi-task models and the fe baselines:
    for seed s, the models of seed s on the subsets of seed s (the same for every method). The
    point at fraction 1 is the final comparison's record (the same computation)."""
    if not config.learning_curve:
        return []
    from mtdp_core.transfer.probes import Probe

    curve = config.learning_curve
    probe = Probe(**config.probe)
    min_per_class = int(curve.get("min_per_class", 2))
    evaluate = journal.learning_curve(probe, common, min_per_class)
    final = {(r["method"], r["task"], r["seed"]): r for r in comparison if r["mode"] == "fe"}
    rows: list[dict] = []
    for task in [t for s in loto.left_out_sets for t in s]:
        for seed in curve.get("seeds") or config.seeds:
            specs = [BackboneSpec(MULTITASK_LABEL, arch, chosen[(task, seed)], seed=seed)]
            specs += [BackboneSpec(b["label"], arch, b["weights"], seed=seed) for b in config.baselines_for("fe")]
            for spec in specs:
                logger.info("learning curve of %s on %s (seed %d)", spec.label, task, seed)
                rows += learning_curve_with_final(
                    tasks[task],
                    spec,
                    curve["fractions"],
                    final[(method_name(spec.label, "fe"), task, seed)],
                    evaluate=evaluate,
                )
    return rows


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (Path, os.PathLike)):
        return os.fspath(value)
    return str(value)


def _write_loto(loto: LotoResult, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "loto:scores": loto.table.to_csv(out / "scores.csv"),
        "loto:summary": write_csv(summary_rows(loto.table), out / "summary.csv"),
        "loto:selection": write_csv(loto.selection_rows(), out / "selection.csv"),
    }
    (out / "selection.md").write_text(_loto_markdown(loto) + "\n")
    paths["loto:markdown"] = out / "selection.md"
    return paths


def _loto_markdown(loto: LotoResult) -> str:
    """Mean ± std of every hyper-parameter set's validation score per task, ranks, and the selection per task."""
    table = loto.table
    means, stds = table.mean(), table.std(ddof=DDOF)
    try:
        ranks = rank_matrix(table)
    except ConfigurationError:
        ranks = None
    lines = [
        "| hyper-parameters | " + " | ".join(table.tasks) + " | average rank |",
        "|---|" + "---:|" * (len(table.tasks) + 1),
    ]
    for i, m in enumerate(table.methods):
        cells = []
        for j, t in enumerate(table.tasks):
            rank = f" (rank {ranks[i, j]:g})" if ranks is not None else ""
            cells.append(f"{100 * means[i, j]:.1f} ± {100 * stds[i, j]:.1f}{rank}")
        avg = f"{ranks[i].mean():.2f}" if ranks is not None else "–"
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {avg} |")
    elsewhere = "the tasks outside its left-out set" if loto.exclude_whole_set else "the other tasks"
    lines += [
        "",
        f"| task | left-out set | selected (average rank over {elsewhere}) | its validation score |",
        "|---|---|---|---:|",
    ]
    set_of = {t: s for s in loto.left_out_sets for t in s}
    for row in loto.selection_rows():
        lines.append(
            f"| {row['task']} | {' + '.join(set_of[row['task']])} | {row['selected']} "
            f"({row['average_rank_elsewhere']:.2f}) | {100 * row['val_score_mean']:.1f} ± "
            f"{100 * row['val_score_std']:.1f} |"
        )
    return "\n".join(lines)


def _write_results(
    path: Path,
    config: ExperimentConfig,
    loto: LotoResult,
    fe: ScoreTable,
    ft: ScoreTable | None,
    curves: Sequence[dict],
    seconds: float | None,
) -> Path:
    fe_ref = method_name(MULTITASK_LABEL, "fe")
    timing = f"wall time {seconds / 60:.1f} min" if seconds is not None else "wall time not recorded"
    val = config.val_split or "a grouped 20% hold-out of the training images"
    parts = [
        "# Leave-one-task-out experiment",
        "",
        f"Backbone `{config.backbone}`, {config.transfer_image_size} px; seeds {config.seeds}; "
        f"left-out sets {[' + '.join(s) for s in loto.left_out_sets]}; {timing}. "
        "Scores are percentages (ROC AUC for binary tasks, accuracy otherwise), mean ± σ over the seeds "
        f"(σ: sample standard deviation, ddof={DDOF}); "
        "▲/▼: the multi-task model is significantly better/worse (|Δ| > 2 × the larger σ), =: not significant, "
        "·: one run each (untested).",
        "",
        f"Splits: hyper-parameters are ranked on `{val}` (SVMs trained on {config.train_splits}); the test split "
        f"`{config.test_split}` is read only by the final comparison (SVMs refit on train + val; fine-tuning "
        "stopped on val).",
        "",
        "## Hyper-parameter selection (feature extraction + linear SVM, validation scores)",
        "",
        _loto_markdown(loto),
        "",
        "## Feature extraction + linear SVM (test sets)",
        "",
        markdown_comparison(fe, fe_ref, [m for m in fe.methods if m != fe_ref], notes=_baseline_note(config, "fe")),
    ]
    if ft is not None:
        ft_ref = method_name(MULTITASK_LABEL, "ft")
        parts += [
            "",
            "## Fine-tuning (test sets; learning rate and epoch chosen on the validation split)",
            "",
            markdown_comparison(ft, ft_ref, [m for m in ft.methods if m != ft_ref]),
        ]
    if curves:
        baselines = [m for m in dict.fromkeys(r["method"] for r in curves) if m != fe_ref]
        parts += [
            "",
            "## Learning curves (feature extraction + linear SVM, test sets)",
            "",
            markdown_learning_curves(curves, fe_ref, baselines),
        ]
    path.write_text("\n".join(parts) + "\n")
    return path
