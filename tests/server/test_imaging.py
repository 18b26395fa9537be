"""Crops, masks, windows and thumbnails: the pixels served are the stored image's."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from cytomine.models import Annotation, AnnotationCollection, ImageInstance
from PIL import Image

from mtdp_core.server.config import ServerConfig
from mtdp_core.server.errors import BadRequest
from mtdp_core.server.geometry import box_in_cytomine
from mtdp_core.server.imaging import Region, annotation_region, max_zoom_level, output_size
from mtdp_core.server.sources import ImageCache
from mtdp_core.server.testing import running_server, seed_synthetic_project


def _read(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_dumped_crops_equal_the_stored_image_region(client, seeded, tmp_path):
    annotations = AnnotationCollection(project=seeded.project_id, showTerm=True).fetch()
    by_id = {a.id: a for a in seeded.annotations}
    for annotation in annotations:
        expected = seeded.crop_pixels(by_id[annotation.id])
        # maxSize equal to the box's longest side: full resolution, no resampling.
        assert annotation.dump(str(tmp_path / f"{annotation.id}.png"), max_size=max(expected.shape[:2]))
        np.testing.assert_array_equal(_read(annotation.filename), expected)


def test_crop_without_max_size_follows_the_spring_core(client, seeded, tmp_path):
    annotation = Annotation().fetch(seeded.annotations[0].id)
    x0, y0, x1, y1 = seeded.annotations[0].box
    assert annotation.dump(str(tmp_path / "default.png"))
    crop = _read(annotation.filename)
    # Longest side 256 (the Spring core's @RequestParam(defaultValue = "256") maxSize), aspect kept.
    assert max(crop.shape[:2]) == 256
    assert crop.shape[1] / crop.shape[0] == pytest.approx((x1 - x0) / (y1 - y0), rel=0.05)


def test_zoom_and_full_resolution_in_grails_mode(tmp_path):
    with running_server(config=ServerConfig(crop_default_max_size=None, log_requests=False)) as server:
        seeded = seed_synthetic_project(server, tmp_path, size=(600, 400), n_images=1)  # zoom levels 0 to 2
        client = server.connect()
        annotation = Annotation().fetch(seeded.annotations[0].id)
        expected = seeded.crop_pixels(seeded.annotations[0])
        assert annotation.dump(str(tmp_path / "full.png"))
        np.testing.assert_array_equal(_read(annotation.filename), expected)
        assert annotation.dump(str(tmp_path / "half.png"), zoom=1)
        h, w = expected.shape[:2]
        assert _read(annotation.filename).shape[:2] == (round(h / 2), round(w / 2))
        assert client  # connected for the dumps above


def test_masks_and_alpha_masks(client, seeded, tmp_path):
    image = seeded.images[0]
    # A triangle: the mask is white inside, black outside; the alpha mask is transparent outside.
    triangle = "POLYGON ((10 10, 50 10, 10 50, 10 10))"
    created = Annotation(location=triangle, id_image=image["id"]).save()
    size = 40
    assert created.dump(str(tmp_path / "mask.png"), mask=True, max_size=size)
    mask = _read(created.filename)
    assert mask.shape == (size, size) and set(np.unique(mask)) <= {0, 255}
    # Cytomine's y goes up: the right angle (10, 10) is at the image's bottom-left, so row 0 is the top.
    assert mask[30, 5] == 255 and mask[5, 35] == 0  # inside near the bottom-left, outside at the top-right
    assert 0.4 < (mask > 0).mean() < 0.6
    assert created.dump(str(tmp_path / "alpha.png"), mask=True, alpha=True, max_size=size)
    rgba = _read(created.filename)
    assert rgba.shape == (size, size, 4)
    np.testing.assert_array_equal(rgba[..., 3], mask)
    rows = slice(image["height"] - 50, image["height"] - 10)
    np.testing.assert_array_equal(rgba[..., :3], seeded.pixels(image["id"])[rows, 10:50])


def test_increase_area_grows_the_crop_around_its_centre(client, seeded, tmp_path):
    image = seeded.images[0]
    created = Annotation(location=box_in_cytomine(40, 20, 60, 40, image["height"]).wkt, id_image=image["id"]).save()
    assert created.dump(str(tmp_path / "ctx.png"), increase_area=2.0, max_size=40)
    np.testing.assert_array_equal(_read(created.filename), seeded.pixels(image["id"])[10:50, 30:70])


def test_window_thumb_and_download(client, seeded, tmp_path):
    image = ImageInstance().fetch(seeded.images[0]["id"])
    pixels = seeded.pixels(image.id)
    assert image.window(5, 7, 30, 20, dest_pattern=str(tmp_path / "win.png"))
    np.testing.assert_array_equal(_read(tmp_path / "win.png"), pixels[7:27, 5:35])
    # A window reaching outside the image is cut to it.
    assert image.window(80, 50, 40, 40, dest_pattern=str(tmp_path / "edge.png"))
    np.testing.assert_array_equal(_read(tmp_path / "edge.png"), pixels[50:64, 80:96])
    assert image.dump(str(tmp_path / "thumb.png"), max_size=48)
    assert _read(tmp_path / "thumb.png").shape[:2] == (32, 48)
    assert image.download(str(tmp_path / "original.png"))
    assert (tmp_path / "original.png").read_bytes() == seeded.image_paths[image.id].read_bytes()


def test_dump_crops_thread_pool_under_concurrency(tmp_path):
    """dump_crops downloads with a thread pool: many concurrent crops of the same images."""
    with running_server() as server:
        seeded = seed_synthetic_project(server, tmp_path, n_images=3, boxes_per_image=30)
        server.connect()
        annotations = AnnotationCollection(project=seeded.project_id, showTerm=True).fetch()
        dumped = annotations.dump_crops(str(tmp_path / "crops" / "{term}" / "{id}.png"), n_workers=12, max_size=64)
        assert len(dumped) == 90
        by_id = {a.id: a for a in seeded.annotations}
        for annotation in dumped:
            seeded_item = by_id[annotation.id]
            assert annotation.filename.endswith(f"{seeded_item.term_id}/{annotation.id}.png")
            assert max(_read(annotation.filename).shape[:2]) == 64


def test_region_rules():
    # A box in the middle: its own pixels; a point: a 100 x 100 box around it, shifted inside.
    box = box_in_cytomine(10, 20, 30, 25, 100)
    assert annotation_region(box, 200, 100) == Region(10, 20, 20, 5)
    assert annotation_region(box, 200, 100, square=True) == Region(10, 12.5, 20, 20)
    point = shapely.Point(5, 95)  # near the top-left corner (y up)
    assert annotation_region(point, 200, 100) == Region(0, 0, 100, 100)
    # Larger than the image: cut to it.
    assert annotation_region(box, 200, 100, increase_area=50) == Region(0, 0, 200, 100)
    assert Region(1.5, 2.2, 3.1, 4.0).discretize(200, 100) == (1, 2, 5, 6)
    with pytest.raises(BadRequest):
        annotation_region(box, 200, 100, increase_area=-1)


def test_output_size_and_zoom_levels():
    assert output_size(40, 20, 256, None, 3) == (256, 128)
    assert output_size(20, 40, 10, None, 3) == (5, 10)
    assert output_size(40, 20, None, 1, 3) == (20, 10)
    assert output_size(40, 20, None, None, 0) == (40, 20)
    assert max_zoom_level(640, 480) == 2 and max_zoom_level(200, 100) == 0
    with pytest.raises(BadRequest, match="Level tier 4"):
        output_size(40, 20, None, 4, 2)


def test_image_cache_decodes_each_image_once(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((10, 10, 3), dtype=np.uint8)).save(path)
    cache = ImageCache(max_bytes=1000)
    first, second = cache.get(path), cache.get(path)
    assert first is second and cache.misses == 1 and cache.hits == 1
    other = tmp_path / "b.png"
    Image.fromarray(np.zeros((10, 10, 3), dtype=np.uint8)).save(other)
    cache.get(other)  # 300 + 300 bytes fit; a third image evicts the oldest
    third = tmp_path / "c.png"
    Image.fromarray(np.zeros((15, 15, 3), dtype=np.uint8)).save(third)
    cache.get(third)
    cache.get(path)
    assert cache.misses == 4


def test_exif_orientation_is_applied_consistently(server, tmp_path):
    """A JPEG stored sideways (EXIF orientation 6): its size and pixels are the displayed ones."""
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 20), (200, 10, 10)).save(path, exif=exif.tobytes())
    store = server.store
    ontology = store.ontologies.create("o")
    project = store.projects.create("rotated", ontology["id"])
    image = store.images.add(path, project["id"])
    assert (image["width"], image["height"]) == (20, 40)
    server.connect()
    instance = ImageInstance().fetch(image["id"])
    assert instance.window(0, 0, 20, 40, dest_pattern=str(tmp_path / "w.png"))
    assert _read(tmp_path / "w.png").shape == (40, 20, 3)
