"""Coordinates: image (top-left origin) <-> Cytomine (bottom-left origin)."""

from __future__ import annotations

from shapely.geometry import Point, Polygon, box

from mtdp_core.cytomine.geometry import to_cytomine, to_image


def test_flip_maps_top_left_pixels_to_bottom_left_coordinates_and_back():
    top_strip = box(0, 0, 100, 10)  # the top 10 rows of a 100 x 50 image
    assert to_cytomine(top_strip, 50).bounds == (0, 40, 100, 50)  # y up: the top is at y = height
    assert to_cytomine(Point(3, 0), 50).coords[0] == (3, 50)
    polygon = Polygon([(10, 5), (30, 5), (20, 25)])
    assert to_image(to_cytomine(polygon, 480), 480).equals(polygon)
