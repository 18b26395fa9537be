"""Tile grids over a slide, and tiles as lazy images for the feature pipeline.

``tile_grid(slide, tile_size=224, resolution="0.5")`` lays square tiles of ``tile_size``
pixels at the target resolution (``tile_size * downsample`` level-0 pixels each) on a grid
aligned with the slide's top-left corner, ``stride`` pixels apart (overlap = tile_size -
stride), over the whole slide or inside given regions (shapely geometries in level-0
pixels), and keeps those with at least ``min_tissue`` tissue (``tissue.py``) and, with
regions, at least ``min_region`` of their area inside them.

The ``TileGrid`` is a sequence of ``TileImage``: small picklable descriptions (slide source,
level-0 box, output size) that the feature pipeline's DataLoader workers decode themselves,
each opening the slide once (``reader.cached_slide``). Nothing but coordinates is held per
tile, so memory does not grow with the slide: a 100,000 x 100,000 px slide tiled at 224 px
is ~200,000 tiles, a few MB of coordinates.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
import shapely
from PIL import Image
from shapely.geometry.base import BaseGeometry

from mtdp_core.errors import ConfigurationError, NoTissueError, RegionOutsideSlideError
from mtdp_core.slides.reader import Box, Resolution, Slide, SlideSource, cached_slide
from mtdp_core.slides.tissue import TissueDetector, TissueMask

logger = logging.getLogger(__name__)

#: Grid positions examined at most (a 100,000 px slide at 0.25 µm/px, 224 px tiles at
#: 0.5 µm/px, is 50,000): far above any real need, it stops a 1-pixel stride on a huge slide.
MAX_GRID_POSITIONS = 20_000_000


@dataclass(frozen=True)
class TileImage:
    """One tile of a slide, decoded when ``open_image()`` is called (in a DataLoader worker).

    Implements ``mtdp_core.data.images.LazyImage``: the feature pipeline takes it where it
    takes an image path.
    """

    source: SlideSource
    box: Box
    size: tuple[int, int]
    slide_key: str = ""

    def open_image(self) -> Image.Image:
        """The tile as an RGB image of ``size`` (the slide is opened once per process)."""
        return cached_slide(self.source).read_region(self.box, self.size)

    def fingerprint(self) -> str:
        """Identity of the pixels: the slide file (path, size, mtime) and the box read."""
        return f"{self.slide_key}\0{self.box}\0{self.size}"

    def __str__(self) -> str:
        x, y, w, h = self.box
        return f"{self.source.path} tile x={x:.0f} y={y:.0f} {w:.0f}x{h:.0f}"


@dataclass
class TileGrid(Sequence[TileImage]):
    """Tiles of one slide: a sequence of ``TileImage`` for the feature pipeline.

    Attributes:
        source: the slide.
        slide_size: level-0 (width, height).
        positions: float64 (n, 2) level-0 top-left corner of each tile.
        grid_index: int64 (n, 2) column and row of each tile on the grid (position / stride).
        tile_size: tile side in pixels at the grid's resolution (the model's input).
        stride: grid step in pixels at that resolution.
        downsample: level-0 pixels per tile pixel.
        tissue_fraction: float32 (n,) tissue fraction of each tile (1 without detection).
        mpp: µm per tile pixel, when the slide's resolution is known.
        slide_key: fingerprint of the slide file (see ``SlideSource.key``).
        params: how the grid was made (for reports and cache keys).
        tissue: the tissue mask used, if any.
    """

    source: SlideSource
    slide_size: tuple[int, int]
    positions: np.ndarray
    grid_index: np.ndarray
    tile_size: int
    stride: int
    downsample: float
    tissue_fraction: np.ndarray
    mpp: float | None = None
    slide_key: str = ""
    params: dict = field(default_factory=dict)
    tissue: TissueMask | None = None

    def __len__(self) -> int:
        return len(self.positions)

    @overload
    def __getitem__(self, index: int) -> TileImage: ...

    @overload
    def __getitem__(self, index: slice) -> list[TileImage]: ...

    def __getitem__(self, index: int | slice) -> TileImage | list[TileImage]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        x, y = self.positions[index]
        s = self.size0
        return TileImage(self.source, (float(x), float(y), s, s), (self.tile_size, self.tile_size), self.slide_key)

    @property
    def size0(self) -> float:
        """Tile side in level-0 pixels."""
        return self.tile_size * self.downsample

    @property
    def boxes(self) -> np.ndarray:
        """float64 (n, 4): level-0 ``x, y, width, height`` of each tile."""
        s = self.size0
        return np.column_stack([self.positions, np.full(len(self), s), np.full(len(self), s)])

    def cells(self) -> np.ndarray:
        """float64 (n, 4): the part of the slide each tile stands for: the tile itself, or with
        overlapping tiles, the stride-sized square at its centre (cells tile the plane without
        overlap, so merging them per class gives disjoint regions)."""
        s, c = self.size0, min(self.size0, self.stride * self.downsample)
        off = (s - c) / 2
        return np.column_stack([self.positions + off, np.full(len(self), c), np.full(len(self), c)])

    def fingerprint(self) -> str:
        """A digest of the slide file and every tile box: the identity of the grid's pixels."""
        h = hashlib.sha256()
        h.update(f"{self.slide_key}\0{self.tile_size}\0{self.downsample!r}\0".encode())
        h.update(np.ascontiguousarray(self.positions, dtype=np.float64).tobytes())
        return h.hexdigest()

    def subset(self, keep: np.ndarray) -> TileGrid:
        """The tiles selected by ``keep`` (bool mask or indices)."""
        return TileGrid(
            self.source,
            self.slide_size,
            self.positions[keep],
            self.grid_index[keep],
            self.tile_size,
            self.stride,
            self.downsample,
            self.tissue_fraction[keep],
            self.mpp,
            self.slide_key,
            dict(self.params),
            self.tissue,
        )

    def describe(self) -> str:
        res = f"{self.mpp:.3g} µm/px" if self.mpp else f"downsample {self.downsample:.3g}"
        return f"{len(self)} tiles of {self.tile_size} px at {res} (stride {self.stride} px)"


