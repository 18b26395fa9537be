import csv

import pytest
from PIL import Image

from mtdp_core.errors import ConfigurationError
from mtdp_core.evaluation.ranking import ScoreTable
from mtdp_core.evaluation.reports import (
    comparison_rows,
    curve_differences,
    markdown_comparison,
    markdown_learning_curves,
    write_learning_curve_report,
    write_report,
)


@pytest.fixture
def table():
    rows = []
    for seed in range(3):
        rows += [
            {"method": "mtdp", "task": "oral", "seed": seed, "score": 0.90 + 0.01 * seed, "metric": "roc_auc"},
            {"method": "imagenet", "task": "oral", "seed": seed, "score": 0.85, "metric": "roc_auc"},
            {"method": "random", "task": "oral", "seed": seed, "score": 0.70 + 0.02 * seed, "metric": "roc_auc"},
            {"method": "mtdp", "task": "herlev", "seed": seed, "score": 0.60 + 0.05 * seed, "metric": "accuracy"},
            {"method": "imagenet", "task": "herlev", "seed": seed, "score": 0.62, "metric": "accuracy"},
            {"method": "random", "task": "herlev", "seed": seed, "score": 0.40, "metric": "accuracy"},
        ]
    return ScoreTable.from_records(rows)


def test_comparison_marks_significant_differences(table):
    rows = {r["task"]: r for r in comparison_rows(table, "mtdp", ["imagenet", "random"])}
    # oral: mtdp 0.91 +- 0.01 (sample std) vs imagenet 0.85 +- 0: delta 0.06 > 0.02 -> better.
    assert rows["oral"]["delta vs imagenet"] == pytest.approx(0.06)
    assert rows["oral"]["verdict vs imagenet"] == "better"
    # herlev: mtdp 0.65 +- 0.05 vs imagenet 0.62: delta 0.03 < 0.10 -> same.
    assert rows["herlev"]["verdict vs imagenet"] == "same"
    assert rows["herlev"]["verdict vs random"] == "better"
    md = markdown_comparison(table, "mtdp", ["imagenet"])
    assert "| oral | roc_auc | 91.00 ± 1.00 | 85.00 ± 0.00 | 72.00 ± 2.00 | +6.00 ▲ |" in md
    assert "| herlev | accuracy |" in md and "+3.00 =" in md and "average rank" in md
    assert "sample standard deviation, ddof=1" in md  # the report says which std it used
    assert rows["oral"]["ddof"] == 1 and rows["oral"]["mtdp std"] == pytest.approx(0.01)
    population = markdown_comparison(table, "mtdp", ["imagenet"], ddof=0)
    assert "91.00 ± 0.82" in population and "population standard deviation, ddof=0" in population
    notes = markdown_comparison(table, "mtdp", ["imagenet"], notes=["imagenet: one set of features."])
    assert notes.endswith("\n\nimagenet: one set of features.")


def test_write_report_produces_tables_and_plots(table, tmp_path):
    paths = write_report(table, tmp_path / "report", reference="mtdp")
    assert {"scores", "summary", "comparison", "markdown", "plot:imagenet", "plot:random"} <= set(paths)
    with open(paths["summary"]) as f:
        summary = list(csv.DictReader(f))
    oral = {r["method"]: r for r in summary if r["task"] == "oral"}
    assert float(oral["mtdp"]["rank"]) == 1 and float(oral["random"]["rank"]) == 3
    assert oral["mtdp"]["ddof"] == "1" and float(oral["mtdp"]["std"]) == pytest.approx(0.01)
    # mtdp: first on both tasks (herlev: 0.65 vs 0.62, not significant but higher); imagenet second on both.
    assert float(oral["mtdp"]["average_rank"]) == 1.0 and float(oral["imagenet"]["average_rank"]) == 2.0
    png = Image.open(paths["plot:imagenet"])
    assert png.format == "PNG" and png.size[0] > 300
    md = paths["markdown"].read_text()
    assert "differences_mtdp_vs_imagenet.png" in md and "| task | metric | mtdp | imagenet | random |" in md
    assert ScoreTable.from_csv(paths["scores"]).scores.shape == (3, 2, 3)


def test_reports_refuse_unknown_methods(table, tmp_path):
    with pytest.raises(ConfigurationError, match="Unknown method 'nope'"):
        write_report(table, tmp_path, reference="nope")


