"""What a slide classification gives back: GeoJSON for QuPath, CSV, overlay pictures.

Coordinates everywhere are level-0 pixels with the origin at the top-left corner (what
QuPath's *File > Import objects from file* and most viewers expect; Cytomine's origin is the
bottom-left corner: flip y with the slide height before pushing there).

- ``map_pieces``: the map as pieces (each class's tiles merged into connected regions, or the
  tiles themselves) with a class, a score and a number of tiles: what the Cytomine front ends
  push (the slide app) or give back (the App Engine's classify).
- ``to_geojson``: a FeatureCollection with one ``"tile"`` object per tile (its class as
  ``classification: {name, color}``, its probabilities as ``measurements``) and, optionally,
  one ``"annotation"`` (Multi)Polygon per class: the tiles of that class merged
  (``merge_classes``), pieces smaller than a minimum area dropped.
- ``write_csv``: one row per tile: box, tissue fraction, class, confidence, probabilities.
- ``overlay``: the slide's thumbnail with each tile painted in its class colour, or with one
  class's probability as a heat map, and a legend.
- ``preview``: the thumbnail with the tissue mask and the tile grid (before classifying).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from PIL import Image, ImageDraw, ImageFont
from shapely import affinity
from shapely.geometry import mapping
from shapely.geometry.base import BaseGeometry

from mtdp_core.errors import ConfigurationError
from mtdp_core.slides.classify import SlideClassification
from mtdp_core.slides.reader import Slide
from mtdp_core.slides.tiles import TileGrid

#: Class colours (RGB), in class order: distinct, readable on H&E, colour-blind friendly first
#: (Okabe-Ito), then more.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (120, 120, 120),
    (150, 80, 30),
    (90, 40, 160),
    (20, 200, 200),
    (200, 30, 60),
)


def class_colors(names: Sequence[str], overrides: dict[str, tuple[int, int, int]] | None = None) -> list:
    """An RGB colour per class: ``overrides`` by name, else the palette in order."""
    overrides = overrides or {}
    return [tuple(overrides.get(n, PALETTE[i % len(PALETTE)])) for i, n in enumerate(names)]


def parse_color(text: str) -> tuple[int, int, int]:
    """``"#e69f00"``, ``"e69f00"`` or ``"230,159,0"`` -> (230, 159, 0)."""
    t = text.strip().lstrip("#")
    try:
        if "," in t:
            rgb = tuple(int(v) for v in t.split(","))
        elif len(t) == 6:
            rgb = tuple(int(t[i : i + 2], 16) for i in (0, 2, 4))
        else:
            raise ValueError
        if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise ValueError
    except ValueError:
        raise ConfigurationError(f"Invalid colour {text!r}: use #rrggbb or r,g,b (0-255).") from None
    return rgb  # type: ignore[return-value]


# --------------------------------------------------------------------------- merging


def merge_classes(grid: TileGrid, index: np.ndarray, n_classes: int, *, min_area: float = 0.0) -> list[BaseGeometry]:
    """One geometry per class: the union of the cells (``TileGrid.cells``) of its tiles, in
    level-0 pixels, without the pieces smaller than ``min_area`` level-0 pixels² (empty
    geometries for classes without tiles). Cells are merged on the grid's integer lattice,
    so neighbouring tiles join exactly."""
    index = np.asarray(index)
    stride0 = grid.stride * grid.downsample
    cell = min(grid.size0, stride0)
    off = (grid.size0 - cell) / 2
    f = cell / stride0  # cell side in grid steps (1 unless tiles are further apart than their size)
    out = []
    for c in range(n_classes):
        gi = grid.grid_index[index == c]
        if not len(gi):
            out.append(shapely.Polygon())
            continue
        boxes = shapely.box(gi[:, 0], gi[:, 1], gi[:, 0] + f, gi[:, 1] + f)
        union = shapely.union_all(boxes)
        geom = affinity.affine_transform(union, [stride0, 0, 0, stride0, off, off])
        out.append(_drop_small(geom, min_area))
    return out


def _drop_small(geom: BaseGeometry, min_area: float) -> BaseGeometry:
    if min_area <= 0 or geom.is_empty:
        return geom
    parts = [p for p in getattr(geom, "geoms", [geom]) if p.area >= min_area]
    if not parts:
        return shapely.Polygon()
    return parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)


@dataclass(frozen=True)
class MapPiece:
    """One piece of a slide's map.

    Attributes:
        label: index of its class in ``SlideClassification.classes``.
        geometry: a polygon in level-0 pixels, origin top-left.
        score: the mean probability of its class over its tiles.
        n_tiles: the number of tiles it stands for.
    """

    label: int
    geometry: BaseGeometry
    score: float
    n_tiles: int


def map_pieces(result: SlideClassification, *, tiles: bool = False, min_area: float = 0.0) -> list[MapPiece]:
    """The map of ``result`` as pieces, class by class: each class's tiles merged
    (``merge_classes``) and split into connected polygons of at least ``min_area`` level-0
    pixels², or with ``tiles`` one piece per tile (its box, in tile order)."""
    probabilities, index = np.asarray(result.probabilities), result.index
    if tiles:
        boxes = result.grid.boxes.tolist()
        return [
            MapPiece(int(k), shapely.box(x, y, x + w, y + h), float(probabilities[i, k]), 1)
            for i, ((x, y, w, h), k) in enumerate(zip(boxes, index))
        ]
    cells = result.grid.cells()
    cx, cy = cells[:, 0] + cells[:, 2] / 2, cells[:, 1] + cells[:, 3] / 2
    pieces = []
    for k, merged in enumerate(merge_classes(result.grid, index, len(result.classes), min_area=min_area)):
        mine = np.flatnonzero(index == k)
        for polygon in getattr(merged, "geoms", [merged]):
            if polygon.is_empty:
                continue
            inside = mine[shapely.contains_xy(polygon, cx[mine], cy[mine])]  # a cell's centre: in its region
            score = float(probabilities[inside, k].mean()) if len(inside) else 0.0
            pieces.append(MapPiece(k, polygon, score, len(inside)))
    return pieces


# --------------------------------------------------------------------------- GeoJSON


def to_geojson(
    result: SlideClassification,
    *,
    tiles: bool = True,
    merged: bool = True,
    min_area: float = 0.0,
    colors: Sequence[tuple[int, int, int]] | None = None,
) -> dict:
    """A GeoJSON FeatureCollection of the predictions, for QuPath (0.4+) and GIS tools.

    Args:
        tiles: one ``"tile"`` object per tile, with ``classification`` and ``measurements``
            (``prob_<class>`` and ``tissue``).
        merged: one ``"annotation"`` per class: its tiles merged, ``min_area`` level-0 px².
        colors: RGB per class (default: ``class_colors``).
    """
    features = geojson_features(result, tiles=tiles, merged=merged, min_area=min_area, colors=colors)
    return {"type": "FeatureCollection", "features": list(features)}


def geojson_features(
    result: SlideClassification,
    *,
    tiles: bool = True,
    merged: bool = True,
    min_area: float = 0.0,
    colors: Sequence[tuple[int, int, int]] | None = None,
) -> Iterator[dict]:
    """The features of ``to_geojson``, one at a time (merged classes first, then tiles)."""
    names = [c.name for c in result.classes]
    colors = list(colors or class_colors(names))
    index = result.index
    if merged:
        for c, geom in enumerate(merge_classes(result.grid, index, len(names), min_area=min_area)):
            if geom.is_empty:
                continue
            yield {
                "type": "Feature",
                "geometry": _rounded(mapping(geom)),
                "properties": {
                    "objectType": "annotation",
                    "name": names[c],
                    "classification": {"name": names[c], "color": list(colors[c])},
                    "measurements": {"tiles": int((index == c).sum()), "area_px": round(geom.area, 1)},
                },
            }
    if tiles:
        probs, tissue = np.asarray(result.probabilities), result.grid.tissue_fraction
        for i, (x, y, w, h) in enumerate(result.grid.boxes.tolist()):
            c = int(index[i])
            ring = [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]]
            yield {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [[[_num(a), _num(b)] for a, b in ring]]},
                "properties": {
                    "objectType": "tile",
                    "classification": {"name": names[c], "color": list(colors[c])},
                    "measurements": {
                        **{f"prob_{n}": round(float(p), 5) for n, p in zip(names, probs[i])},
                        "tissue": round(float(tissue[i]), 4),
                    },
                },
            }


def write_geojson(result: SlideClassification, path: str | os.PathLike, **kwargs) -> Path:
    """``to_geojson`` written to ``path`` (compact JSON), one feature at a time (memory does not
    grow with the number of tiles), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        handle.write('{"type":"FeatureCollection","features":[')
        features = geojson_features(result, **kwargs)
        handle.writelines(("," if i else "") + json.dumps(f, separators=(",", ":")) for i, f in enumerate(features))
        handle.write("]}")
    os.replace(tmp, path)
    return path