def tile_grid(
    slide: Slide,
    *,
    tile_size: int = 224,
    resolution: Resolution | str | float | None = None,
    stride: int | None = None,
    regions: BaseGeometry | Iterable[BaseGeometry] | None = None,
    tissue: TissueDetector | TissueMask | None = TissueDetector(),  # noqa: B008 - frozen dataclass
    min_tissue: float = 0.5,
    min_region: float = 0.5,
    edge_tiles: bool = False,
) -> TileGrid:
    """Square tiles over the tissue of ``slide`` (or inside ``regions``).

    Args:
        slide: an open slide.
        tile_size: tile side in pixels at ``resolution`` (the model's input size).
        resolution: where tiles are read: µm/px (``0.5``, ``"0.5mpp"``), magnification
            (``"20x"``), or None for level 0.
        stride: grid step in pixels at ``resolution`` (default ``tile_size``: no overlap).
        regions: shapely (multi)polygons in level-0 pixels, origin top-left: only tiles with
            at least ``min_region`` of their area inside them.
        tissue: a TissueDetector (run on the slide), a TissueMask (already computed), or None
            (every tile counts as tissue).
        min_tissue: least tissue fraction of a kept tile, in [0, 1].
        min_region: least fraction of a kept tile inside ``regions``, in (0, 1].
        edge_tiles: also keep tiles that cross the right or bottom border (read with the
            background colour outside the slide).

    Raises:
        MissingResolutionError: ``resolution`` needs a slide resolution the file lacks.
        RegionOutsideSlideError: ``regions`` do not overlap the slide.
        NoTissueError: no tile passes the thresholds.
    """
    if not isinstance(tile_size, int) or tile_size < 8:
        raise ConfigurationError(f"Invalid tile size {tile_size!r}: use an integer of at least 8 pixels (e.g. 224).")
    stride = tile_size if stride is None else stride
    if not isinstance(stride, int) or stride < 1:
        raise ConfigurationError(f"Invalid stride {stride!r}: use a positive number of pixels (default: tile size).")
    for name, value, low in (("min_tissue", min_tissue, 0.0), ("min_region", min_region, 1e-9)):
        if not (isinstance(value, (int, float)) and low <= value <= 1):
            raise ConfigurationError(f"Invalid {name} {value!r}: use a fraction in [{low:g}, 1].")
    W, H = slide.dimensions
    ds = slide.downsample_for(resolution)
    size0, stride0 = tile_size * ds, stride * ds
    area = _region_area(slide, regions)
    minx, miny, maxx, maxy = area.bounds if area is not None else (0.0, 0.0, float(W), float(H))
    # Grid columns whose tile overlaps the area and (unless edge_tiles) lies inside the slide.
    last_x, last_y = (W - 1e-9, H - 1e-9) if edge_tiles else (W - size0, H - size0)
    i0, j0 = max(0, math.ceil((minx - size0) / stride0)), max(0, math.ceil((miny - size0) / stride0))
    i1, j1 = math.floor(min(maxx - 1e-9, last_x) / stride0), math.floor(min(maxy - 1e-9, last_y) / stride0)
    n_cols, n_rows = max(0, i1 - i0 + 1), max(0, j1 - j0 + 1)
    if n_cols * n_rows > MAX_GRID_POSITIONS:
        raise ConfigurationError(
            f"A grid of {n_cols}x{n_rows} tiles on {slide.name}: over {MAX_GRID_POSITIONS:,} positions; use a "
            "larger stride, a coarser resolution or smaller regions."
        )
    cols, rows = np.meshgrid(np.arange(i0, i0 + n_cols), np.arange(j0, j0 + n_rows))
    index = np.column_stack([cols.ravel(), rows.ravel()]).astype(np.int64)
    positions = index.astype(np.float64) * stride0
    boxes = np.column_stack([positions, np.full(len(index), size0), np.full(len(index), size0)])
    params: dict[str, Any] = {
        "tile_size": tile_size,
        "stride": stride,
        "resolution": None if resolution is None else Resolution.parse(resolution).to_dict(),
        "downsample": ds,
        "min_tissue": min_tissue,
        "edge_tiles": edge_tiles,
    }
    keep = np.ones(len(index), dtype=bool)
    if area is not None:
        inside = _fraction_inside(boxes, area)
        keep &= inside >= min_region - 1e-9
        params.update(regions=len(getattr(area, "geoms", [area])), min_region=min_region)
    mask: TissueMask | None
    if isinstance(tissue, TissueDetector):
        mask = tissue.detect(slide, max_downsample=max(1.0, size0 / 4))
        params["tissue"] = tissue.to_dict()
    elif isinstance(tissue, TissueMask):
        mask = tissue
        params["tissue"] = "given"
    elif tissue is None:
        mask = None
        params["tissue"] = None
    else:
        raise ConfigurationError(f"Invalid tissue {tissue!r}: give a TissueDetector, a TissueMask or None.")
    fraction = np.ones(len(index), dtype=np.float32)
    if mask is not None:
        fraction[keep] = mask.fraction(boxes[keep]).astype(np.float32)
        keep &= fraction >= min_tissue - 1e-6
    grid = TileGrid(
        slide.source,
        (W, H),
        positions[keep],
        index[keep],
        tile_size,
        stride,
        ds,
        fraction[keep],
        None if slide.mpp is None else slide.mpp * ds,
        slide.source.key(),
        params,
        mask,
    )
    if not len(grid):
        raise NoTissueError(_no_tiles_message(slide, mask, area, min_tissue, int(len(index))))
    logger.info("%s: %s", slide.name, grid.describe())
    return grid


