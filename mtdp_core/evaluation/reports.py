"""Reports of a comparison: CSV and Markdown tables, and plots of per-task differences.

``write_report(table, out_dir, reference=..., baselines=[...])`` writes:

- ``scores.csv``: every run (method, task, seed, score, metric);
- ``summary.csv``: mean and std per method and task, the rank of each method per task and
  its average rank (Eq. 2);
- ``comparison.csv`` / ``comparison.md``: per task, each method's mean ± std, and the
  difference reference - baseline with its significance (|delta| > 2 max(std), marked
  ``▲``/``▼``, ``=`` when not significant, ``·`` when both methods have a single run);
- ``differences_<reference>_vs_<baseline>.png``: per task, the difference with error bars
  of 2 max(std) (as the paper's Figures 2-3): a bar that does not cross zero is significant.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mtdp_core.errors import ConfigurationError
from mtdp_core.evaluation.ranking import ScoreTable, compare, rank_matrix
from mtdp_core.reporting import write_csv

logger = logging.getLogger(__name__)

_MARK = {"better": "▲", "worse": "▼", "same": "=", "untested": "·"}


def summary_rows(table: ScoreTable) -> list[dict]:
    """One row per (method, task): mean, std, runs, rank on the task; plus each method's average rank."""
    means, stds = table.mean(), table.std()
    try:
        ranks = rank_matrix(table)
        avg = ranks.mean(axis=1)
    except ConfigurationError:
        ranks, avg = None, None  # incomplete table: no ranks
    rows = []
    for i, m in enumerate(table.methods):
        for j, t in enumerate(table.tasks):
            rows.append(
                {
                    "method": m,
                    "task": t,
                    "metric": table.metrics.get(t, ""),
                    "mean": means[i, j],
                    "std": stds[i, j],
                    "runs": int((~np.isnan(table.scores[i, j])).sum()),
                    "rank": None if ranks is None else float(ranks[i, j]),
                    "average_rank": None if avg is None else float(avg[i]),
                }
            )
    return rows


def comparison_rows(table: ScoreTable, reference: str, baselines: Sequence[str], *, ddof: int = 0) -> list[dict]:
    """Per task: each method's mean/std and, for each baseline, reference - baseline and its verdict."""
    for m in [reference, *baselines]:
        table.method_index(m)  # an unknown name is an error that lists the known ones
    rows = []
    for t in table.tasks:
        row: dict = {"task": t, "metric": table.metrics.get(t, "")}
        for m in table.methods:
            runs = table.runs(m, t)
            row[f"{m} mean"] = float(runs.mean()) if runs.size else float("nan")
            row[f"{m} std"] = float(runs.std(ddof=ddof)) if runs.size > ddof else 0.0
        ref = table.runs(reference, t)
        for b in baselines:
            base = table.runs(b, t)
            if ref.size and base.size:
                c = compare(ref, base, ddof=ddof)
                row[f"delta vs {b}"], row[f"2sigma vs {b}"], row[f"verdict vs {b}"] = c.delta, c.threshold, c.verdict
            else:
                row[f"delta vs {b}"], row[f"2sigma vs {b}"], row[f"verdict vs {b}"] = float("nan"), float("nan"), "n/a"
        rows.append(row)
    return rows


def _pct(v: float) -> str:
    # Scores in [0, 1] are shown in percent, as in the paper's tables.
    return "–" if v is None or np.isnan(v) else f"{100 * v:.2f}"


