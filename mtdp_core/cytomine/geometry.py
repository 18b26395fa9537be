"""Cytomine's coordinates and the images' own.

- **Image coordinates** (files, QuPath, PIL, ``mtdp_core.slides``): pixels of level 0, origin at
  the top-left corner, y down.
- **Cytomine coordinates** (annotation locations, App Engine geometry inputs and outputs): pixels
  of level 0, origin at the bottom-left corner, y up: a point ``(x, y)`` of an image of height
  ``H`` is ``(x, H - y)`` in the other system (the map is its own inverse).
"""

from __future__ import annotations

from shapely import affinity
from shapely.geometry.base import BaseGeometry


def flip_y(geometry: BaseGeometry, height: float) -> BaseGeometry:
    """``(x, y) -> (x, height - y)``: image <-> Cytomine coordinates (the map is its own inverse)."""
    return affinity.affine_transform(geometry, [1, 0, 0, -1, 0, float(height)])


def to_cytomine(geometry: BaseGeometry, height: float) -> BaseGeometry:
    """Image coordinates (top-left origin) of an image of ``height`` -> Cytomine coordinates."""
    return flip_y(geometry, height)


def to_image(geometry: BaseGeometry, height: float) -> BaseGeometry:
    """Cytomine coordinates (bottom-left origin) of an image of ``height`` -> image coordinates."""
    return flip_y(geometry, height)