def _region_area(slide: Slide, regions: Any) -> BaseGeometry | None:
    """The union of ``regions`` clipped to the slide, or None for the whole slide."""
    if regions is None:
        return None
    geoms = [regions] if isinstance(regions, BaseGeometry) else list(regions)
    if not geoms:
        raise ConfigurationError("An empty list of regions: give at least one polygon, or none to tile the slide.")
    for g in geoms:
        if not isinstance(g, BaseGeometry):
            raise ConfigurationError(f"Invalid region {g!r}: give shapely polygons in level-0 pixel coordinates.")
    union = shapely.union_all([shapely.make_valid(g) for g in geoms])
    W, H = slide.dimensions
    clipped = union.intersection(shapely.box(0, 0, W, H))
    if clipped.is_empty or clipped.area <= 0:
        b = union.bounds
        raise RegionOutsideSlideError(
            f"Regions with bounds x {b[0]:g}..{b[2]:g}, y {b[1]:g}..{b[3]:g} do not overlap slide {slide.name} "
            f"({W}x{H} px) or have no area: give polygons in level-0 pixels, origin at the top-left corner "
            "(Cytomine's origin is bottom-left: flip y first)."
        )
    if clipped.area < union.area * 0.999:
        outside = 100 * (1 - clipped.area / union.area)
        logger.warning("%.1f%% of the regions lies outside slide %s and is ignored", outside, slide.name)
    return clipped


def _fraction_inside(boxes: np.ndarray, area: BaseGeometry) -> np.ndarray:
    out = np.zeros(len(boxes))
    if not len(boxes):
        return out
    minx, miny, maxx, maxy = area.bounds
    near = (
        (boxes[:, 0] < maxx)
        & (boxes[:, 1] < maxy)
        & (boxes[:, 0] + boxes[:, 2] > minx)
        & (boxes[:, 1] + boxes[:, 3] > miny)
    )
    b = boxes[near]
    polys = shapely.box(b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3])
    shapely.prepare(area)
    inside = shapely.area(shapely.intersection(polys, area)) / (b[:, 2] * b[:, 3])
    out[near] = inside
    return out


def _no_tiles_message(
    slide: Slide, mask: TissueMask | None, area: BaseGeometry | None, min_tissue: float, candidates: int
) -> str:
    where = "inside the regions given" if area is not None else "on the slide"
    if candidates == 0:
        return (
            f"No tile fits {where} of {slide.name} ({slide.dimensions[0]}x{slide.dimensions[1]} px): the tiles are "
            "larger than the slide or the regions; use a smaller tile size or a coarser resolution, or edge tiles."
        )
    if mask is not None and mask.area_fraction == 0:
        return (
            f"No tissue found on {slide.name} (threshold {mask.threshold}): check that the slide is not blank; for "
            "faint stains use the otsu_gray method or a lower fixed threshold, or tile without tissue detection."
        )
    return (
        f"No tile of {slide.name} has {100 * min_tissue:.0f}% tissue {where} ({candidates} examined, tissue covers "
        f"{100 * (mask.area_fraction if mask is not None else 1):.1f}% of the slide): lower min_tissue, check the "
        "regions, or tile without tissue detection."
    )
