import csv

import pytest
from PIL import Image

from mtdp_core.errors import ConfigurationError
from mtdp_core.evaluation.ranking import ScoreTable
from mtdp_core.evaluation.reports import comparison_rows, markdown_comparison, write_report


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
    # oral: mtdp 0.91 +- 0.0082 vs imagenet 0.85 +- 0: delta 0.06 > 0.0163 -> better.
    assert rows["oral"]["delta vs imagenet"] == pytest.approx(0.06)
    assert rows["oral"]["verdict vs imagenet"] == "better"
    # herlev: mtdp 0.65 +- 0.041 vs imagenet 0.62: delta 0.03 < 0.082 -> same.
    assert rows["herlev"]["verdict vs imagenet"] == "same"
    assert rows["herlev"]["verdict vs random"] == "better"
    md = markdown_comparison(table, "mtdp", ["imagenet"])
    assert "| oral | roc_auc | 91.00 ± 0.82 | 85.00 ± 0.00 | 72.00 ± 1.63 | +6.00 ▲ |" in md
    assert "| herlev | accuracy |" in md and "+3.00 =" in md and "average rank" in md


def test_write_report_produces_tables_and_plots(table, tmp_path):
    paths = write_report(table, tmp_path / "report", reference="mtdp")
    assert {"scores", "summary", "comparison", "markdown", "plot:imagenet", "plot:random"} <= set(paths)
    with open(paths["summary"]) as f:
        summary = list(csv.DictReader(f))
    oral = {r["method"]: r for r in summary if r["task"] == "oral"}
    assert float(oral["mtdp"]["rank"]) == 1 and float(oral["random"]["rank"]) == 3
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
