"""The local App Engine: inputs provisioned as Cytomine provisions them, the run, the output check
(FAILED as there), and the results back in image coordinates."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image
from shapely.geometry import box, shape

from mtdp_core.appengine.errors import ContainerEngineError, TaskInputError
from mtdp_core.appengine.files import TaskInputs
from mtdp_core.appengine.local import (
    FAILED,
    FINISHED,
    Provisioner,
    container_command,
    find_engine,
    format_result,
    run_local,
)
from mtdp_core.appengine.spec import task_descriptor
from mtdp_core.appengine.tasks import get_task
from tests.helpers.images import make_image


@pytest.fixture
def picture(tmp_path) -> Path:
    """A 120 x 80 image: red on the left half, blue on the right."""
    image = Image.new("RGB", (120, 80), (40, 40, 200))
    image.paste((200, 40, 40), (0, 0, 60, 80))
    path = tmp_path / "picture.png"
    image.save(path)
    return path


def test_an_annotation_is_cut_as_cytomine_cuts_it(tmp_path, picture):
    provisioner = Provisioner(get_task("classify"), tmp_path / "inputs")
    provisioner.add("model", f"@{picture}")  # any file: provisioning does not read it
    provisioner.add("image", f"@{picture}")
    provisioner.annotate("image", "POLYGON ((10.5 20, 50 20, 50 60.2, 10.5 60.2, 10.5 20))")  # image pixels
    sources = provisioner.finish()
    folder = tmp_path / "inputs"
    with Image.open(folder / "image") as crop:
        assert crop.format == "PNG" and crop.size == (40, 41)  # (int) minX .. ceil(maxX), full resolution
        assert crop.getpixel((5, 5)) == (200, 40, 40)
    local = shape(json.loads((folder / "image.geojson").read_text()))
    # Cytomine coordinates (y up) relative to the crop's bottom-left corner (10, 19): y = 80 - 60.2 - 19.
    assert local.bounds == pytest.approx((0.5, 0.8, 40, 41))
    assert sources["image"][0].offset == (10, 19) and sources["image"][0].height == 80
    image = TaskInputs(get_task("classify"), folder).image("image")
    assert image.is_annotation


def test_scalars_are_checked_against_the_descriptor_when_provisioned(tmp_path, picture):
    provisioner = Provisioner(get_task("classify"), tmp_path / "inputs")
    provisioner.add("batch_size", "0")
    with pytest.raises(TaskInputError, match="batch_size: 0 breaks geq 1"):
        provisioner.finish()
    provisioner = Provisioner(get_task("classify"), tmp_path / "inputs2")
    with pytest.raises(TaskInputError, match="has no input 'size'.*image, model"):
        provisioner.add("size", "3")
    provisioner.add("model", f"@{picture}")
    with pytest.raises(TaskInputError, match="required inputs of classify: image"):
        provisioner.finish()
    with pytest.raises(TaskInputError, match="--input image=@IMAGE before --annotation"):
        provisioner.annotate("image", "POINT (1 1)")


def test_an_array_of_annotations_gives_one_item_per_feature(tmp_path, picture):
    collection = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "geometry": json.loads(json.dumps(box(0, 0, 20, 20).__geo_interface__))},
            {"type": "Feature", "geometry": json.loads(json.dumps(box(70, 10, 100, 30).__geo_interface__))},
        ],
    }
    geojson = tmp_path / "cells.geojson"
    geojson.write_text(json.dumps(collection))
    provisioner = Provisioner(get_task("train"), tmp_path / "inputs")
    provisioner.add("images", f"@{picture}")
    provisioner.annotate("images", f"@{geojson}")
    provisioner.add("images", f"@{picture}")  # a whole image as the third item
    for label in ("red", "blue", "blue"):
        provisioner.add("labels", label)
    provisioner.finish()
    folder = tmp_path / "inputs"
    assert (folder / "images" / "array.yml").read_text() == "size: 3\n"
    assert (folder / "images" / "0.geojson").is_file() and not (folder / "images" / "2.geojson").exists()
    with Image.open(folder / "images" / "1") as crop:
        assert crop.size == (30, 20) and crop.getpixel((1, 1)) == (40, 40, 200)
    assert (folder / "labels" / "1").read_text() == "blue"


def test_an_annotation_outside_the_image_is_refused(tmp_path, picture):
    provisioner = Provisioner(get_task("classify"), tmp_path / "inputs")
    provisioner.add("image", f"@{picture}")
    provisioner.annotate("image", "POLYGON ((100 60, 130 60, 130 90, 100 90, 100 60))")
    with pytest.raises(TaskInputError, match=r"inside the image \(120 x 80 px\)"):
        provisioner.finish()


def test_run_classify_and_show_the_result_in_image_coordinates(tmp_path, picture, tiny_model):
    polygon = "POLYGON ((5 10, 40 10, 40 70, 5 70, 5 10))"
    entries = [
        ("input", "model", f"@{tiny_model}"),
        ("input", "image", f"@{picture}"),
        ("annotation", "image", polygon),
        ("input", "n_workers", "0"),
    ]
    result = run_local(get_task("classify"), entries, folder=tmp_path / "run", engine="inline")
    assert result.state == FINISHED, result.reason
    assert result.outputs["classes"] == ["red"]
    collection = json.loads(result.geojson.read_text())
    feature = collection["features"][0]
    # back where it was drawn, in image pixels: crop offset added, y flipped with the image's height
    assert shape(feature["geometry"]).equals(shape(json.loads(json.dumps(box(5, 10, 40, 70).__geo_interface__))))
    assert feature["properties"]["classification"] == {"name": "red"} and feature["properties"]["scores"] > 0.5
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["state"] == "FINISHED" and record["outputs"]["classes"] == ["red"]
    report = format_result(result, task_descriptor(get_task("classify")))
    assert "FINISHED" in report and "geometries / classes / scores: 1 item(s)" in report


def test_a_failing_task_is_failed_with_its_message(tmp_path, picture):
    bad_model = tmp_path / "model.npz"
    bad_model.write_bytes(b"junk")
    entries = [
        ("input", "model", f"@{bad_model}"),
        ("input", "image", f"@{picture}"),
        ("annotation", "image", "POINT (3 3)"),
    ]
    result = run_local(get_task("classify"), entries, folder=tmp_path / "run", engine="inline")
    assert result.state == FAILED and "Give an mtdp model file" in result.reason


def test_outputs_the_app_engine_would_refuse_fail_the_run(tmp_path, picture, tiny_model, monkeypatch):
    """A task that writes model.npz instead of model is FAILED by the check, as by the App Engine."""
    from mtdp_core.appengine import local

    def sloppy(task, inputs, outputs, **kwargs):
        (Path(outputs) / "summary.txt").write_text("red")

    monkeypatch.setattr("mtdp_core.appengine.runner.run_task", sloppy)
    entries = [("input", "model", f"@{tiny_model}"), ("input", "image", f"@{picture}")]
    result = local.run_local(get_task("classify"), entries, folder=tmp_path / "run", engine="inline")
    assert result.state == FAILED
    assert "summary.txt: no output has this name (outputs have no extension: name it 'summary')" in result.reason
    assert "geometries: missing" in result.reason


@pytest.mark.slow
def test_run_in_a_subprocess_as_the_container_would(tmp_path, tiny_model):
    crop = make_image(tmp_path / "cell.png", size=(30, 30), color=(200, 40, 40))
    entries = [
        ("input", "model", f"@{tiny_model}"),
        ("input", "image", f"@{crop}"),
        ("annotation", "image", "POLYGON ((2 2, 28 2, 28 28, 2 28, 2 2))"),
        ("input", "n_workers", "0"),
    ]
    result = run_local(get_task("classify"), entries, folder=tmp_path / "run", engine="python")
    assert result.ok, result.reason
    assert "classify done" in (tmp_path / "run" / "task.log").read_text()
    entries[0] = ("input", "model", f"@{crop}")  # not a model: the entrypoint exits 1 with its message
    result = run_local(get_task("classify"), entries, folder=tmp_path / "run2", engine="python")
    assert result.state == FAILED and result.reason.startswith("exit status 1: Give an mtdp model file")


def test_no_container_engine_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # neither podman nor docker
    with pytest.raises(ContainerEngineError, match="Install podman or start Docker.*podman is not installed"):
        find_engine()
    fake = tmp_path / "docker"
    fake.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(ContainerEngineError, match="docker is installed but does not work here.*Cannot connect"):
        find_engine("docker")


def test_container_command_mounts_inputs_and_outputs_without_network(tmp_path):
    task = get_task("train")
    command = container_command(task, "podman", task.image_name, tmp_path / "in", tmp_path / "out")
    assert command[:5] == ["podman", "run", "--rm", "--network", "none"]
    assert (
        f"{(tmp_path / 'in').resolve()}:/inputs:Z" in command
        and f"{(tmp_path / 'out').resolve()}:/outputs:Z" in command
    )
    assert command[-1] == "org/mtdp/train:" + task.version
    assert command[command.index("--cpus") + 1] == str(task.resources["cpus"])
    gpu = container_command(task, "docker", "img", tmp_path, tmp_path, gpus=True)
    assert "--gpus" in gpu and os.path.basename(gpu[0]) == "docker"
