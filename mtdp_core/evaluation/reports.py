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

Every std is the sample standard deviation over runs (``ranking.DDOF`` = 1) unless ``ddof``
says otherwise; the CSVs carry a ``ddof`` column and the Markdown says which was used.

``write_learning_curve_report(rows, out_dir, reference=..., baselines=[...])`` reports
learning curves (rows of ``protocol.evaluate_learning_curve``: each method's test score at
several training-set fractions, the same subsets for every method): ``curves.csv`` (every
run), ``curve_summary.csv`` (mean ± std per method, task and fraction), ``curve_differences.csv``
(reference - baseline, paired by task, fraction and seed: mean ± std of the paired
differences, wins / ties / losses), ``learning_curves.md`` and ``learning_curves.png``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mtdp_core.errors import ConfigurationError
from mtdp_core.evaluation.ranking import DDOF, ScoreTable, compare, rank_matrix
from mtdp_core.reporting import curve_points, curve_score, plot_learning_curve, write_csv

logger = logging.getLogger(__name__)

_MARK = {"better": "▲", "worse": "▼", "same": "=", "untested": "·"}


def summary_rows(table: ScoreTable, *, ddof: int = DDOF) -> list[dict]:
    """One row per (method, task): mean, std, runs, rank on the task; plus each method's average rank."""
    means, stds = table.mean(), table.std(ddof=ddof)
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
                    "ddof": ddof,
                    "runs": int((~np.isnan(table.scores[i, j])).sum()),
                    "rank": None if ranks is None else float(ranks[i, j]),
                    "average_rank": None if avg is None else float(avg[i]),
                }
            )
    return rows


def comparison_rows(table: ScoreTable, reference: str, baselines: Sequence[str], *, ddof: int = DDOF) -> list[dict]:
    """Per task: each method's mean/std and, for each baseline, reference - baseline and its verdict."""
    for m in [reference, *baselines]:
        table.method_index(m)  # an unknown name is an error that lists the known ones
    rows = []
    for t in table.tasks:
        row: dict = {"task": t, "metric": table.metrics.get(t, ""), "ddof": ddof}
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


def markdown_comparison(
    table: ScoreTable, reference: str, baselines: Sequence[str], *, ddof: int = DDOF, notes: Sequence[str] = ()
) -> str:
    """A Markdown table: task, metric, each method's mean ± std (in %), and the verdicts.

    ``notes``: lines added under the table's legend (e.g. where a method's spread comes from).
    """
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
        f"Scores in % (mean ± σ over runs; σ: {_ddof_words(ddof)}). ▲/▼: {reference} significantly "
        "better/worse (|Δ| > 2·max(σ)); =: difference within 2·max(σ); ·: one run each, untested."
    )
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def _ddof_words(ddof: int) -> str:
    return {1: "sample standard deviation, ddof=1", 0: "population standard deviation, ddof=0"}.get(
        ddof, f"standard deviation with ddof={ddof}"
    )