def _curve(method, task, fraction, seed, score, n):
    return {"method": method, "task": task, "fraction": fraction, "seed": seed, "score": score, "n_train": n}


@pytest.fixture
def curves():
    # Two tasks, two fractions, three seeds; mt vs im, worked out by hand below.
    scores = {
        # (task, fraction): (mt scores by seed, im scores by seed)
        ("oral", 0.1): ([0.80, 0.70, 0.90], [0.70, 0.70, 0.80]),  # diffs +0.10, 0, +0.10
        ("oral", 1.0): ([0.95, 0.95, 0.95], [0.94, 0.96, 0.93]),  # diffs +0.01, -0.01, +0.02
        ("herlev", 0.1): ([0.40, 0.50, 0.45], [0.45, 0.55, 0.50]),  # diffs -0.05 x 3
        ("herlev", 1.0): ([0.60, 0.62, 0.64], [0.60, 0.60, 0.60]),  # diffs 0, +0.02, +0.04
    }
    n = {("oral", 0.1): 98, ("oral", 1.0): 975, ("herlev", 0.1): 73, ("herlev", 1.0): 733}
    rows = []
    for (task, f), (mt, im) in scores.items():
        for seed in range(3):
            rows.append(_curve("mt", task, f, seed, mt[seed], n[(task, f)]))
            rows.append(_curve("im", task, f, seed, im[seed], n[(task, f)]))
    return rows


def test_learning_curve_differences_are_paired_by_task_fraction_and_seed(curves):
    rows = {(d["task"], d["fraction"]): d for d in curve_differences(curves, "mt", ["im"])}
    oral = rows[("oral", 0.1)]
    assert oral["mean_difference"] == pytest.approx(0.2 / 3) and oral["pairs"] == 3
    assert (oral["wins"], oral["ties"], oral["losses"]) == (2, 1, 0)
    # Sample std of (0.10, 0, 0.10): sqrt(((1/30)^2 * 2 + (2/30)^2) / 2) = 0.057735.
    assert oral["std_difference"] == pytest.approx(0.0577350, abs=1e-6) and oral["ddof"] == 1
    assert rows[("herlev", 0.1)]["mean_difference"] == pytest.approx(-0.05)
    assert rows[("herlev", 0.1)]["std_difference"] == pytest.approx(0.0, abs=1e-12)
    assert (rows[("herlev", 0.1)]["wins"], rows[("herlev", 0.1)]["losses"]) == (0, 3)
    everything = rows[("all tasks", 0.1)]
    # Mean of the per-task means (0.0667 and -0.05); wins over the 6 (task, seed) pairs.
    assert everything["mean_difference"] == pytest.approx((0.2 / 3 - 0.05) / 2)
    assert (everything["wins"], everything["ties"], everything["losses"], everything["pairs"]) == (2, 1, 3, 6)
    assert rows[("all tasks", 1.0)]["wins"] == 4 and rows[("herlev", 1.0)]["n_train"] == 733
    # Unpaired runs do not count: drop the baseline's seed 2 on oral at 10%.
    partial = [r for r in curves if not (r["method"] == "im" and r["task"] == "oral" and r["seed"] == 2)]
    assert {(d["task"], d["fraction"]): d["pairs"] for d in curve_differences(partial, "mt", ["im"])}[
        ("oral", 0.1)
    ] == 2
    with pytest.raises(ConfigurationError, match="Unknown method 'nope'"):
        curve_differences(curves, "nope", ["im"])


def test_learning_curve_report(curves, tmp_path):
    md = markdown_learning_curves(curves, "mt", ["im"])
    assert "| oral | mt | 80.0 ± 10.0 (n=98) | 95.0 ± 0.0 (n=975) |" in md
    assert "| oral | +6.7 ± 5.8 (2/3) | +0.7 ± 1.5 (2/3) |" in md
    assert "| **all tasks** |" in md and "ddof=1" in md
    paths = write_learning_curve_report(curves, tmp_path / "curves", reference="mt")
    for key in ("curves", "curve_summary", "curve_differences", "curve_plot", "curve_markdown"):
        assert paths[key].is_file(), key
    assert Image.open(paths["curve_plot"]).format == "PNG"
    with open(paths["curve_summary"]) as f:
        summary = list(csv.DictReader(f))
    assert len(summary) == 2 * 2 * 2  # tasks x methods x fractions
    with pytest.raises(ConfigurationError, match="No learning-curve rows"):
        write_learning_curve_report([], tmp_path / "none", reference="mt")
