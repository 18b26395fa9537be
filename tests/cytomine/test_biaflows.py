"""BIAFLOWS flags and local folders."""

from __future__ import annotations

import argparse

import pytest

from mtdp_core.cytomine.biaflows import add_biaflows_arguments, biaflows_flags, ground_truth, read_image_folder
from mtdp_core.cytomine.errors import LocalDataError
from tests.helpers.images import make_image


def flags(*argv):
    parser = argparse.ArgumentParser()
    add_biaflows_arguments(parser)
    return biaflows_flags(parser.parse_args(list(argv)))


def test_flags_follow_biaflows_job():
    assert flags().local is False and flags().do_download and flags().do_upload_annotations
    assert flags("--local").local
    implied = flags("-nd", "-nau", "-nmu")
    assert implied.local and not implied.do_download and not implied.do_upload_metrics
    assert not flags("--nometrics").do_compute_metrics and not flags("--noexport").do_upload_annotations
    assert flags("-t", "-tw", "512").warnings() == ["tiling options are ignored: annotation crops are classified whole"]


def test_class_folders_and_labels_csv(tmp_path):
    for name in ("a1.png", "a2.png"):
        make_image(tmp_path / "alpha" / name, (20, 16), (200, 0, 0))
    make_image(tmp_path / "beta" / "sub" / "b1.png", (20, 16), (0, 0, 200))
    make_image(tmp_path / "x.png", (20, 16), (0, 200, 0))
    make_image(tmp_path / "y.png", (20, 16), (0, 200, 0))
    (tmp_path / "labels.csv").write_text("filename;label;slide\nx.png;beta;s1\n")
    images = read_image_folder(tmp_path)
    assert [(i.key, i.label, i.group) for i in images] == [
        ("alpha/a1.png", "alpha", None),
        ("alpha/a2.png", "alpha", None),
        ("beta/sub/b1.png", "beta", None),
        ("x.png", "beta", "s1"),
        ("y.png", None, None),
    ]
    assert ground_truth(tmp_path)["x.png"] == "beta"


def test_bad_folders_say_what_to_do(tmp_path):
    with pytest.raises(LocalDataError, match="Give --infolder"):
        read_image_folder(None)
    with pytest.raises(LocalDataError, match="does not exist"):
        read_image_folder(tmp_path / "missing")
    with pytest.raises(LocalDataError, match="Put images in"):
        read_image_folder(tmp_path)
    make_image(tmp_path / "x.png", (8, 8), (1, 2, 3))
    (tmp_path / "labels.csv").write_text("file,kind\nx.png,a\n")
    with pytest.raises(LocalDataError, match="Name the columns"):
        read_image_folder(tmp_path)
