"""Whole-slide images on the local server: import (with a QuPath GeoJSON export beside them), the
metadata image instances report, and crops, windows, thumbnails and tiles read from one level,
compared with the library's regions (``mtdp_core.slides``, an independent reader)."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from cytomine import Cytomine
from cytomine.models import Annotation, AnnotationCollection, ImageInstance
from PIL import Image

from mtdp_core.errors import ConfigurationError
from mtdp_core.server import slides as server_slides
from mtdp_core.server.config import PixelLimits
from mtdp_core.server.errors import BadRequest
from mtdp_core.server.geometry import box_in_cytomine
from mtdp_core.server.imaging import tier_size
from mtdp_core.server.importers import import_folder
from mtdp_core.server.sources import ImageCache, image_info
from mtdp_core.slides import open_slide
from mtdp_core.slides.testing import tissue_like, write_slide, write_tiled_slide

SIZE = (720, 560)  # level 0 (width, height): three levels (1, 2, 4), 128 px tiles, partial edge tiles


@pytest.fixture(scope="module")
def slide_folder(tmp_path_factory):
    """An Aperio-like SVS (AppMag 20, 0.5 µm/px) with a QuPath GeoJSON export beside it, and a
    generic pyramidal TIFF (1 µm/px in its TIFF tags, no objective power); lossless tiles."""
    folder = tmp_path_factory.mktemp("slides")
    pixels = tissue_like((SIZE[1], SIZE[0]), seed=5)
    write_slide(folder / "case.svs", pixels, levels=3, tile=128, fmt="svs", mpp=0.5, magnification=20)
    write_slide(folder / "pyramid.tif", pixels, levels=3, tile=128, mpp=1.0)
    features = [
        {  # a classified QuPath annotation: its class is the term (its name is not)
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [[[100, 80], [420, 80], [420, 300], [100, 300], [100, 80]]]},
            "properties": {"objectType": "annotation", "name": "region 1", "classification": {"name": "Tumor"}},
        },
        {  # an unclassified one (e.g. a region of interest): an annotation without a term
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [[[40, 40], [680, 40], [680, 520], [40, 520], [40, 40]]]},
            "properties": {"objectType": "annotation", "name": "ROI"},
        },
    ]
    (folder / "case.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return folder


@pytest.fixture
def imported(server, slide_folder):
    report = import_folder(server.store, "slides", slide_folder, slide_folder)
    server.connect()
    images = {i["original_filename"]: i for i in server.store.images.list(report.project["id"])}
    return report, images


def _png(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(np.int16)


def _library(path, box, size) -> np.ndarray:
    with open_slide(path) as slide:
        return np.asarray(slide.read_region(box, size)).astype(np.int16)


def _close(served: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to the rounding of bilinear weights computed block by block in floating point."""
    assert served.shape == expected.shape
    assert np.abs(served - expected).max() <= 2
    assert np.abs(served - expected).mean() < 0.05


def test_slides_and_their_qupath_annotations_are_imported(imported):
    report, images = imported
    assert report.images == 2 and report.annotations == 2 and report.terms == 1 and not report.unreadable
    svs = ImageInstance().fetch(images["case.svs"]["id"])
    assert (svs.width, svs.height, svs.depth) == SIZE + (1,)
    assert svs.physicalSizeX == pytest.approx(0.5) and svs.physicalSizeY == pytest.approx(0.5)
    assert svs.magnification == 20 and svs.resolution == pytest.approx(0.5)
    assert svs.zoom == 2 and svs.tileSize == 256  # 720 px: 720 -> 360 -> 180 (the core's getZoomLevels)
    assert svs.mime == "openslide/svs"
    tif = ImageInstance().fetch(images["pyramid.tif"]["id"])
    assert tif.physicalSizeX == pytest.approx(1.0) and tif.magnification is None and tif.mime == "image/pyrtiff"
    annotations = AnnotationCollection(project=report.project["id"], showWKT=True, showTerm=True).fetch()
    by_terms = {len(a.term): a for a in annotations}
    # Top-left QuPath coordinates -> Cytomine's bottom-left origin (y = 560 - y).
    assert by_terms[1].location == "POLYGON ((100 480, 420 480, 420 260, 100 260, 100 480))"
    assert by_terms[0].term == []


