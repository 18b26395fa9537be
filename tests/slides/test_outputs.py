"""GeoJSON (level-0 pixels, origin top-left, QuPath's properties), merged class polygons, CSV and
overlay pictures, on predictions set by hand."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import shapely
from shapely.geometry import shape

from mtdp_core.errors import ConfigurationError
from mtdp_core.slides.classify import SlideClassification, class_shares
from mtdp_core.slides.outputs import (
    class_colors,
    map_pieces,
    merge_classes,
    overlay,
    parse_color,
    preview,
    to_geojson,
    write_csv,
    write_geojson,
)
from mtdp_core.slides.reader import open_slide
from mtdp_core.slides.tiles import tile_grid
from mtdp_core.transfer.persistence import ClassInfo

CLASSES = [ClassInfo(0, "stroma", 11), ClassInfo(1, "tumour", 12)]


def _result(grid, predicted: np.ndarray) -> SlideClassification:
    probs = np.where(predicted[:, None] == np.arange(2), 0.9, 0.1).astype(np.float32)
    return SlideClassification(grid, CLASSES, probs, probs, {"path": "x"}, {"kind": "logreg"})


@pytest.fixture
def halves(tiff_slide):
    """Tiles of 64 px at 2 µm/px (128 level-0 px) on the 720 x 560 slide, level 1 read: left of
    x = 256 stroma, the rest tumour."""
    with open_slide(tiff_slide) as slide:
        grid = tile_grid(slide, tile_size=64, resolution="2", tissue=None)
    return _result(grid, (grid.positions[:, 0] >= 256).astype(int))


def test_tile_features_are_level0_boxes_with_classes_and_probabilities(halves):
    collection = to_geojson(halves, merged=False)
    assert collection["type"] == "FeatureCollection"
    tiles = collection["features"]
    assert len(tiles) == len(halves.grid) == 20
    for feature, (x, y) in zip(tiles, halves.grid.positions.tolist()):
        ring = feature["geometry"]["coordinates"][0]
        # Level-0 pixels (tiles were read from level 1: 128 level-0 px each), origin top-left.
        assert ring == [[x, y], [x + 128, y], [x + 128, y + 128], [x, y + 128], [x, y]]
        props = feature["properties"]
        assert props["objectType"] == "tile"
        name = "stroma" if x < 256 else "tumour"
        assert props["classification"]["name"] == name
        assert props["classification"]["color"] == list(class_colors(["stroma", "tumour"])[x >= 256])
        assert props["measurements"][f"prob_{name}"] == pytest.approx(0.9)
        assert shape(feature["geometry"]).is_valid
    assert tiles[0]["geometry"]["coordinates"][0][0] == [0, 0]  # integers stay integers


def test_merged_classes_are_one_polygon_per_class(halves):
    merged = [f for f in to_geojson(halves, tiles=False)["features"]]
    assert [f["properties"]["classification"]["name"] for f in merged] == ["stroma", "tumour"]
    stroma, tumour = (shape(f["geometry"]) for f in merged)
    assert stroma.equals(shapely.box(0, 0, 256, 512))  # 2 columns x 4 rows of 128 px tiles
    assert tumour.equals(shapely.box(256, 0, 640, 512))
    assert merged[0]["properties"]["measurements"]["tiles"] == 8
    assert merged[0]["properties"]["objectType"] == "annotation"


def test_merge_drops_small_pieces_and_handles_overlap(tiff_slide):
    with open_slide(tiff_slide) as slide:
        grid = tile_grid(slide, tile_size=64, resolution="2", stride=32, tissue=None)  # overlapping tiles
    predicted = np.zeros(len(grid), dtype=int)
    lone = np.flatnonzero((grid.grid_index == [4, 3]).all(axis=1))[0]
    predicted[lone] = 1
    geoms = merge_classes(grid, predicted, 2)
    # Cells (the stride square at each tile's centre) do not overlap: areas add up.
    assert geoms[1].area == pytest.approx(64 * 64)
    assert geoms[0].area + geoms[1].area == pytest.approx(len(grid) * 64 * 64)
    assert not geoms[0].intersection(geoms[1]).area
    assert merge_classes(grid, predicted, 2, min_area=64 * 64 + 1)[1].is_empty
    assert merge_classes(grid, predicted, 3)[2].is_empty


def test_map_pieces_are_connected_regions_or_tiles_with_their_class_scores(halves):
    probs = np.asarray(halves.probabilities)
    probs[0] = [0.7, 0.3]  # the first stroma tile, less sure: its region's score is the mean
    lone = int(np.flatnonzero(halves.grid.positions[:, 0] >= 512)[0])
    probs[lone] = [0.6, 0.4]  # a stroma tile among tumour ones: a region of its own
    regions = map_pieces(halves)
    assert [(p.label, p.n_tiles) for p in regions] == [(0, 8), (0, 1), (1, 11)]
    assert regions[0].geometry.equals(shapely.box(0, 0, 256, 512))
    assert regions[0].score == pytest.approx((0.7 + 7 * 0.9) / 8) and regions[1].score == pytest.approx(0.6)
    assert regions[2].geometry.area == 11 * 128 * 128 and regions[2].score == pytest.approx(0.9)
    assert [p.label for p in map_pieces(halves, min_area=128 * 128 + 1)] == [0, 1]  # the lone tile left out
    tiles = map_pieces(halves, tiles=True)
    assert len(tiles) == len(halves.grid) and all(p.n_tiles == 1 for p in tiles)
    x, y = halves.grid.positions[lone]
    assert tiles[lone].geometry.equals(shapely.box(x, y, x + 128, y + 128))
    assert (tiles[lone].label, tiles[lone].score) == (0, pytest.approx(0.6))


def test_shares_areas_and_the_resolution_of_a_classification(halves):
    assert class_shares({"a": 1, "b": 3, "c": 0}) == "b 75%, a 25%"
    assert class_shares(halves.counts()) == "tumour 60%, stroma 40%"
    assert halves.slide_mpp is None and halves.pixel_area(100.0) == 100.0  # no resolution: pixels² as given
    halves.slide.update(mpp=0.5)
    assert halves.slide_mpp == 0.5 and halves.pixel_area(100.0) == pytest.approx(400.0)
    halves.slide.update(mpp=None, magnification=20)  # 10 µm/px at 1x
    assert halves.slide_mpp == pytest.approx(0.5)
    assert halves.resolution is None
    halves.model["resolution"] = {"magnification": 5.0}
    assert str(halves.resolution) == "5x"


def test_write_geojson_and_csv(halves, tmp_path):
    path = write_geojson(halves, tmp_path / "out.geojson", min_area=0)
    data = json.loads(path.read_text())
    assert len(data["features"]) == 2 + 20
    rows = list(csv.DictReader(open(write_csv(halves, tmp_path / "out.csv"))))
    assert len(rows) == 20
    first = rows[0]
    assert (first["x"], first["y"], first["width"], first["name"], first["term_id"]) == (
        "0",
        "0",
        "128",
        "stroma",
        "11",
    )
    assert float(first["prob_stroma"]) == pytest.approx(0.9) and float(first["confidence"]) == pytest.approx(0.9)
    assert not list(tmp_path.glob("*.tmp"))


def test_overlay_paints_classes_and_probabilities(halves, tiff_slide):
    with open_slide(tiff_slide) as slide:
        picture = overlay(halves, slide, max_side=360, alpha=1.0, legend=False)
        heat = overlay(halves, slide, show="tumour", max_side=360, alpha=1.0)
        thumb = np.asarray(slide.thumbnail(360))
        with pytest.raises(ConfigurationError, match="stroma, tumour"):
            overlay(halves, slide, show="necrosis")
    assert picture.size == (360, 280)
    pixels = np.asarray(picture)
    colors = class_colors(["stroma", "tumour"])
    assert tuple(pixels[30, 30]) == colors[0]  # level-0 (60, 60): a stroma tile
    assert tuple(pixels[30, 200]) == colors[1]  # level-0 (400, 60): tumour
    assert np.array_equal(pixels[270, 10], thumb[270, 10])  # below the last row of tiles: untouched
    assert heat.size[0] == 360 and heat.size[1] > 280  # with its colour bar


def test_preview_and_colors(tiff_slide):
    with open_slide(tiff_slide) as slide:
        grid = tile_grid(slide, tile_size=64, resolution="2")
        picture = preview(slide, grid, max_side=200)
    assert picture.width == 200 and picture.height > 155
    assert parse_color("#e69f00") == parse_color("230,159,0") == (230, 159, 0)
    with pytest.raises(ConfigurationError, match="#rrggbb"):
        parse_color("orange")
    assert class_colors(["a", "b"], {"b": (1, 2, 3)})[1] == (1, 2, 3)
