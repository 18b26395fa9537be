"""The leave-one-task-out experiment on a task pool, end to end (paper Sections IV-D/E).

``run_experiment(config)`` plugs the multi-task trainer (``mtdp_core.training.train``) into
``protocol.run_loto`` and adds the final comparison:

1. for each left-out set L, each multi-task hyper-parameter set h and each seed s, pre-train
   on the pool minus L (``multitask_pretrainer``; runs that completed earlier are reused, so
   an interrupted experiment resumes where it stopped);
2. transfer each of those models by feature extraction + the linear SVM protocol to each
   task of L; rank the hyper-parameter sets per task and select, for each task, the set with
   the best average rank over the *other* tasks (Eq. 2);
3. compare, per task, the selected multi-task models (one per seed, pre-trained without the
   task's left-out set) with the baselines (ImageNet, random initialisation) by feature
   extraction, and by fine-tuning on the tasks listed in ``finetune_tasks``.

Outputs under ``output_dir``: ``pretrain/`` (one training run per (set, h, seed)),
``features/`` (the feature cache), ``loto/`` (scores, rank summary, selection),
``comparison_fe/`` and ``comparison_ft/`` (``reports.write_report``: CSV, Markdown, plots),
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
    SHARED_POOL_LEFT_OUT_SETS,
    BackboneSpec,
    LotoResult,
    PretrainFn,
    TaskData,
    evaluate_feature_extraction,
    evaluate_fine_tuning,
    hyperparams_label,
    method_name,
    run_loto,
)
from mtdp_core.evaluation.ranking import ScoreTable, rank_matrix, select_method
from mtdp_core.evaluation.reports import markdown_comparison, summary_rows, write_csv, write_report

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
            use the same seeds (random init: its weights; ImageNet: the SVM folds).
        exclude_whole_set: select a task's hyper-parameters without any task of its left-out
            set (stricter than the paper, which excludes only the task itself).
        train_splits: pool splits the transfer trains on (the SVM's grouped CV picks C on them).
        test_split: pool split the transfer is scored on.
        image_size: input size of transfer (default: the pre-training image size).
        batch_size, num_workers, device: feature extraction settings (default: automatic).
        probe: ``transfer.probes.Probe`` parameters (default: the paper's linear SVM protocol).
        baselines: weights compared with the multi-task models: ``{"label", "weights"}`` each.
        finetune_tasks: tasks also compared by fine-tuning.
        finetune_seeds: seeds of fine-tuning (default: ``seeds``).
        finetune: ``transfer.finetune.FineTuner`` parameters (image_size defaults to ``image_size``).
    """

    pool: str
    build_pool_from: str | None = None
    output_dir: str = "runs/loto"
    left_out_sets: list[list[str]] | None = None
    pretrain: dict = field(default_factory=dict)
    hyperparams: list[dict] = field(default_factory=lambda: [{}])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    exclude_whole_set: bool = False
    train_splits: list[str] = field(default_factory=lambda: ["train", "val"])
    test_split: str = "test"
    image_size: int | None = None
    batch_size: int | None = None
    num_workers: int | None = None
    device: str = "auto"
    probe: dict = field(default_factory=dict)
    baselines: list[dict] = field(
        default_factory=lambda: [{"label": "imagenet", "weights": "imagenet"}, {"label": "random", "weights": "random"}]
    )
    finetune_tasks: list[str] = field(default_factory=list)
    finetune_seeds: list[int] | None = None
    finetune: dict = field(default_factory=dict)

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
            if not isinstance(b, dict) or set(b) != {"label", "weights"}:
                raise ConfigurationError(f'baselines[{i}] = {b!r}: give {{"label": ..., "weights": ...}}.')
            if b["label"] == MULTITASK_LABEL:
                raise ConfigurationError(
                    f"baselines[{i}] uses the label {MULTITASK_LABEL!r}, reserved for the multi-task models."
                )

    @property
    def backbone(self) -> str:
        return str(self.pretrain.get("backbone", "resnet50"))

    @property
    def transfer_image_size(self) -> int:
        return int(self.image_size or self.pretrain.get("image_size", 224))


# --------------------------------------------------------------------------- pool -> tasks


