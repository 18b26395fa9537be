"""Report helpers: CSV tables and the learning-curve plot."""

from __future__ import annotations

import csv

import numpy as np
from PIL import Image

from mtdp_core.reporting import curve_points, plot_learning_curve, write_csv


def test_write_csv_takes_the_union_of_keys_and_formats_numbers(tmp_path):
    path = write_csv([{"a": 1, "b": 0.123456789}, {"a": 2, "c": None, "b": float("nan")}], tmp_path / "t" / "x.csv")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows == [{"a": "1", "b": "0.123457", "c": ""}, {"a": "2", "b": "", "c": ""}]


def test_learning_curve_plot(tmp_path):
    rows = [
        {
            "method": m,
            "fraction": f,
            "seed": s,
            "n_train": int(1000 * f),
            "test_score": 0.5 + 0.4 * f - 0.1 * (m == "b"),
            "metric": "accuracy",
        }
        for m in "ab"
        for f in (0.01, 0.1, 1.0)
        for s in range(2)
    ]
    path = plot_learning_curve(rows, tmp_path / "curve.png")
    assert Image.open(path).format == "PNG"
    assert np.isclose(rows[0]["test_score"], 0.504)


def test_learning_curve_points_and_a_panel_per_task(tmp_path):
    rows = [
        {"method": m, "task": t, "fraction": f, "seed": s, "n_train": n, "score": v, "metric": "accuracy"}
        for m in "ab"
        for t in ("oral", "herlev", "bccd", "lc")
        for s in range(2)
        for f, n, v in ((0.1, 10, 0.6 + 0.1 * s), (1.0, 100, 0.9))
    ]
    # Sample std (ddof=1) of 0.6 and 0.7: 0.0707; one run has no spread.
    points = curve_points([r for r in rows if r["method"] == "a" and r["task"] == "oral"])
    assert [p["fraction"] for p in points] == [0.1, 1.0] and np.isclose(points[0]["mean"], 0.65)
    assert np.isclose(points[0]["std"], 0.0707107) and points[1]["std"] == 0.0 and points[0]["runs"] == 2
    oral_a = [r for r in rows if r["method"] == "a" and r["task"] == "oral"]
    assert np.isclose(curve_points(oral_a, ddof=0)[0]["std"], 0.05)
    with Image.open(plot_learning_curve(rows, tmp_path / "panels.png", title="t")) as png:
        assert png.format == "PNG" and png.size[0] > png.size[1]  # 4 tasks: 3 panels wide, 2 high
