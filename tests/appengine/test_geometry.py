"""Coordinates: image (top-left origin) <-> Cytomine (bottom-left origin), crop offsets, GeoJSON."""

from __future__ import annotations

import json

import pytest
from shapely.geometry import Point, Polygon, box

from mtdp_core.appengine.errors import TaskInputError
from mtdp_core.appengine.geometry import (
    crop_offset,
    geometry_json,
    parse_geojson,
    shift,
    to_cytomine,
    to_image,
    valid,
)


def test_flip_maps_top_left_pixels_to_bottom_left_coordinates_and_back():
    top_strip = box(0, 0, 100, 10)  # the top 10 rows of a 100 x 50 image
    assert to_cytomine(top_strip, 50).bounds == (0, 40, 100, 50)  # y up: the top is at y = height
    assert to_cytomine(Point(3, 0), 50).coords[0] == (3, 50)
    polygon = Polygon([(10, 5), (30, 5), (20, 25)])
    assert to_image(to_cytomine(polygon, 480), 480).equals(polygon)


def test_crop_offset_is_the_truncated_minimum_and_shifts_round_trip():
    geometry = Polygon([(127.6, 254.2), (344.9, 254.2), (344.9, 440.5), (127.6, 440.5)])
    assert crop_offset(geometry) == (127, 254)  # Java's (int): toward zero
    local = shift(geometry, -127, -254)
    assert local.bounds[0] == pytest.approx(0.6) and local.bounds[1] == pytest.approx(0.2)
    assert shift(local, 127, 254).equals_exact(geometry, 1e-9)


@pytest.mark.parametrize(
    "data",
    [
        {"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 3], [0, 0]]]},
        {
            "type": "Feature",
            "properties": {"classification": {"name": "x"}},
            "geometry": {"type": "Point", "coordinates": [1, 2]},
        },
        {
            "type": "FeatureCollection",
            "features": [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}}],
        },
    ],
)
def test_parse_geojson_accepts_geometry_feature_and_single_feature_collection(data):
    assert not parse_geojson(json.dumps(data), what="x").is_empty


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "it is not JSON"),
        ('{"type": "GeometryCollection", "geometries": []}', "got 'GeometryCollection'"),
        ('{"type": "FeatureCollection", "features": []}', "has 0 features"),
        ('{"type": "Polygon", "coordinates": "oops"}', "not a valid Polygon"),
    ],
)
def test_parse_geojson_says_what_is_wrong(text, message):
    with pytest.raises(TaskInputError, match=message):
        parse_geojson(text, what="the geometry of image")


def test_geometry_json_is_a_bare_geometry_and_valid_repairs_a_bow_tie():
    assert json.loads(geometry_json(box(0, 0, 1, 1)))["type"] == "Polygon"
    bow_tie = Polygon([(0, 0), (2, 2), (2, 0), (0, 2)])
    assert not bow_tie.is_valid
    fixed = valid(bow_tie)
    assert fixed.is_valid and fixed.geom_type in ("Polygon", "MultiPolygon") and fixed.area == pytest.approx(2.0)