def task_data_from_pool(task: Any, train_splits: Sequence[str], test_split: str) -> TaskData:
    """A pool task as a transfer target: train on ``train_splits``, score on ``test_split``.

    Labels are class names; groups (patient, slide or image) go to the grouped CV.
    """
    train = task.samples(list(train_splits))
    test = task.samples(test_split)
    names = np.asarray(train.classes)
    return TaskData(
        task.name,
        [str(p) for p in train.paths],
        names[train.labels].tolist(),
        [str(p) for p in test.paths],
        np.asarray(test.classes)[test.labels].tolist(),
        train.groups,
    )


def default_left_out_sets(task_names: Sequence[str]) -> list[list[str]]:
    """The shared pool's sets when the pool has exactly its tasks, else one set per task."""
    shared = {t for s in SHARED_POOL_LEFT_OUT_SETS for t in s}
    if set(task_names) == shared:
        return [list(s) for s in SHARED_POOL_LEFT_OUT_SETS]
    return [[t] for t in task_names]


def _open_pool(config: ExperimentConfig):
    from mtdp_core.data.pools import load_pool

    path = Path(config.pool)
    if not path.exists():
        if not config.build_pool_from:
            raise DataError(f"Task pool {path} does not exist: build it (`mtdp pool build`) or set build_pool_from.")
        from mtdp_core.data.sources import build_shared_pool

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
    def key(task: TaskData, spec: BackboneSpec, mode: str, settings: Mapping[str, Any]) -> str:
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

    def feature_extraction(self, probe: Any, common: Mapping[str, Any]):
        """``evaluate_feature_extraction`` through the journal (the ``evaluate`` of ``run_loto``)."""
        settings = {"image_size": common["image_size"], "probe": probe.get_params()}

        def evaluate(task: TaskData, spec: BackboneSpec, **kwargs: Any) -> dict:
            return self.run(
                self.key(task, spec, "fe", settings),
                spec.label,
                lambda: evaluate_feature_extraction(task, spec, **kwargs),
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
                self.key(task, spec, "ft", settings),
                spec.label,
                lambda: evaluate_fine_tuning(task, spec, finetuner=finetuner),
            )

        return evaluate


# --------------------------------------------------------------------------- the experiment


@dataclass
class ExperimentResult:
    """What ``run_experiment`` measured.

    Attributes:
        loto: the leave-one-task-out result (scores of every hyper-parameter set, selections).
        fe: feature-extraction scores: ``"multitask fe"`` (the selected sets) and the baselines.
        ft: fine-tuning scores (None without ``finetune_tasks``).
        records: every evaluation (LOTO and comparison), as written to records.jsonl.
        paths: the files written.
    """

    loto: LotoResult
    fe: ScoreTable
    ft: ScoreTable | None
    records: list[dict]
    paths: dict[str, Path]


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
    tasks = {name: task_data_from_pool(pool[name], config.train_splits, config.test_split) for name in pool.names}

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

    # Feature extraction: the selected multi-task models (scores already measured by LOTO) vs the baselines.
    order = [t for s in loto.left_out_sets for t in s]
    selected = {(r["task"], r["seed"]): r for r in loto.records if r["method"] == loto.selections[r["task"]]}
    records: list[dict] = []
    for task in order:
        for seed in config.seeds:
            rec = dict(
                selected[(task, seed)], method=method_name(MULTITASK_LABEL, "fe"), hyperparams=loto.selections[task]
            )
            records.append(rec)
        for b in config.baselines:
            for seed in config.seeds:
                spec = BackboneSpec(b["label"], arch, b["weights"], seed=seed)
                rec = evaluate_fe(tasks[task], spec, probe=probe, **common)
                rec["method"] = method_name(b["label"], "fe")
                records.append(rec)
    if config.finetune_tasks:
        records += _fine_tune(config, tasks, loto, selected, arch, size, journal)
    fe, ft = _write_comparisons(out, config, order, records, paths)

    all_records = [dict(r, stage="loto") for r in loto.records] + [dict(r, stage="comparison") for r in records]
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
    paths["results"] = _write_results(out / "results.md", config, loto, fe, ft, seconds)
    logger.info("experiment done in %.0f s: %s", time.perf_counter() - start, paths["results"])
    return ExperimentResult(loto, fe, ft, all_records, paths)


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
        methods = [method_name(MULTITASK_LABEL, mode)] + [method_name(b["label"], mode) for b in config.baselines]
        tasks = [t for t in order if any(r["task"] == t for r in rows)]
        tables[mode] = ScoreTable.from_records(rows, methods=methods, tasks=tasks)
        report = write_report(tables[mode], out / f"comparison_{mode}", reference=methods[0], title=title)
        paths.update({f"{mode}:{k}": v for k, v in report.items()})
    return tables["fe"], tables.get("ft")


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
    loto = LotoResult(table, sets, selections, dict(zip(labels, config.hyperparams)), loto_records)
    paths = _write_loto(loto, out / "loto")
    fe, ft = _write_comparisons(out, config, order, [r for r in records if r.get("stage") == "comparison"], paths)
    try:
        seconds = float(json.loads((out / "summary.json").read_text())["wall_seconds"])
    except (OSError, KeyError, ValueError):
        seconds = None
    paths["records"] = out / "records.jsonl"
    paths["results"] = _write_results(out / "results.md", config, loto, fe, ft, seconds)
    return ExperimentResult(loto, fe, ft, records, paths)


