"""Annotation geometries: WKT parsing and validation as a Cytomine core does it, and the
conversion between image coordinates and Cytomine's.

Coordinate systems
------------------
Cytomine stores geometries with the origin at the **bottom-left** corner of the image and
y pointing **up** (checked in the cores: ``GeometryUtils.getGeometryBoundaries`` takes
``topLeftY = maxY``; the legacy image server reads row ``imageHeight - topLeftY``; PIMS is
called with ``X-Annotation-Origin: LEFT_BOTTOM``). Image files, VOC boxes, CSV boxes and
GeoJSON exported by QuPath use the top-left origin with y pointing down. The conversion is
``y_cytomine = image_height - y_image`` (x is unchanged), applied everywhere in this server:
importers, crops, masks and windows. A box covering image rows ``[y0, y1)`` and columns
``[x0, x1)`` is therefore ``POLYGON((x0 H-y1, x1 H-y1, x1 H-y0, x0 H-y0, x0 H-y1))`` and its
crop is exactly those pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import shapely
from shapely import affinity
from shapely.errors import ShapelyError
from shapely.geometry import Polygon, box
from shapely.geometry.base import BaseGeometry
from shapely.validation import make_valid

from mtdp_core.server.errors import BadRequest

#: Side of the square a single point is cropped with (the core's getGeometryBoundaries).
POINT_ENVELOPE = 100


def parse_wkt(text: object) -> BaseGeometry:
    """Parse a WKT location; 400 when it is missing, unreadable or invalid (as the core)."""
    if not isinstance(text, str) or not text.strip():
        raise BadRequest(f"Annotation must have a valid geometry: {text!r}")
    try:
        geometry = shapely.from_wkt(text)
    except (ShapelyError, ValueError, TypeError):
        raise BadRequest(f"Annotation location is not valid: {text[:120]!r} is not readable WKT") from None
    if geometry is None or geometry.is_empty:
        raise BadRequest(f"Annotation location is not valid: {text[:120]!r} is empty")
    if not geometry.is_valid:
        raise BadRequest(f"Annotation location is not valid: {shapely.is_valid_reason(geometry)} in {text[:80]!r}")
    return geometry


def clip_to_image(geometry: BaseGeometry, width: int | None, height: int | None) -> BaseGeometry:
    """Cut what lies outside ``[0, width] x [0, height]``, then check the result has a size.

    Mirrors ``UserAnnotationService.add``: geometries reaching outside the image are intersected
    with the image rectangle; a result whose rounded bounding box has a zero side (other than a
    line or a single point) is refused with "Annotation dimension not valid".
    """
    if width and height:
        minx, miny, maxx, maxy = geometry.bounds
        if minx < 0 or miny < 0 or maxx > width or maxy > height:
            inside = box(0, 0, min(maxx, width), min(maxy, height))
            geometry = geometry.intersection(inside)
    if geometry.is_empty:
        raise BadRequest("Annotation dimension not valid: the geometry lies outside the image")
    if geometry.geom_type != "LineString" and shapely.get_num_coordinates(geometry) > 1:
        minx, miny, maxx, maxy = geometry.bounds
        if round(maxx - minx) == 0 or round(maxy - miny) == 0:
            raise BadRequest(
                f"Annotation dimension not valid: bounding box {maxx - minx:g} x {maxy - miny:g} pixels rounds to zero"
            )
    if not geometry.is_valid:
        geometry = make_valid(geometry)
    return geometry


@dataclass(frozen=True)
class GeometryStats:
    """What the core computes and stores next to a location."""

    wkt: str
    area: float
    perimeter: float
    centroid_x: float
    centroid_y: float
    minx: float
    miny: float
    maxx: float
    maxy: float


def stats(geometry: BaseGeometry) -> GeometryStats:
    centroid = geometry.centroid
    minx, miny, maxx, maxy = geometry.bounds
    return GeometryStats(
        wkt=geometry.wkt,
        area=float(geometry.area),
        perimeter=float(geometry.length),
        centroid_x=float(centroid.x) if not centroid.is_empty else float(minx),
        centroid_y=float(centroid.y) if not centroid.is_empty else float(miny),
        minx=float(minx),
        miny=float(miny),
        maxx=float(maxx),
        maxy=float(maxy),
    )


def image_to_cytomine(geometry: BaseGeometry, image_height: float) -> BaseGeometry:
    """Top-left origin (y down) -> Cytomine's bottom-left origin (y up)."""
    return affinity.affine_transform(geometry, [1, 0, 0, -1, 0, image_height])


# The map is its own inverse.
cytomine_to_image = image_to_cytomine


def box_in_cytomine(xmin: float, ymin: float, xmax: float, ymax: float, image_height: float) -> Polygon:
    """A box given in image coordinates (top-left origin) as a Cytomine polygon."""
    return box(xmin, image_height - ymax, xmax, image_height - ymin)


def parse_bbox(text: str) -> BaseGeometry:
    """The ``bbox`` listing filter: a WKT geometry or ``"minx,miny,maxx,maxy"``."""
    parts = text.split(",")
    if len(parts) == 4:
        try:
            minx, miny, maxx, maxy = (float(p) for p in parts)
        except ValueError:
            pass
        else:
            return box(minx, miny, maxx, maxy)
    try:
        return shapely.from_wkt(text)
    except (ShapelyError, ValueError):
        raise BadRequest(f"Geometry cannot be parsed for annotation search request: {text[:120]!r}") from None
