"""Geometries as the App Engine exchanges them: in Cytomine coordinates (origin bottom-left;
``mtdp_core.cytomine.geometry`` converts them to and from image coordinates).

An annotation given to an ``image`` input arrives as the PNG crop of its bounding box plus
``<name>.geojson``: its geometry in Cytomine coordinates shifted by the crop's offset (the
bounding box's ``(int) minX, (int) minY``), i.e. relative to the crop's bottom-left corner.
Geometry outputs ``derived_from`` that input are shifted back by the same offset when Cytomine
turns them into annotations, so a task writes them relative to the crop, y up.

GeoJSON text is a bare geometry (``{"type": "Polygon", ...}``): the App Engine parses outputs with
JTS, refuses invalid geometries and geometries with ``properties`` (other than Cytomine's
``subType`` circles and rectangles), and knows Point, LineString, Polygon and their Multi forms.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import shapely
from shapely import affinity
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

from mtdp_core.appengine.errors import TaskInputError

#: Geometry types the App Engine accepts (GeometryType.SUPPORTED_TYPES).
SUPPORTED_TYPES = ("Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon")


def shift(geometry: BaseGeometry, dx: float, dy: float) -> BaseGeometry:
    return affinity.translate(geometry, float(dx), float(dy))


def crop_offset(geometry: BaseGeometry) -> tuple[int, int]:
    """The offset Cytomine records for the crop of an annotation (Cytomine coordinates): its
    bounding box's ``(int) minX, (int) minY`` (Java's cast: toward zero)."""
    minx, miny, _, _ = geometry.bounds
    return int(minx), int(miny)


def geometry_json(geometry: BaseGeometry) -> str:
    """Bare GeoJSON geometry text, as the App Engine reads geometry outputs."""
    return json.dumps(mapping(geometry), separators=(",", ":"))


def parse_geojson(data: Any, *, what: str) -> BaseGeometry:
    """A shapely geometry from GeoJSON (text or parsed): a geometry, a Feature, or a
    FeatureCollection of one feature; ``what`` names it in error messages."""
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise TaskInputError(f"Give {what} as GeoJSON: it is not JSON ({exc}).") from None
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features") or []
        if len(features) != 1:
            raise TaskInputError(f"Give one geometry in {what}: its FeatureCollection has {len(features)} features.")
        data = features[0]
    if isinstance(data, dict) and data.get("type") == "Feature":
        data = data.get("geometry")
    if not isinstance(data, dict) or data.get("type") not in SUPPORTED_TYPES:
        kind = data.get("type") if isinstance(data, dict) else type(data).__name__
        raise TaskInputError(
            f"Give {what} as a GeoJSON geometry ({', '.join(SUPPORTED_TYPES)}), a Feature or a "
            f"FeatureCollection of one: got {kind!r}."
        )
    try:
        geometry = shape(data)
    except (ValueError, TypeError, KeyError, AttributeError, shapely.errors.ShapelyError) as exc:
        raise TaskInputError(f"Fix {what}: its coordinates are not a valid {data.get('type')} ({exc}).") from None
    if geometry.is_empty:
        raise TaskInputError(f"Give a non-empty geometry in {what}.")
    return geometry


def read_geojson(path: str | os.PathLike, *, what: str | None = None) -> BaseGeometry:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskInputError(f"Give {what or path.name} as a readable UTF-8 GeoJSON file ({exc}).") from None
    return parse_geojson(text, what=what or path.name)


def valid(geometry: BaseGeometry) -> BaseGeometry:
    """``geometry`` made valid for JTS (a self-touching polygon drawn by hand would be refused)."""
    if geometry.is_valid:
        return geometry
    fixed = shapely.make_valid(geometry)
    if fixed.geom_type == "GeometryCollection":  # keep the areal part (a polygon's bow-tie, say)
        polygons = [g for g in fixed.geoms if g.geom_type in ("Polygon", "MultiPolygon")]
        fixed = shapely.union_all(polygons) if polygons else fixed
    return fixed
