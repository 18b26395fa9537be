"""Score tables, ranks and significance, as in the paper (Mormont et al. 2020, Sec. IV-D/E).

A *score table* holds, for each method (a backbone, a set of pre-training
hyper-parameters...) and each task, the scores of several runs (seeds). From it:

- ``rank_matrix``: for each task, the rank of each method by its mean score (1 = best,
  ties share the average of their ranks);
- ``average_rank``: Eq. 2, the mean of a method's ranks over tasks;
- ``select_method``: the method with the best average rank over the tasks *other than*
  the target (the target's own scores must not choose its method);
- ``compare``: the paper's significance rule: a difference of means is significant when
  it exceeds twice the larger of the two standard deviations.

Standard deviations are the *sample* standard deviation over runs (``DDOF = 1``) unless a
caller asks otherwise: neither the paper nor its code (which has no evaluation code) says
which one its rule used, and with 3-5 seeds the population std (ddof=0) understates the
spread by a factor sqrt((n-1)/n) (18% smaller with 3 runs, 29% with 2), which makes the rule call
more differences significant.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from mtdp_core.errors import ConfigurationError

SCORE_COLUMNS = ("method", "task", "seed", "score")

#: Delta degrees of freedom of every standard deviation in tables, reports and the 2-sigma
#: rule: 1, the sample standard deviation (see the module docstring).
DDOF = 1


@dataclass
class ScoreTable:
    """Scores of methods on tasks over runs.

    Attributes:
        methods: method names, in display order.
        tasks: task names, in display order.
        scores: float array (n_methods, n_tasks, n_runs); NaN where a run is missing.
        metrics: optional {task: metric name} (e.g. "accuracy", "roc_auc").
    """

    methods: list[str]
    tasks: list[str]
    scores: np.ndarray
    metrics: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_records(
        cls, records: Iterable[dict], *, methods: Sequence[str] | None = None, tasks: Sequence[str] | None = None
    ) -> ScoreTable:
        """Build from dicts with ``method``, ``task``, ``score`` and optionally ``seed``, ``metric``.

        Runs of a (method, task) pair are ordered by seed. Methods and tasks keep their order
        of first appearance unless given.
        """
        rows = list(records)
        for r in rows:
            missing = [k for k in ("method", "task", "score") if k not in r]
            if missing:
                raise ConfigurationError(f"Score record {r!r} lacks {missing}: each needs method, task and score.")
        methods = list(methods) if methods is not None else list(dict.fromkeys(str(r["method"]) for r in rows))
        tasks = list(tasks) if tasks is not None else list(dict.fromkeys(str(r["task"]) for r in rows))
        runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
        metrics: dict[str, str] = {}
        for i, r in enumerate(rows):
            seed = r.get("seed")
            order = float(seed) if seed not in (None, "") else float(i)
            runs.setdefault((str(r["method"]), str(r["task"])), []).append((order, float(r["score"])))
            if r.get("metric"):
                metrics[str(r["task"])] = str(r["metric"])
        n_runs = max((len(v) for v in runs.values()), default=0)
        scores = np.full((len(methods), len(tasks), max(n_runs, 1)), np.nan)
        for (m, t), values in runs.items():
            if m in methods and t in tasks:
                for j, (_, v) in enumerate(sorted(values)):
                    scores[methods.index(m), tasks.index(t), j] = v
        return cls(methods, tasks, scores, metrics)

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> ScoreTable:
        """Read a CSV with columns method, task, score (seed and metric optional)."""
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in ("method", "task", "score") if c not in (reader.fieldnames or [])]
            if missing:
                raise ConfigurationError(
                    f"Scores file {path} lacks the column(s) {missing}: it needs method, task, score (seed, metric "
                    "optional)."
                )
            rows = list(reader)
        return cls.from_records(rows)

    def records(self) -> list[dict]:
        out = []
        for i, m in enumerate(self.methods):
            for j, t in enumerate(self.tasks):
                for k in range(self.scores.shape[2]):
                    if not math.isnan(self.scores[i, j, k]):
                        out.append(
                            {
                                "method": m,
                                "task": t,
                                "seed": k,
                                "score": float(self.scores[i, j, k]),
                                "metric": self.metrics.get(t, ""),
                            }
                        )
        return out

    def to_csv(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=[*SCORE_COLUMNS, "metric"])
            writer.writeheader()
            writer.writerows(self.records())
        return path

    def method_index(self, method: str) -> int:
        try:
            return self.methods.index(method)
        except ValueError:
            raise ConfigurationError(f"Unknown method {method!r}: the table has {', '.join(self.methods)}.") from None

    def task_index(self, task: str) -> int:
        try:
            return self.tasks.index(task)
        except ValueError:
            raise ConfigurationError(f"Unknown task {task!r}: the table has {', '.join(self.tasks)}.") from None

    def runs(self, method: str, task: str) -> np.ndarray:
        """The scores of one method on one task (NaNs dropped)."""
        v = self.scores[self.method_index(method), self.task_index(task)]
        return v[~np.isnan(v)]

    def mean(self) -> np.ndarray:
        """Mean score per (method, task): (n_methods, n_tasks); NaN where no run."""
        return _nan_reduce(np.nanmean, self.scores)

    def std(self, ddof: int = DDOF) -> np.ndarray:
        """Standard deviation over runs per (method, task) (sample std by default; 0 for a single run)."""
        counts = (~np.isnan(self.scores)).sum(axis=2)
        out = _nan_reduce(lambda a, axis: np.nanstd(a, axis=axis, ddof=ddof), self.scores)
        return np.where(counts > ddof, out, 0.0)

    def subset(self, methods: Sequence[str] | None = None, tasks: Sequence[str] | None = None) -> ScoreTable:
        mi = [self.method_index(m) for m in (methods if methods is not None else self.methods)]
        ti = [self.task_index(t) for t in (tasks if tasks is not None else self.tasks)]
        return ScoreTable(
            [self.methods[i] for i in mi],
            [self.tasks[j] for j in ti],
            self.scores[np.ix_(mi, ti)],
            {t: m for t, m in self.metrics.items() if t in [self.tasks[j] for j in ti]},
        )


def _nan_reduce(fn, scores: np.ndarray) -> np.ndarray:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # empty cells stay NaN
        return fn(scores, axis=2)


def rank_matrix(table: ScoreTable) -> np.ndarray:
    """Rank of each method on each task by mean score: (n_methods, n_tasks).

    1 is the best (highest score); tied methods share the average of the ranks they span
    (two methods tied for first both get 1.5).

    Raises:
        ConfigurationError: a method has no score on some task (ranks would not compare).
    """
    means = table.mean()
    missing = np.argwhere(np.isnan(means))
    if len(missing):
        m, t = missing[0]
        raise ConfigurationError(
            f"Method {table.methods[m]!r} has no score on task {table.tasks[t]!r} ({len(missing)} such cells): "
            "every method needs a score on every task to be ranked."
        )
    return np.stack([rankdata(-means[:, j], method="average") for j in range(means.shape[1])], axis=1)


def average_rank(table: ScoreTable, *, exclude: Sequence[str] = ()) -> np.ndarray:
    """Eq. 2: each method's mean rank over the tasks, leaving out the tasks in ``exclude``."""
    ranks = rank_matrix(table)
    keep = [j for j, t in enumerate(table.tasks) if t not in set(exclude)]
    if not keep:
        raise ConfigurationError(f"No task left to rank on after excluding {list(exclude)}: add tasks.")
    return ranks[:, keep].mean(axis=1)


