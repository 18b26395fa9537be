"""Geometry rules of the core and the coordinate conversion."""

from __future__ import annotations

import pytest
import shapely

from mtdp_core.server.errors import BadRequest
from mtdp_core.server.geometry import (
    box_in_cytomine,
    clip_to_image,
    cytomine_to_image,
    image_to_cytomine,
    parse_bbox,
    parse_wkt,
    stats,
)


def test_image_and_cytomine_coordinates_are_mirror_images():
    box = shapely.box(10, 5, 30, 15)  # image coordinates, y down
    converted = image_to_cytomine(box, 100)
    assert converted.bounds == (10, 85, 30, 95)
    assert cytomine_to_image(converted, 100).equals(box)
    assert box_in_cytomine(10, 5, 30, 15, 100).equals(converted)


def test_parse_and_clip_like_the_core():
    with pytest.raises(BadRequest, match="valid geometry"):
        parse_wkt("")
    with pytest.raises(BadRequest, match="not readable WKT"):
        parse_wkt("POLYGON((0 0, 1 1")
    with pytest.raises(BadRequest, match="Self-intersection"):
        parse_wkt("POLYGON((0 0, 10 10, 10 0, 0 10, 0 0))")
    clipped = clip_to_image(parse_wkt("POLYGON((-5 -5, 20 -5, 20 20, -5 20, -5 -5))"), 10, 10)
    assert clipped.equals(shapely.box(0, 0, 10, 10))
    with pytest.raises(BadRequest, match="dimension not valid"):
        clip_to_image(parse_wkt("POLYGON((1 1, 1.2 1, 1.2 5, 1 5, 1 1))"), 10, 10)
    assert clip_to_image(parse_wkt("POINT (3 3)"), 10, 10).equals(shapely.Point(3, 3))
    assert clip_to_image(parse_wkt("LINESTRING (1 1, 1 5)"), 10, 10).length == 4
    s = stats(shapely.box(0, 0, 4, 2))
    assert (s.area, s.perimeter, s.centroid_x, s.centroid_y) == (8, 12, 2, 1)


def test_bbox_filter_forms():
    assert parse_bbox("1,2,3,4").equals(shapely.box(1, 2, 3, 4))
    assert parse_bbox("POINT (1 1)").equals(shapely.Point(1, 1))
    with pytest.raises(BadRequest):
        parse_bbox("nonsense")