def _num(v: float) -> float | int:
    r = round(float(v), 3)
    return int(r) if r == int(r) else r


def _rounded(geo: dict) -> dict:
    def walk(obj):
        if isinstance(obj, (list, tuple)):
            if obj and isinstance(obj[0], (int, float)):
                return [_num(v) for v in obj]
            return [walk(o) for o in obj]
        return obj

    return {"type": geo["type"], "coordinates": walk(geo["coordinates"])}


# --------------------------------------------------------------------------- CSV


def write_csv(result: SlideClassification, path: str | os.PathLike) -> Path:
    """One row per tile: level-0 box, grid column/row, tissue fraction, predicted class (label,
    name, Cytomine term id), confidence and every class's probability."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    names = [c.name for c in result.classes]
    index, conf, probs = result.index, result.confidence, np.asarray(result.probabilities)
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["x", "y", "width", "height", "col", "row", "tissue", "label", "name", "term_id", "confidence"]
            + [f"prob_{n}" for n in names]
        )
        for i, (x, y, w, h) in enumerate(result.grid.boxes.tolist()):
            c = result.classes[int(index[i])]
            writer.writerow(
                [_num(x), _num(y), _num(w), _num(h), *result.grid.grid_index[i].tolist()]
                + [f"{result.grid.tissue_fraction[i]:.4f}", c.label, c.name, "" if c.id is None else c.id]
                + [f"{conf[i]:.5f}"]
                + [f"{p:.5f}" for p in probs[i]]
            )
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- pictures


def overlay(
    result: SlideClassification,
    slide: Slide,
    *,
    show: str = "classes",
    max_side: int = 1024,
    alpha: float = 0.45,
    colors: Sequence[tuple[int, int, int]] | None = None,
    cmap: str = "inferno",
    legend: bool = True,
) -> Image.Image:
    """The slide's thumbnail with the predictions painted over it.

    Args:
        show: ``"classes"`` (each tile in its class colour) or a class name (that class's
            probability as a heat map, ``cmap``).
        max_side: longest side of the thumbnail, pixels.
        alpha: opacity of the paint, in [0, 1].
    """
    names = [c.name for c in result.classes]
    if show != "classes" and show not in names:
        raise ConfigurationError(f"Cannot show {show!r}: use 'classes' or one of the classes {', '.join(names)}.")
    if not 0 <= alpha <= 1:
        raise ConfigurationError(f"Invalid overlay opacity {alpha!r}: use a value in [0, 1].")
    thumb = slide.thumbnail(max_side)
    W, H = slide.dimensions
    sx, sy = thumb.width / W, thumb.height / H
    if show == "classes":
        palette = list(colors or class_colors(names))
        fill = [palette[i] for i in result.index]
    else:
        from matplotlib import colormaps

        p = np.asarray(result.probabilities)[:, names.index(show)]
        fill = [tuple(int(255 * v) for v in rgba[:3]) for rgba in colormaps[cmap](p)]
    layer = Image.new("RGBA", thumb.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    a = int(round(255 * alpha))
    for (x, y, w, h), color in zip(result.grid.cells().tolist(), fill):
        draw.rectangle([x * sx, y * sy, (x + w) * sx - 1, (y + h) * sy - 1], fill=(*color, a))
    picture = Image.alpha_composite(thumb.convert("RGBA"), layer).convert("RGB")
    if not legend:
        return picture
    if show == "classes":
        counts = result.counts()
        entries = [(palette[i], f"{n} ({counts[n]})") for i, n in enumerate(names)]
        return _with_legend(picture, entries)
    return _with_colorbar(picture, f"probability of {show}", cmap)


def preview(slide: Slide, grid: TileGrid, *, max_side: int = 1024) -> Image.Image:
    """The thumbnail with the tissue mask (green) and the outline of every tile (blue)."""
    thumb = slide.thumbnail(max_side).convert("RGBA")
    W, H = slide.dimensions
    sx, sy = thumb.width / W, thumb.height / H
    layer = Image.new("RGBA", thumb.size, (0, 0, 0, 0))
    if grid.tissue is not None:
        mask = grid.tissue.to_image().resize(thumb.size, Image.Resampling.NEAREST)
        green = Image.new("RGBA", thumb.size, (0, 200, 80, 90))
        layer.paste(green, mask=mask)
    draw = ImageDraw.Draw(layer)
    for x, y, w, h in grid.boxes.tolist():
        draw.rectangle([x * sx, y * sy, (x + w) * sx - 1, (y + h) * sy - 1], outline=(30, 60, 220, 230))
    picture = Image.alpha_composite(thumb, layer).convert("RGB")
    return _with_legend(picture, [((0, 200, 80), "tissue"), ((30, 60, 220), grid.describe())])


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _with_legend(picture: Image.Image, entries: list[tuple[tuple[int, int, int], str]]) -> Image.Image:
    size = max(12, picture.width // 60)
    font = _font(size)
    pad, box = size // 2, size
    widths = [box + pad + int(ImageDraw.Draw(picture).textlength(text, font=font)) + 2 * pad for _, text in entries]
    rows, x = [[]], 0
    for e, w in zip(entries, widths):
        if x + w > picture.width and rows[-1]:
            rows.append([])
            x = 0
        rows[-1].append((e, w))
        x += w
    height = len(rows) * (box + pad) + pad
    out = Image.new("RGB", (picture.width, picture.height + height), (255, 255, 255))
    out.paste(picture, (0, 0))
    draw = ImageDraw.Draw(out)
    for r, items in enumerate(rows):
        x, y = pad, picture.height + pad + r * (box + pad)
        for (color, text), w in items:
            draw.rectangle([x, y, x + box, y + box], fill=tuple(color), outline=(60, 60, 60))
            # Pillow's default font has no µ.
            draw.text((x + box + pad, y), text.replace("µ", "u"), fill=(0, 0, 0), font=font)
            x += w
    return out


def _with_colorbar(picture: Image.Image, title: str, cmap: str) -> Image.Image:
    from matplotlib import colormaps

    size = max(12, picture.width // 60)
    font = _font(size)
    pad = size // 2
    bar_w = max(64, picture.width // 3)
    height = 2 * size + 3 * pad
    out = Image.new("RGB", (picture.width, picture.height + height), (255, 255, 255))
    out.paste(picture, (0, 0))
    ramp = (colormaps[cmap](np.linspace(0, 1, bar_w))[:, :3] * 255).astype(np.uint8)
    bar = Image.fromarray(np.repeat(ramp[None], size, axis=0))
    y = picture.height + pad
    out.paste(bar, (pad, y))
    draw = ImageDraw.Draw(out)
    draw.text((pad, y + size + pad // 2), "0", fill=(0, 0, 0), font=font)
    draw.text((pad + bar_w - size // 2, y + size + pad // 2), "1", fill=(0, 0, 0), font=font)
    draw.text((2 * pad + bar_w, y), title, fill=(0, 0, 0), font=font)
    return out