def select_method(table: ScoreTable, target: str, *, exclude: Sequence[str] | None = None) -> str:
    """The method to use on ``target``: best average rank over the *other* tasks.

    ``exclude`` (default: ``[target]``) lists the tasks whose ranks are ignored, e.g. the
    whole left-out set of the target. Ties go to the first method in table order.
    """
    table.task_index(target)
    avg = average_rank(table, exclude=[target] if exclude is None else exclude)
    return table.methods[int(np.argmin(avg))]


@dataclass(frozen=True)
class Comparison:
    """Two methods on one task: means, standard deviations, difference and its significance."""

    mean_a: float
    mean_b: float
    std_a: float
    std_b: float
    delta: float  # mean_a - mean_b
    threshold: float  # 2 x max(std_a, std_b)
    significant: bool
    testable: bool = True  # False when both methods have a single run: no spread to test against

    @property
    def verdict(self) -> str:
        """``"better"``, ``"worse"`` (a vs b, significant), ``"same"``, or ``"untested"`` (one run each)."""
        if not self.testable:
            return "untested"
        if not self.significant:
            return "same"
        return "better" if self.delta > 0 else "worse"


def compare(a: Sequence[float], b: Sequence[float], *, ddof: int = DDOF) -> Comparison:
    """The paper's rule: ``|mean(a) - mean(b)| > 2 * max(std(a), std(b))`` is significant.

    ``ddof=1``: the sample standard deviation (``DDOF``); ``ddof=0`` gives the population
    one, smaller, and flips some verdicts: [0.80, 0.84] vs [0.77] is significant with
    ddof=0 (0.05 > 2 x 0.02) and not with ddof=1 (0.05 < 2 x 0.028). A single run has std
    0, so any difference with a deterministic method (one run) counts unless the other
    varies. When *both* methods have a single run there is no spread at all: the comparison
    is not significant and its verdict is ``"untested"`` (run more seeds).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size == 0 or b.size == 0:
        raise ConfigurationError("Cannot compare methods without scores: each needs at least one run.")
    sa = float(a.std(ddof=ddof)) if a.size > ddof else 0.0
    sb = float(b.std(ddof=ddof)) if b.size > ddof else 0.0
    delta = float(a.mean() - b.mean())
    threshold = 2 * max(sa, sb)
    testable = max(a.size, b.size) > 1
    return Comparison(
        float(a.mean()), float(b.mean()), sa, sb, delta, threshold, testable and abs(delta) > threshold, testable
    )
