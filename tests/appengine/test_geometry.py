"""App Engine geometries: crop offsets, GeoJSON (coordinates: tests/cytomine/test_geometry.py)."""

from __future__ import annotations

import json

import pytest
from shapely.geometry import Polygon, box

from mtdp_core.appengine.errors import TaskInputError
from mtdp_core.appengine.geometry import (
    crop_offset,
    geometry_json,
    parse_geojson,
    shift,
    valid,
)


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
