"""Slides of a Cytomine server read through its image server (blocks at a zoom, cached on disk),
against the local server: the same pixels as the library reading the file itself."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from mtdp_core.cytomine.client import CytomineSession
from mtdp_core.cytomine.slides import RemoteImage, open_remote_slide
from mtdp_core.errors import SlideReadError
from mtdp_core.server.importers import import_folder
from mtdp_core.slides import open_slide
from mtdp_core.slides.reader import SlideSource, cached_slide
from mtdp_core.slides.testing import tissue_like, write_slide
from mtdp_core.slides.tiles import tile_grid


@pytest.fixture
def remote(server, tmp_path):
    """A 2100 x 1500 px Aperio-like slide (0.25 µm/px, 40x, levels 1, 2, 4) on the server: (session,
    its RemoteImage, the file)."""
    path = write_slide(
        tmp_path / "scan.svs",
        tissue_like((1500, 2100), seed=1),
        levels=3,
        tile=256,
        fmt="svs",
        mpp=0.25,
        magnification=40,
    )
    report = import_folder(server.store, "remote", path)
    session = CytomineSession(server.connect())
    image_id = server.store.images.list(report.project["id"])[0]["id"]
    return session, RemoteImage.from_json(session.get_json(f"imageinstance/{image_id}.json")), path


def _pixels(image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def test_the_image_is_described_from_its_instance(remote):
    _, image, _ = remote
    assert (image.width, image.height, image.mpp, image.magnification, image.zoom) == (2100, 1500, 0.25, 40.0, 4)


@pytest.mark.parametrize(
    ("box", "size"),
    [
        ((100, 200, 448, 448), (224, 224)),  # zoom 1, on its pixels
        ((1003, 701, 900, 900), (224, 224)),  # zoom 2, resized
        ((1500, 1100, 600, 400), (300, 200)),  # the right and bottom edge blocks
        ((0, 0, 2100, 1500), (300, 214)),  # a thumbnail
    ],
)
def test_regions_equal_the_library_reading_the_file(remote, tmp_path, box, size):
    session, image, path = remote
    slide = open_remote_slide(session, image, tmp_path / "cache")
    with open_slide(path) as local:
        np.testing.assert_array_equal(_pixels(slide.read_region(box, size)), _pixels(local.read_region(box, size)))
    assert slide.level_dimensions[:3] == ((2100, 1500), (1050, 750), (525, 375)) and slide.mpp == 0.25


def test_prefetched_blocks_serve_processes_without_a_connection(remote, tmp_path):
    session, image, path = remote
    slide = open_remote_slide(session, image, tmp_path / "cache")
    grid = tile_grid(slide, tile_size=64, resolution=1.0)  # 256 scan pixels a tile: zoom 2, 525 x 375 px
    level = slide.best_level(grid.downsample)
    assert level == 2 and slide.prefetch(level, grid.boxes, threads=4) == (1, 1)
    assert slide.prefetch(level, grid.boxes) == (1, 0)  # cached: nothing downloaded again
    worker = cached_slide(slide.source)  # what a DataLoader worker opens: the manifest, no session
    assert worker is not slide and worker.session is None
    with open_slide(path) as local:
        tile = grid[5]
        np.testing.assert_array_equal(_pixels(tile.open_image()), _pixels(local.read_region(tile.box, tile.size)))
    with pytest.raises(SlideReadError, match="was not downloaded before the tiles were read"):
        worker.read_region((0, 0, 100, 100), (100, 100))  # zoom 0 was never fetched


def test_jpeg_blocks_are_close_and_a_changed_image_drops_old_blocks(remote, tmp_path):
    session, image, _ = remote
    png = open_remote_slide(session, image, tmp_path / "cache")
    jpg = open_remote_slide(session, image, tmp_path / "cache", block_format="jpg")
    box, size = (400, 300, 800, 800), (200, 200)
    difference = np.abs(_pixels(png.read_region(box, size)) - _pixels(jpg.read_region(box, size)))
    assert 0 < difference.mean() < 8  # re-compressed (noisy synthetic texture), not another picture
    blocks = sorted(p.name for p in png.block_path(2, 0, 0).parent.parent.glob("z*/*"))
    assert blocks
    moved = open_remote_slide(session, replace(image, width=2000), tmp_path / "cache")  # another image, same id
    assert not list(moved.block_path(2, 0, 0).parent.parent.glob("z*/*"))
    assert SlideSource(png.source.path).path == moved.source.path