def plot_differences(
    table: ScoreTable,
    reference: str,
    baseline: str,
    path: str | os.PathLike,
    *,
    title: str | None = None,
    ddof: int = DDOF,
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
    ax.set_title(title or f"{reference} vs {baseline}: per-task difference, error bars 2·max(σ), ddof={ddof}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def curve_summary_rows(rows: Sequence[dict], *, ddof: int = DDOF) -> list[dict]:
    """Per (task, method, fraction): training samples, mean and std of the test score over seeds."""
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        for method in dict.fromkeys(r["method"] for r in mine):
            for p in curve_points([r for r in mine if r["method"] == method], ddof):
                out.append({"task": task, "metric": mine[0].get("metric", ""), "method": method, **p, "ddof": ddof})
    return out


def curve_differences(
    rows: Sequence[dict], reference: str, baselines: Sequence[str], *, ddof: int = DDOF
) -> list[dict]:
    """Reference - baseline on the same subsets: per (baseline, task, fraction), the paired
    differences over seeds (mean, std), and how many seeds the reference wins, ties, loses;
    plus an ``"all tasks"`` row per fraction (the mean of the per-task mean differences, and
    the wins / ties / losses over every (task, seed) pair)."""
    index = {(r["method"], r["task"], float(r["fraction"]), r["seed"]): curve_score(r) for r in rows}
    methods = {r["method"] for r in rows}
    for m in [reference, *baselines]:
        if m not in methods:
            raise ConfigurationError(f"Unknown method {m!r} in the learning curves: they have {sorted(methods)}.")
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fractions = sorted({float(r["fraction"]) for r in rows})
    out = []
    for b in baselines:
        for f in fractions:
            per_task = []
            for t in tasks:
                seeds = sorted(
                    s for (m, tt, ff, s) in index if m == reference and tt == t and ff == f and (b, t, f, s) in index
                )
                if not seeds:
                    continue
                d = np.array([index[(reference, t, f, s)] - index[(b, t, f, s)] for s in seeds])
                n_train = np.mean([r["n_train"] for r in rows if r["task"] == t and float(r["fraction"]) == f])
                row = {
                    "baseline": b,
                    "task": t,
                    "fraction": f,
                    "n_train": float(n_train),
                    "pairs": int(d.size),
                    "mean_difference": float(d.mean()),
                    "std_difference": float(d.std(ddof=ddof)) if d.size > ddof else 0.0,
                    "wins": int((d > 0).sum()),
                    "ties": int((d == 0).sum()),
                    "losses": int((d < 0).sum()),
                    "ddof": ddof,
                }
                per_task.append((row, d))
                out.append(row)
            if per_task:
                means = np.array([r["mean_difference"] for r, _ in per_task])
                out.append(
                    {
                        "baseline": b,
                        "task": "all tasks",
                        "fraction": f,
                        "n_train": float("nan"),
                        "pairs": int(sum(r["pairs"] for r, _ in per_task)),
                        "mean_difference": float(means.mean()),
                        "std_difference": float(means.std(ddof=ddof)) if means.size > ddof else 0.0,
                        "wins": int(sum(r["wins"] for r, _ in per_task)),
                        "ties": int(sum(r["ties"] for r, _ in per_task)),
                        "losses": int(sum(r["losses"] for r, _ in per_task)),
                        "ddof": ddof,
                    }
                )
    return out


def markdown_learning_curves(
    rows: Sequence[dict], reference: str, baselines: Sequence[str], *, ddof: int = DDOF
) -> str:
    """Markdown: each method's test score per task and training fraction (mean ± std over seeds),
    then, per baseline, the paired differences reference - baseline with the reference's wins."""
    fractions = sorted({float(r["fraction"]) for r in rows})
    head = "| task | method | " + " | ".join(f"{100 * f:g}%" for f in fractions) + " |"
    lines = [head, "|---|---|" + "---:|" * len(fractions)]
    summary = curve_summary_rows(rows, ddof=ddof)
    for task in dict.fromkeys(r["task"] for r in summary):
        for method in dict.fromkeys(r["method"] for r in summary if r["task"] == task):
            cells = {r["fraction"]: r for r in summary if r["task"] == task and r["method"] == method}
            text = [
                f"{100 * cells[f]['mean']:.1f} ± {100 * cells[f]['std']:.1f} (n={cells[f]['n_train']:.0f})"
                if f in cells
                else "–"
                for f in fractions
            ]
            lines.append(f"| {task} | {method} | " + " | ".join(text) + " |")
    diffs = curve_differences(rows, reference, baselines, ddof=ddof)
    for b in baselines:
        lines += [
            "",
            f"Paired differences {reference} − {b} (points; mean ± σ over seeds, wins/pairs):",
            "",
            "| task | " + " | ".join(f"{100 * f:g}%" for f in fractions) + " |",
            "|---|" + "---:|" * len(fractions),
        ]
        mine = [d for d in diffs if d["baseline"] == b]
        for task in dict.fromkeys(d["task"] for d in mine):
            cells = {d["fraction"]: d for d in mine if d["task"] == task}
            text = [
                f"{100 * cells[f]['mean_difference']:+.1f} ± {100 * cells[f]['std_difference']:.1f} "
                f"({cells[f]['wins']}/{cells[f]['pairs']})"
                if f in cells
                else "–"
                for f in fractions
            ]
            name = f"**{task}**" if task == "all tasks" else task
            lines.append(f"| {name} | " + " | ".join(text) + " |")
    lines += [
        "",
        "Test scores in % at each fraction of the training set (class-stratified subsets, the same for every "
        f"method for a given seed); σ: {_ddof_words(ddof)}. Paired differences: same task, fraction and seed. "
        "'all tasks': mean of the per-task mean differences (σ across tasks), wins over every (task, seed) pair.",
    ]
    return "\n".join(lines)


def write_learning_curve_report(
    rows: Sequence[dict],
    out_dir: str | os.PathLike,
    *,
    reference: str,
    baselines: Sequence[str] | None = None,
    title: str = "Learning curves",
    ddof: int = DDOF,
) -> dict[str, Path]:
    """Write curves.csv, curve_summary.csv, curve_differences.csv, learning_curves.md and
    learning_curves.png to ``out_dir`` (see the module docstring). Returns the paths."""
    if not rows:
        raise ConfigurationError("No learning-curve rows: nothing to report.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    baselines = [m for m in (baselines if baselines is not None else methods) if m != reference]
    plain = [{k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in r.items()} for r in rows]
    paths = {
        "curves": write_csv(plain, out / "curves.csv"),
        "curve_summary": write_csv(curve_summary_rows(rows, ddof=ddof), out / "curve_summary.csv"),
        "curve_differences": write_csv(
            curve_differences(rows, reference, baselines, ddof=ddof), out / "curve_differences.csv"
        ),
        "curve_plot": plot_learning_curve(rows, out / "learning_curves.png", title=title, ddof=ddof),
    }
    md = [f"# {title}", "", markdown_learning_curves(rows, reference, baselines, ddof=ddof), ""]
    md.append(f"![learning curves]({paths['curve_plot'].name})")
    (out / "learning_curves.md").write_text("\n".join(md) + "\n")
    paths["curve_markdown"] = out / "learning_curves.md"
    return paths


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "method"


def write_report(
    table: ScoreTable,
    out_dir: str | os.PathLike,
    *,
    reference: str | None = None,
    baselines: Sequence[str] | None = None,
    title: str = "Transfer comparison",
    notes: Sequence[str] = (),
) -> dict[str, Path]:
    """Write scores, summary, comparison (CSV + Markdown) and difference plots to ``out_dir``.

    ``reference`` defaults to the first method, ``baselines`` to the others; ``notes`` go under
    the Markdown table. Returns the paths.
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
    md = [f"# {title}", "", markdown_comparison(table, reference, baselines, notes=notes), ""]
    for b in baselines:
        png = plot_differences(table, reference, b, out / f"differences_{_slug(reference)}_vs_{_slug(b)}.png")
        paths[f"plot:{b}"] = png
        md.append(f"![{reference} vs {b}]({png.name})")
    (out / "comparison.md").write_text("\n".join(md) + "\n")
    paths["markdown"] = out / "comparison.md"
    logger.info("report written to %s (%d methods, %d tasks)", out, len(table.methods), len(table.tasks))
    return paths
