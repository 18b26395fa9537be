"""Report helpers shared by the command lines and the evaluation reports: CSV tables and the
learning-curve plot (matplotlib, imported only when plotting)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def write_csv(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _fmt_csv(v) for k, v in r.items()})
    return path


def _fmt_csv(v: object) -> object:
    if isinstance(v, float):
        return "" if np.isnan(v) else f"{v:.6g}"
    return "" if v is None else v


def plot_learning_curve(
    rows: Sequence[dict], path: str | os.PathLike, *, title: str | None = None, ddof: int = 1
) -> Path:
    """PNG: test score against the number of training samples (mean ± std over seeds), one line per
    ``method`` and one panel per ``task`` (rows from ``probes.LearningCurve.run`` or
    ``evaluation.protocol.evaluate_learning_curve``; ``method`` and ``task`` keys optional).
    ``ddof=1``: the sample standard deviation, as ``evaluation.ranking.DDOF``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r.get("task", "") for r in rows)) or [""]
    cols = min(3, len(tasks))
    n_rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(4.2 * cols, 3.4 * n_rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        mine = [r for r in rows if r.get("task", "") == task]
        for method in dict.fromkeys(r.get("method", "probe") for r in mine):
            points = curve_points([r for r in mine if r.get("method", "probe") == method], ddof)
            ax.errorbar(
                [p["n_train"] for p in points],
                [100 * p["mean"] for p in points],
                yerr=[100 * p["std"] for p in points],
                marker="o",
                capsize=3,
                label=method,
            )
        ax.set_xscale("log")
        ax.set_xlabel("training samples")
        metric = mine[0].get("metric", "score") if mine else "score"
        ax.set_ylabel(f"test {metric} (%)")
        ax.set_title(task or title or "learning curve")
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(tasks) :]:
        ax.set_visible(False)
    if title and tasks != [""]:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def curve_score(row: dict) -> float:
    """A learning-curve row's test score (``score``, or ``test_score`` in ``LearningCurve.run`` rows)."""
    return float(row["score"] if "score" in row else row["test_score"])


def curve_points(rows: Sequence[dict], ddof: int = 1) -> list[dict]:
    """One method on one task: per fraction, the mean n_train, and the mean and std of the scores over seeds."""
    points = []
    for f in sorted({float(r["fraction"]) for r in rows}):
        scores = np.array([curve_score(r) for r in rows if float(r["fraction"]) == f])
        n = [r["n_train"] for r in rows if float(r["fraction"]) == f]
        points.append(
            {
                "fraction": f,
                "n_train": float(np.mean(n)),
                "mean": float(scores.mean()),
                "std": float(scores.std(ddof=ddof)) if scores.size > ddof else 0.0,
                "runs": int(scores.size),
            }
        )
    return points