@pytest.mark.parametrize("max_size", [320, 160, 80, 97])
def test_crops_equal_the_library_regions(imported, slide_folder, tmp_path, max_size):
    """Full resolution (level 0, exact), half and quarter (levels 1 and 2, exact since the box
    falls on their pixels), and an odd size (read from level 1, resized)."""
    report, images = imported
    annotation = next(a for a in AnnotationCollection(project=report.project["id"], showTerm=True).fetch() if a.term)
    assert Annotation().fetch(annotation.id).dump(str(tmp_path / "crop.png"), max_size=max_size)
    size = (max_size, round(220 * max_size / 320))
    expected = _library(slide_folder / "case.svs", (100, 80, 320, 220), size)
    if max_size in (320, 160, 80):
        np.testing.assert_array_equal(_png(tmp_path / "crop.png"), expected)
    else:
        _close(_png(tmp_path / "crop.png"), expected)


def test_windows_at_a_zoom_thumbnails_and_tiles_equal_the_library(imported, slide_folder, tmp_path):
    _, images = imported
    image = ImageInstance().fetch(images["pyramid.tif"]["id"])
    path = slide_folder / "pyramid.tif"
    assert image.window(200, 120, 400, 300, dest_pattern=str(tmp_path / "w1.png"), zoom=1)
    np.testing.assert_array_equal(_png(tmp_path / "w1.png"), _library(path, (200, 120, 400, 300), (200, 150)))
    assert image.window(10, 30, 333, 250, dest_pattern=str(tmp_path / "w.png"), max_size=200)
    _close(_png(tmp_path / "w.png"), _library(path, (10, 30, 333, 250), (200, 150)))
    assert image.dump(str(tmp_path / "thumb.png"), max_size=256)
    _close(_png(tmp_path / "thumb.png"), _library(path, (0, 0, *SIZE), (256, 199)))
    # Tiles of the normalized pyramid: zoom 2 is full resolution, zoom 0 the whole slide in one tile.
    client = Cytomine.get_instance()
    url = f"sliceinstance/{images['pyramid.tif']['slice_id']}/normalized-tile/zoom"  # under /api/
    assert client.download_file(f"{url}/2/tx/1/ty/2.png", str(tmp_path / "t2.png"))
    np.testing.assert_array_equal(_png(tmp_path / "t2.png"), _library(path, (256, 512, 256, 48), (256, 48)))
    assert client.download_file(f"{url}/1/tx/1/ty/0.png", str(tmp_path / "t1.png"))  # an edge tile: 104 px
    np.testing.assert_array_equal(_png(tmp_path / "t1.png"), _library(path, (512, 0, 208, 512), (104, 256)))
    assert client.download_file(f"{url}/0/tx/0/ty/0.png", str(tmp_path / "t0.png"))
    assert _png(tmp_path / "t0.png").shape == (140, 180, 3)
    assert not client.download_file(f"{url}/3/tx/0/ty/0.png", str(tmp_path / "t3.png"))  # no zoom 3
    assert not client.download_file(f"{url}/2/tx/3/ty/0.png", str(tmp_path / "t4.png"))  # no column 3


def test_blocks_join_without_seams(slide_folder, monkeypatch):
    """Outputs larger than one read are made block by block: the same pixels as one read."""
    source = server_slides.SlideFile(slide_folder / "pyramid.tif")
    whole = np.asarray(source.region((3.5, 7.25, 703.5, 507.25), (350, 250))).astype(np.int16)
    monkeypatch.setattr(server_slides, "READ_SIDE", 64)
    blocks = np.asarray(source.region((3.5, 7.25, 703.5, 507.25), (350, 250))).astype(np.int16)
    _close(blocks, whole)
    _close(blocks, _library(slide_folder / "pyramid.tif", (3.5, 7.25, 700, 500), (350, 250)))


def test_outputs_over_10000_pixels_are_refused(imported, server, tmp_path):
    _, images = imported
    image = ImageInstance().fetch(images["case.svs"]["id"])
    assert not image.window(0, 0, 700, 500, dest_pattern=str(tmp_path / "big.png"), max_size=10_001)
    limits = PixelLimits(max_pixels=10**9)
    with pytest.raises(BadRequest, match="over the image server's limit of 10,000 pixels a side"):
        limits.check((12_000, 300), what="window")
    assert limits.fit((20_000, 5_000)) == (10_000, 2_500)  # safe=true: shrunk to fit, as PIMS's SAFE_RESIZE
    assert PixelLimits().fit((20_000, 5_000)) == (8192, 2048)  # and within the pixel limit (4096 x 4096)


@pytest.fixture(scope="module")
def huge_slide(tmp_path_factory):
    """100,000 x 100,000 px, 5 levels (1, 4, 16, 64, 256), 0.25 µm/px: a few tissue tiles, the
    rest empty (written sparse, read back as white): a 40x whole-slide scan's size, a few MB."""
    tile = zlib.compress(tissue_like((256, 256), seed=2).tobytes())

    def tile_fn(level, col, row, size):
        return tile if (col + row) % 29 == 0 else None

    path = tmp_path_factory.mktemp("huge") / "huge.tif"
    return write_tiled_slide(
        path, (100_000, 100_000), tile_fn, levels=5, factor=4, mpp=0.25, compression="zlib", encoded=True
    )


