"""Report helpers: CSV tables and the learning-curve plot."""

from __future__ import annotations

import csv

import numpy as np
from PIL import Image

from mtdp_core.reporting import plot_learning_curve, write_csv


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