def _fine_tune(
    config: ExperimentConfig,
    tasks: Mapping[str, TaskData],
    loto: LotoResult,
    selected: Mapping[tuple[str, int], dict],
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
            if (task, seed) not in selected:
                raise ConfigurationError(
                    f"finetune_seeds has seed {seed}, which was not pre-trained: use seeds from {config.seeds}."
                )
            specs = [BackboneSpec(MULTITASK_LABEL, arch, selected[(task, seed)]["weights"], seed=seed)]
            specs += [BackboneSpec(b["label"], arch, b["weights"], seed=seed) for b in config.baselines]
            for spec in specs:
                logger.info("fine-tuning %s on %s (seed %d)", spec.label, task, seed)
                rec = evaluate(tasks[task], spec)
                rec["method"] = method_name(spec.label, "ft")
                records.append(rec)
    return records


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
    """Mean ± std of every hyper-parameter set per task, ranks, and the selection per task."""
    table = loto.table
    means, stds = table.mean(), table.std()
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
    lines += [
        "",
        "| task | left-out set | selected (average rank over the other tasks) | its score on the task |",
        "|---|---|---|---:|",
    ]
    set_of = {t: s for s in loto.left_out_sets for t in s}
    for row in loto.selection_rows():
        lines.append(
            f"| {row['task']} | {' + '.join(set_of[row['task']])} | {row['selected']} "
            f"({row['average_rank_elsewhere']:.2f}) | {100 * row['score_mean']:.1f} ± {100 * row['score_std']:.1f} |"
        )
    return "\n".join(lines)


def _write_results(
    path: Path, config: ExperimentConfig, loto: LotoResult, fe: ScoreTable, ft: ScoreTable | None, seconds: float | None
) -> Path:
    fe_ref = method_name(MULTITASK_LABEL, "fe")
    timing = f"wall time {seconds / 60:.1f} min" if seconds is not None else "wall time not recorded"
    parts = [
        "# Leave-one-task-out experiment",
        "",
        f"Backbone `{config.backbone}`, {config.transfer_image_size} px; seeds {config.seeds}; "
        f"left-out sets {[' + '.join(s) for s in loto.left_out_sets]}; {timing}. "
        "Scores are percentages (ROC AUC for binary tasks, accuracy otherwise), mean ± std over the seeds; "
        "▲/▼: the multi-task model is significantly better/worse (|Δ| > 2 × the larger std), =: not significant, "
        "·: one run each (untested).",
        "",
        "## Hyper-parameter selection (feature extraction + linear SVM)",
        "",
        _loto_markdown(loto),
        "",
        "## Feature extraction + linear SVM",
        "",
        markdown_comparison(fe, fe_ref, [m for m in fe.methods if m != fe_ref]),
    ]
    if ft is not None:
        ft_ref = method_name(MULTITASK_LABEL, "ft")
        parts += ["", "## Fine-tuning", "", markdown_comparison(ft, ft_ref, [m for m in ft.methods if m != ft_ref])]
    path.write_text("\n".join(parts) + "\n")
    return path