def test_a_100000_pixel_slide_is_served_from_the_level_each_output_needs(server, huge_slide, tmp_path, monkeypatch):
    reads = []
    original = server_slides.SlideFile._level_pixels

    def spy(self, level, x, y, width, height):
        reads.append((level, width, height))
        return original(self, level, x, y, width, height)

    monkeypatch.setattr(server_slides.SlideFile, "_level_pixels", spy)
    ontology = server.store.ontologies.create("o")
    project = server.store.projects.create("huge", ontology["id"])
    image = server.store.images.add(huge_slide, project["id"])
    server.connect()
    location = box_in_cytomine(51_200, 40_960, 53_248, 43_008, 100_000).wkt
    annotation = Annotation(location=location, id_image=image["id"], id_project=project["id"]).save()
    assert annotation.dump(str(tmp_path / "crop.png"), max_size=512)  # 2048 px at 4x: level 1
    assert {r[0] for r in reads} == {1} and _png(tmp_path / "crop.png").shape == (512, 512, 3)
    np.testing.assert_array_equal(
        _png(tmp_path / "crop.png"), _library(huge_slide, (51_200, 40_960, 2048, 2048), (512, 512))
    )
    reads.clear()
    instance = ImageInstance().fetch(image["id"])
    assert instance.dump(str(tmp_path / "thumb.png"), max_size=1024)  # 98x smaller: level 3 (64x), in blocks
    assert {r[0] for r in reads} == {3} and len(reads) > 1
    assert max(w * h for _, w, h in reads) <= (server_slides.READ_SIDE + 8) ** 2  # bounded memory per read
    reads.clear()
    assert instance.window(60_000, 20_000, 300, 200, dest_pattern=str(tmp_path / "w.png"))  # full resolution
    assert reads == [(0, 300, 200)]
    assert not instance.window(0, 0, 100_000, 100_000, dest_pattern=str(tmp_path / "all.png"))  # 400: too large
    assert tier_size(100_000, 100_000, 0) == (196, 196)


def test_unreadable_files_are_skipped_and_a_named_one_refused(server, slide_folder, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "broken.svs").write_bytes(b"not a slide")
    (folder / "good.tif").write_bytes((slide_folder / "pyramid.tif").read_bytes())
    report = import_folder(server.store, "mixed", folder)
    assert report.images == 1 and report.unreadable == ["broken.svs"]
    assert "1 unreadable files skipped (broken.svs)" in report.summary()
    with pytest.raises(ConfigurationError, match="Cannot read image .*broken.svs.*whole-slide file OpenSlide reads"):
        import_folder(server.store, "single", folder / "broken.svs")


def test_image_info_and_the_cache_keep_a_slide_open_once(slide_folder):
    info = image_info(slide_folder / "case.svs")
    assert (info.width, info.height, info.samples, info.magnification) == (720, 560, 3, 20.0)
    cache = ImageCache(max_slides=1)
    first = cache.get(slide_folder / "case.svs")
    assert cache.get(slide_folder / "case.svs") is first and isinstance(first, server_slides.SlideFile)
    cache.get(slide_folder / "pyramid.tif")  # one handle at most: the first slide is evicted
    assert cache.get(slide_folder / "case.svs") is not first and cache.misses == 3


@pytest.mark.realdata
def test_the_real_cmu_slide_is_served_as_the_library_reads_it(server, shared_data, tmp_path):
    path = shared_data / "wsi" / "CMU-1-Small-Region.svs"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    report = import_folder(server.store, "cmu", path)
    server.connect()
    image = ImageInstance().fetch(server.store.images.list(report.project["id"])[0]["id"])
    assert (image.width, image.height, image.magnification, image.mime) == (2220, 2967, 20, "openslide/svs")
    assert image.physicalSizeX == pytest.approx(0.499, abs=1e-3)
    assert image.window(1000, 1200, 448, 448, dest_pattern=str(tmp_path / "w.png"), max_size=224)
    _close(_png(tmp_path / "w.png"), _library(path, (1000, 1200, 448, 448), (224, 224)))
    assert image.window(500, 700, 300, 200, dest_pattern=str(tmp_path / "full.png"))
    np.testing.assert_array_equal(_png(tmp_path / "full.png"), _library(path, (500, 700, 300, 200), (300, 200)))
