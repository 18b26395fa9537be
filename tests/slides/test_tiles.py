"""Tile grids: positions in level-0 pixels, resolution, stride, tissue and region filters, edge
tiles; tiles as lazy images decoded by DataLoader workers into the feature pipeline."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import shapely

from mtdp_core.errors import MissingResolutionError, NoTissueError, RegionOutsideSlideError
from mtdp_core.slides.reader import open_slide
from mtdp_core.slides.tiles import TileGrid, tile_grid
from mtdp_core.slides.tissue import TissueDetector
from mtdp_core.transfer.cache import fingerprint_inputs
from mtdp_core.transfer.features import FeatureExtractor
from tests.helpers.slides import SIZE


def test_grid_without_tissue_detection_covers_the_slide(tiff_slide):
    with open_slide(tiff_slide) as slide:
        grid = tile_grid(slide, tile_size=64, resolution="2", tissue=None)
    assert isinstance(grid, TileGrid)
    assert grid.downsample == pytest.approx(2.0)  # 2 µm/px on a 1 µm/px slide
    assert grid.size0 == pytest.approx(128)
    assert grid.mpp == pytest.approx(2.0)
    # Whole tiles only: floor(720 / 128) x floor(560 / 128) = 5 x 4.
    assert len(grid) == 20
    assert np.array_equal(np.unique(grid.positions[:, 0]), np.arange(5) * 128.0)
    assert np.array_equal(np.unique(grid.positions[:, 1]), np.arange(4) * 128.0)
    assert (grid.positions + grid.size0 <= np.array(SIZE)).all()
    assert np.array_equal(grid.positions, grid.grid_index * 128.0)
    assert (grid.tissue_fraction == 1).all()


def test_stride_overlap_and_edge_tiles(tiff_slide):
    with open_slide(tiff_slide) as slide:
        overlapping = tile_grid(slide, tile_size=64, resolution="2", stride=32, tissue=None)
        edges = tile_grid(slide, tile_size=64, resolution="2", tissue=None, edge_tiles=True)
    assert len(overlapping) == 10 * 7  # x in 0, 64, ..., 576 (<= 720 - 128), y in 0, ..., 384
    assert np.diff(np.unique(overlapping.positions[:, 0]))[0] == 64
    cells = overlapping.cells()
    assert cells[0].tolist() == [32.0, 32.0, 64.0, 64.0]  # the stride square at the tile's centre
    assert len(edges) == 6 * 5  # partial tiles on the right and bottom borders
    tile = edges[len(edges) - 1].open_image()
    assert tile.size == (64, 64)
    assert (np.asarray(tile)[-20:, :] == 255).all()  # below the slide: background


def test_tissue_filter_keeps_tiles_with_enough_tissue(tiff_slide):
    with open_slide(tiff_slide) as slide:
        everything = tile_grid(slide, tile_size=32, resolution="2", tissue=None)
        half = tile_grid(slide, tile_size=32, resolution="2", min_tissue=0.5)
        full = tile_grid(slide, tile_size=32, resolution="2", min_tissue=1.0)
        mask = TissueDetector().detect(slide, max_downsample=16)
    assert len(full) < len(half) < len(everything)
    assert (half.tissue_fraction >= 0.5).all() and (full.tissue_fraction == 1).all()
    assert half.tissue_fraction == pytest.approx(mask.fraction(half.boxes), abs=0.02)
    # Tiles in the corners (glass) are gone; the centre (tissue) is kept.
    centres = half.positions + half.size0 / 2
    assert not ((centres[:, 0] < 60) & (centres[:, 1] < 60)).any()
    assert ((np.abs(centres - np.array(SIZE) / 2) < 64).all(axis=1)).any()


def test_regions_restrict_the_grid(tiff_slide):
    region = shapely.box(100, 100, 400, 300)
    with open_slide(tiff_slide) as slide:
        grid = tile_grid(slide, tile_size=64, resolution=None, regions=[region], tissue=None)
        strict = tile_grid(slide, tile_size=64, resolution=None, regions=region, tissue=None, min_region=1.0)
        # Partly outside the slide: clipped to it.
        clipped = tile_grid(slide, tile_size=64, regions=shapely.box(600, 400, 900, 900), tissue=None)
    boxes = shapely.box(*grid.boxes[:, :2].T, *(grid.boxes[:, :2] + 64).T)
    assert (shapely.area(shapely.intersection(boxes, region)) >= 0.5 * 64 * 64).all()
    assert len(strict) == 4 * 2  # tiles at x 128, 192, 256, 320 and y 128, 192 lie wholly inside
    assert len(strict) < len(grid)
    # Of the 4 tiles that meet [600, 720] x [400, 560], the corner one has 0.625 x 0.75 < 0.5 inside.
    assert sorted(map(tuple, clipped.positions.tolist())) == [(576, 448), (640, 384), (640, 448)]


def test_region_outside_and_no_tissue_errors(tiff_slide, blank_slide):
    with open_slide(tiff_slide) as slide:
        with pytest.raises(RegionOutsideSlideError, match="do not overlap slide pyramid.tif"):
            tile_grid(slide, regions=shapely.box(1000, 1000, 2000, 2000))
        with pytest.raises(NoTissueError, match="inside the regions"):
            tile_grid(slide, tile_size=32, resolution="2", regions=shapely.box(0, 0, 60, 60))
    with open_slide(blank_slide) as slide, pytest.raises(NoTissueError, match="No tissue found on blank.tif"):
        tile_grid(slide, tile_size=32, resolution="2")


def test_resolution_needs_the_slide_resolution(png_slide):
    with open_slide(png_slide) as slide:
        with pytest.raises(MissingResolutionError, match="--slide-mpp"):
            tile_grid(slide, tile_size=32, resolution="2", tissue=None)
        assert len(tile_grid(slide, tile_size=64, resolution=None, tissue=None)) == 11 * 8
    with open_slide(png_slide, mpp=1.0) as slide:
        assert tile_grid(slide, tile_size=64, resolution="2", tissue=None).downsample == pytest.approx(2.0)


def test_tiles_are_lazy_picklable_images(tiff_slide):
    with open_slide(tiff_slide) as slide:
        grid = tile_grid(slide, tile_size=48, resolution="2", tissue=None)
        tile = grid[7]
        expected = slide.read_region(tile.box, (48, 48))
    assert np.array_equal(np.asarray(tile.open_image()), np.asarray(expected))
    again = pickle.loads(pickle.dumps(tile))
    assert again == tile and np.array_equal(np.asarray(again.open_image()), np.asarray(expected))
    assert "pyramid.tif tile x=" in str(tile)
    assert [t.box for t in grid[2:4]] == [grid[2].box, grid[3].box]


def test_grid_fingerprint_follows_the_file_and_the_boxes(tmp_path, slide_pixels):
    from mtdp_core.slides.testing import write_slide

    path = write_slide(tmp_path / "s.tif", slide_pixels, levels=2)
    with open_slide(path) as slide:
        a = tile_grid(slide, tile_size=64, tissue=None)
        b = tile_grid(slide, tile_size=64, stride=32, tissue=None)
    before = fingerprint_inputs(a)
    assert before == fingerprint_inputs(a) and before != fingerprint_inputs(b)
    os.utime(path, ns=(0, 10**9))  # the file changed (as far as stat can tell)
    with open_slide(path) as slide:
        c = tile_grid(slide, tile_size=64, tissue=None)
    assert fingerprint_inputs(c) != before


@pytest.mark.parametrize("workers", [0, 2])
def test_tiles_feed_the_feature_pipeline(tiff_slide, workers):
    """Features of a grid (tiles decoded by the loader, in worker processes that open the slide
    themselves) equal the features of the same tiles read up front."""
    with open_slide(tiff_slide) as slide:
        grid = tile_grid(slide, tile_size=32, resolution="4", min_tissue=0.5)
        images = [slide.read_region(t.box, t.size) for t in grid]
    assert len(grid) > 8  # several batches
    fx = FeatureExtractor("resnet18", "random", image_size=32, batch_size=8, num_workers=workers, device="cpu")
    from_tiles = fx.transform(grid)
    from_images = fx.transform(images)
    assert from_tiles.shape == (len(grid), 512)
    np.testing.assert_allclose(from_tiles, from_images, rtol=1e-5, atol=1e-5)


def test_feature_cache_of_tiles_resumes(tiff_slide, tmp_path):
    with open_slide(tiff_slide) as slide:
        grid = tile_grid(slide, tile_size=32, resolution="2", tissue=None)
    fx = FeatureExtractor(
        "resnet18", "random", image_size=32, num_workers=0, device="cpu", cache_dir=tmp_path, chunk_size=8
    )
    first, stats = fx.extract(grid)
    again, stats2 = fx.extract(grid)
    assert stats["n_computed"] == len(grid) and stats2["n_computed"] == 0
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
