"""Whole-slide images: open, read at a resolution, find tissue, tile, classify.

>>> from mtdp_core.slides import open_slide, tile_grid, classify_slide   # doctest: +SKIP
>>> slide = open_slide("CMU-1-Small-Region.svs")                         # doctest: +SKIP
>>> slide.mpp, slide.level_count                                         # doctest: +SKIP
(0.499, 1)
>>> region = slide.read_region((1000, 1000, 448, 448), (224, 224))       # doctest: +SKIP
>>> grid = tile_grid(slide, tile_size=224, resolution="0.5")             # doctest: +SKIP
>>> result = classify_slide("model.npz", slide)                          # doctest: +SKIP

See docs/slides.md. ``reader`` opens files (OpenSlide or Pillow) and reads regions from the
best level; ``tissue`` finds tissue on a thumbnail; ``tiles`` lays tile grids and feeds tiles
to the feature pipeline; ``classify`` runs a saved model over them; ``outputs`` writes
GeoJSON (QuPath), CSV and overlay pictures.
"""

from mtdp_core.slides.reader import (
    SLIDE_EXTENSIONS,
    Resolution,
    Slide,
    SlideSource,
    cached_slide,
    open_slide,
)
from mtdp_core.slides.tiles import TileGrid, TileImage, tile_grid
from mtdp_core.slides.tissue import TISSUE_METHODS, TissueDetector, TissueMask, otsu_threshold

__all__ = [
    "SLIDE_EXTENSIONS",
    "TISSUE_METHODS",
    "Resolution",
    "Slide",
    "SlideSource",
    "TileGrid",
    "TileImage",
    "TissueDetector",
    "TissueMask",
    "cached_slide",
    "open_slide",
    "otsu_threshold",
    "tile_grid",
]