def markdown_comparison(table: ScoreTable, reference: str, baselines: Sequence[str], *, ddof: int = 0) -> str:
    """A Markdown table: task, metric, each method's mean ± std (in %), and the verdicts."""
    rows = comparison_rows(table, reference, baselines, ddof=ddof)
    head = ["task", "metric", *table.methods, *[f"{reference} vs {b}" for b in baselines]]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for r in rows:
        cells = [r["task"], r["metric"] or "score"]
        for m in table.methods:
            mean, std = r[f"{m} mean"], r[f"{m} std"]
            cells.append(f"{_pct(mean)} ± {100 * std:.2f}" if not np.isnan(mean) else "–")
        for b in baselines:
            delta, verdict = r[f"delta vs {b}"], r[f"verdict vs {b}"]
            cells.append("–" if np.isnan(delta) else f"{100 * delta:+.2f} {_MARK.get(verdict, '')}")
        lines.append("| " + " | ".join(cells) + " |")
    try:
        avg = rank_matrix(table).mean(axis=1)
        lines.append("| average rank | | " + " | ".join(f"{v:.2f}" for v in avg) + " |" + " |" * len(baselines))
    except ConfigurationError:
        pass
    lines.append("")
    lines.append(
        f"Scores in % (mean ± std over runs). ▲/▼: {reference} significantly better/worse "
        "(|Δ| > 2·max(σ)); =: difference within 2·max(σ); ·: one run each, untested."
    )
    return "\n".join(lines)


def plot_differences(
    table: ScoreTable,
    reference: str,
    baseline: str,
    path: str | os.PathLike,
    *,
    title: str | None = None,
    ddof: int = 0,
) -> Path:
    """PNG: per task, mean(reference) - mean(baseline) with error bars of 2 max(std)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed (servers, containers)
    import matplotlib.pyplot as plt

    comps = []
    for t in table.tasks:
        a, b = table.runs(reference, t), table.runs(baseline, t)
        if a.size and b.size:
            comps.append((t, compare(a, b, ddof=ddof)))
    if not comps:
        raise ConfigurationError(f"No task has scores for both {reference!r} and {baseline!r}: nothing to plot.")
    tasks = [t for t, _ in comps]
    deltas = np.array([100 * c.delta for _, c in comps])
    errors = np.array([100 * c.threshold for _, c in comps])
    colors = [
        "tab:green" if c.verdict == "better" else "tab:red" if c.verdict == "worse" else "tab:gray" for _, c in comps
    ]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(tasks) + 2), 3.6))
    x = np.arange(len(tasks))
    ax.bar(x, deltas, color=colors, alpha=0.8)
    ax.errorbar(x, deltas, yerr=errors, fmt="none", ecolor="black", capsize=4, linewidth=1)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, tasks, rotation=30, ha="right")
    ax.set_ylabel(f"{reference} − {baseline} (points)")
    ax.set_title(title or f"{reference} vs {baseline}: per-task difference, error bars 2·max(σ)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "method"


def write_report(
    table: ScoreTable,
    out_dir: str | os.PathLike,
    *,
    reference: str | None = None,
    baselines: Sequence[str] | None = None,
    title: str = "Transfer comparison",
) -> dict[str, Path]:
    """Write scores, summary, comparison (CSV + Markdown) and difference plots to ``out_dir``.

    ``reference`` defaults to the first method, ``baselines`` to the others. Returns the paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not table.methods or not table.tasks:
        raise ConfigurationError("The score table is empty: nothing to report.")
    reference = reference or table.methods[0]
    baselines = [m for m in (baselines if baselines is not None else table.methods) if m != reference]
    paths = {
        "scores": table.to_csv(out / "scores.csv"),
        "summary": write_csv(summary_rows(table), out / "summary.csv"),
        "comparison": write_csv(comparison_rows(table, reference, baselines), out / "comparison.csv"),
    }
    md = [f"# {title}", "", markdown_comparison(table, reference, baselines), ""]
    for b in baselines:
        png = plot_differences(table, reference, b, out / f"differences_{_slug(reference)}_vs_{_slug(b)}.png")
        paths[f"plot:{b}"] = png
        md.append(f"![{reference} vs {b}]({png.name})")
    (out / "comparison.md").write_text("\n".join(md) + "\n")
    paths["markdown"] = out / "comparison.md"
    logger.info("report written to %s (%d methods, %d tasks)", out, len(table.methods), len(table.tasks))
    return paths
