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


def plot_learning_curve(rows: Sequence[dict], path: str | os.PathLike, *, title: str | None = None) -> Path:
    """PNG: test score against the number of training samples (mean ± std over seeds), one line per
    ``method`` (rows from ``probes.LearningCurve.run``, optionally with a ``method`` key)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for method in dict.fromkeys(r.get("method", "probe") for r in rows):
        mine = [r for r in rows if r.get("method", "probe") == method]
        fractions = sorted({r["fraction"] for r in mine})
        n = [np.mean([r["n_train"] for r in mine if r["fraction"] == f]) for f in fractions]
        scores = [[r["test_score"] for r in mine if r["fraction"] == f] for f in fractions]
        ax.errorbar(
            n, [np.mean(s) for s in scores], yerr=[np.std(s) for s in scores], marker="o", capsize=3, label=method
        )
    ax.set_xscale("log")
    ax.set_xlabel("training samples")
    ax.set_ylabel(f"test {rows[0].get('metric', 'score')}" if rows else "test score")
    ax.set_title(title or "learning curve")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
