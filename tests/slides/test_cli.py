"""``mtdp slides info | preview | classify`` and the training resolution of ``mtdp probe``."""

from __future__ import annotations

import csv
import json
import logging
import shutil

import pytest
from PIL import Image

from mtdp_core.cli import main
from mtdp_core.transfer.persistence import load_model
from tests.helpers.slides import MODEL_MPP

FAST = ["--workers", "0", "--device", "cpu", "--no-progress"]


def test_info(tiff_slide, png_slide, capsys):
    assert main(["slides", "info", str(tiff_slide), str(png_slide)]) == 0
    out = capsys.readouterr().out
    assert "720 x 560 px" in out and "1 µm/px (file)" in out and "unknown (give --slide-mpp)" in out
    assert "level 2     180 x 140 px, downsample 4" in out
    assert main(["slides", "info", "--json", "--slide-mpp", "0.5", str(png_slide)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["mpp"] == 0.5 and info["mpp_source"] == "user" and info["width"] == 720


def test_classify_writes_geojson_csv_overlay_and_summary(probe_model, two_tissue_slide, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["slides", "classify", str(probe_model), str(two_tissue_slide), "-o", str(out), *FAST]
    assert main([*args, "--overlay", "purple", "--color", "pink=#ff00ff"]) == 0
    printed = capsys.readouterr().out
    assert "two_tissues.svs:" in printed and "tiles (pink" in printed
    stem = out / "two_tissues"
    collection = json.loads(stem.with_suffix(".geojson").read_text())
    kinds = [f["properties"]["objectType"] for f in collection["features"]]
    assert kinds.count("annotation") == 2 and kinds.count("tile") > 40
    pink = next(f for f in collection["features"] if f["properties"]["classification"]["name"] == "pink")
    assert pink["properties"]["classification"]["color"] == [255, 0, 255]
    rows = list(csv.DictReader(open(stem.with_suffix(".csv"))))
    assert len(rows) == kinds.count("tile")
    assert Image.open(f"{stem}-overlay.png").width == 720  # the slide is smaller than --overlay-size
    summary = json.loads(stem.with_suffix(".json").read_text())
    assert summary["model"]["training_mpp"] == MODEL_MPP and summary["grid"]["n_tiles"] == len(rows)
    assert summary["features"]["n_computed"] == len(rows)
    # A second run reads the network outputs back from OUTDIR/cache.
    assert main([*args, "--geojson", "merged", "--no-overlay"]) == 0
    summary = json.loads(stem.with_suffix(".json").read_text())
    assert summary["features"]["n_computed"] == 0 and summary["features"]["n_cached"] == len(rows)


def test_classify_inside_regions(probe_model, two_tissue_slide, tmp_path):
    regions = tmp_path / "roi.geojson"
    ring = [[64, 64], [320, 64], [320, 320], [64, 320], [64, 64]]
    regions.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": {}}
                ],
            }
        )
    )
    out = tmp_path / "out"
    args = ["slides", "classify", str(probe_model), str(two_tissue_slide), "-o", str(out), "--regions", str(regions)]
    assert main([*args, *FAST, "--no-cache"]) == 0
    rows = list(csv.DictReader(open(out / "two_tissues.csv")))
    assert len(rows) == 16  # 4 x 4 tiles of 64 level-0 px in the 256 px square
    assert {r["name"] for r in rows} == {"pink"}


def test_a_folder_with_a_bad_slide_does_the_others_and_fails(
    probe_model, two_tissue_slide, blank_slide, tmp_path, caplog
):
    folder = tmp_path / "slides"
    folder.mkdir()
    shutil.copy(two_tissue_slide, folder / "a.svs")
    shutil.copy(blank_slide, folder / "b.tif")
    (folder / "c.svs").write_text("not a slide")
    (folder / "notes.txt").write_text("ignored")
    with caplog.at_level(logging.ERROR):
        code = main(["slides", "classify", str(probe_model), str(folder), "-o", str(tmp_path / "out"), *FAST])
    assert code == 1
    assert (tmp_path / "out" / "a.geojson").is_file()
    text = caplog.text
    assert "No tissue found on b.tif" in text
    assert "Cannot open slide" in text and "c.svs" in text and "Aperio .svs" in text
    assert "2 of 3 slides failed: b.tif, c.svs" in text


def test_classify_errors_that_say_what_to_do(probe_model, tmp_path, caplog, two_tissue_slide):
    from tests.helpers.slides import two_tissue_pixels

    png = tmp_path / "scan.png"
    Image.fromarray(two_tissue_pixels()).save(png)
    out = ["-o", str(tmp_path / "out"), *FAST]
    with caplog.at_level(logging.ERROR):
        assert main(["slides", "classify", str(probe_model), str(png), *out]) == 1
    assert "--slide-mpp" in caplog.text
    assert main(["slides", "classify", str(probe_model), str(png), "--slide-mpp", "1", *out]) == 0
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(["slides", "classify", str(probe_model), str(two_tissue_slide), "--overlay", "x", *out]) == 1
    assert "use 'classes' or one of ['pink', 'purple']" in caplog.text


def test_preview_takes_the_model_resolution(probe_model, two_tissue_slide, tmp_path, capsys):
    picture = tmp_path / "preview.png"
    assert main(["slides", "preview", str(two_tissue_slide), "-o", str(picture), "--model", str(probe_model)]) == 0
    assert "tiles of 32 px at 2 µm/px" in capsys.readouterr().out
    assert Image.open(picture).width == 720


def test_probe_records_the_training_resolution(tmp_path, colour_splits):
    from tests.helpers.images import colour_task

    colour_task(tmp_path / "train", 6, 0)
    model = tmp_path / "m.npz"
    args = ["probe", str(tmp_path / "train"), "-o", str(model), "--backbone", "resnet18", "--weights", "random"]
    assert main([*args, "--size", "32", "--folds", "2", "--grid", "C=1", "--mpp", "0.5", *FAST]) == 0
    assert load_model(model).mpp == 0.5


@pytest.fixture
def colour_splits():  # the transfer tests' fixture is not visible here; colour_task is enough
    return None
