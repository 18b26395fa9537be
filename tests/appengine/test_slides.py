"""classify on a whole image (mtdp_core.slides): generated multi-level slides, and the real Aperio
slide of ../shared/data/wsi when present; annotations cut from a slide by the local App Engine."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from shapely.geometry import box, shape

from mtdp_core.appengine.local import run_local
from mtdp_core.appengine.runner import run_task
from mtdp_core.appengine.tasks import get_task
from mtdp_core.errors import MissingResolutionError
from mtdp_core.slides import open_slide
from mtdp_core.slides.testing import write_slide
from tests.helpers.appengine import write_inputs
from tests.helpers.slides import MPP, SIZE, make_probe, training_tiles, two_tissue_pixels

RUNTIME = {"n_workers": 0, "batch_size": 16}


@pytest.fixture(scope="module")
def two_tissue_svs(tmp_path_factory):
    """A 3-level Aperio-like slide at 1 µm/px: pink tissue on the left half, purple on the right."""
    folder = tmp_path_factory.mktemp("ae-slides")
    return write_slide(folder / "two.svs", two_tissue_pixels(), levels=3, tile=128, fmt="svs", mpp=MPP)


@pytest.fixture(scope="module")
def slide_model(tmp_path_factory):
    """A probe on 32 px tiles at 2 µm/px (it records that resolution)."""
    return make_probe(tmp_path_factory.mktemp("ae-models") / "probe.npz")


def slide_inputs(folder, slide, model, **values):
    folder = write_inputs(folder, **RUNTIME, **values)
    (folder / "image").write_bytes(slide.read_bytes())  # as the App Engine gives it: no extension
    (folder / "model").write_bytes(model.read_bytes())
    return folder


@pytest.mark.slow
def test_classify_a_whole_slide_maps_its_tissue(tmp_path, two_tissue_svs, slide_model):
    from mtdp_core.appengine.files import output_problems, read_output
    from mtdp_core.appengine.spec import task_descriptor

    inputs = slide_inputs(tmp_path / "inputs", two_tissue_svs, slide_model)
    run_task(get_task("classify"), inputs, tmp_path / "outputs")
    descriptor = task_descriptor(get_task("classify"))
    assert output_problems(descriptor, tmp_path / "outputs") == []
    values = {k: read_output(descriptor, tmp_path / "outputs", k) for k in descriptor["outputs"]}
    width, height = SIZE
    by_class = {}
    for geometry, name, score in zip(values["geometries"], values["classes"], values["scores"]):
        assert 0 <= score <= 1
        # Cytomine coordinates: y up, within the slide
        minx, miny, maxx, maxy = geometry.bounds
        assert 0 <= minx and maxx <= width and 0 <= miny and maxy <= height
        by_class.setdefault(name, []).append(geometry)
    assert set(by_class) == {"pink", "purple"}
    # the largest region of each class (the tiny model calls a few glass-edge tiles pink)
    pink = max(by_class["pink"], key=lambda g: g.area)
    purple = max(by_class["purple"], key=lambda g: g.area)
    assert pink.centroid.x < width / 2 < purple.centroid.x
    assert "tissue tiles of 32 px at 2 µm/px" in values["summary"]
    with Image.open(values["overlay"]) as overlay:
        assert overlay.format == "PNG"


def test_tiles_instead_of_regions(tmp_path, two_tissue_svs, slide_model):
    inputs = slide_inputs(tmp_path / "inputs", two_tissue_svs, slide_model, map_as="tiles")
    run_task(get_task("classify"), inputs, tmp_path / "outputs")
    classes = sorted((tmp_path / "outputs" / "classes").iterdir())
    tiles = [
        shape(json.loads(p.read_text()))
        for p in sorted((tmp_path / "outputs" / "geometries").iterdir())
        if p.name != "array.yml"
    ]
    assert len(tiles) == len(classes) - 1  # array.yml
    assert {round(t.area) for t in tiles} == {64 * 64}  # 32 px at 2 µm/px on a 1 µm/px slide


def test_a_model_without_resolution_on_an_image_without_one_says_what_to_set(tmp_path, slide_model):
    plain = tmp_path / "plain.png"
    Image.fromarray(two_tissue_pixels()).save(plain)
    model = make_probe(tmp_path / "no-mpp.npz", mpp=None)
    inputs = slide_inputs(tmp_path / "inputs", plain, model)
    with pytest.raises(MissingResolutionError, match="Set resolution"):
        run_task(get_task("classify"), inputs, tmp_path / "out")
    write_inputs(inputs, resolution="2", slide_mpp=1)  # what the message asks for
    run_task(get_task("classify"), inputs, tmp_path / "out2")


def test_local_app_engine_maps_a_slide_back_in_image_coordinates(tmp_path, two_tissue_svs, slide_model):
    entries = [("input", "model", f"@{slide_model}"), ("input", "image", f"@{two_tissue_svs}")]
    entries += [("input", k, str(v)) for k, v in RUNTIME.items()]
    result = run_local(get_task("classify"), entries, folder=tmp_path / "run", engine="inline")
    assert result.ok, result.reason
    features = json.loads(result.geojson.read_text())["features"]
    pink = max(
        (shape(f["geometry"]) for f in features if f["properties"]["classification"]["name"] == "pink"),
        key=lambda g: g.area,
    )
    # image coordinates (y down): the pink tissue on the left, from the top glass margin down
    assert pink.bounds[2] <= SIZE[0] / 2 + 64 and 32 <= pink.bounds[1] <= 64


def test_local_app_engine_cuts_an_annotation_from_a_slide(tmp_path, two_tissue_svs):
    from mtdp_core.appengine.local import Provisioner

    provisioner = Provisioner(get_task("classify"), tmp_path / "inputs")
    provisioner.add("model", f"@{two_tissue_svs}")
    provisioner.add("image", f"@{two_tissue_svs}")
    provisioner.annotate("image", box(100, 60, 228, 188).wkt)
    provisioner.finish()
    with open_slide(two_tissue_svs) as slide:
        expected = np.asarray(slide.read_region((100, 60, 128, 128), (128, 128)))
    with Image.open(tmp_path / "inputs" / "image") as crop:
        assert np.array_equal(np.asarray(crop.convert("RGB")), expected)


@pytest.mark.realdata
@pytest.mark.slow
def test_classify_the_real_aperio_slide(tmp_path, shared_data):
    from sklearn.linear_model import LogisticRegression

    from mtdp_core.transfer.features import FeatureExtractor
    from mtdp_core.transfer.persistence import save_model

    slide = shared_data / "wsi" / "CMU-1-Small-Region.svs"
    if not slide.is_file():
        pytest.skip(f"{slide} is absent")
    images, labels = training_tiles(4)
    fx = FeatureExtractor("resnet18", "random", image_size=224, num_workers=0, device="cpu")
    model = save_model(tmp_path / "m.npz", LogisticRegression().fit(fx.transform(images), labels), features=fx, mpp=0.5)
    entries = [("input", "model", f"@{model}"), ("input", "image", f"@{slide}")]
    entries += [("input", k, str(v)) for k, v in RUNTIME.items()]
    result = run_local(get_task("classify"), entries, folder=tmp_path / "run", engine="inline")
    assert result.ok, result.reason
    assert "tissue tiles of 224 px at 0.5 µm/px" in result.outputs["summary"]
    for feature in json.loads(result.geojson.read_text())["features"]:
        minx, miny, maxx, maxy = shape(feature["geometry"]).bounds
        assert minx >= 0 and miny >= 0 and maxx <= 2220 + 1 and maxy <= 2967 + 1
