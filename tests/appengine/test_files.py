"""Reading inputs as the App Engine writes them, writing outputs, and the output check (what the
App Engine refuses: extensions, missing outputs, malformed values and arrays)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shapely.geometry import box

from mtdp_core.appengine.errors import TaskInputError, TaskOutputError
from mtdp_core.appengine.files import TaskInputs, TaskOutputs, output_problems, read_array_size, read_output
from mtdp_core.appengine.spec import task_descriptor
from mtdp_core.appengine.tasks import get_task
from tests.helpers.appengine import png_bytes, write_array, write_inputs


@pytest.fixture
def classify():
    return get_task("classify")


def test_scalars_become_the_parsers_command_line(tmp_path, classify):
    folder = write_inputs(tmp_path, batch_size="16\n", device="cpu", model="x", image="y")
    inputs = TaskInputs(classify, folder)
    argv = inputs.parameter_argv()
    assert argv == ["--batch_size=16", "--device=cpu"]  # one trailing newline dropped
    args, _ = classify.parser.parse_app_args(argv)
    assert args.batch_size == 16 and args.device == "cpu" and args.crop_max_size is None  # absent: default


def test_a_text_value_that_looks_like_an_option_stays_a_value(tmp_path, classify):
    folder = write_inputs(tmp_path, weights="-weird-file.pth", model="x", image="y")
    args, _ = classify.parser.parse_app_args(TaskInputs(classify, folder).parameter_argv())
    assert args.weights == "-weird-file.pth"


def test_a_required_file_input_missing_is_named(tmp_path, classify):
    folder = write_inputs(tmp_path, image="y")
    with pytest.raises(TaskInputError, match=r"Give the input 'Model' \(model\): .*model is missing"):
        TaskInputs(classify, folder)


def test_an_image_with_its_geojson_is_an_annotation(tmp_path, classify):
    folder = write_inputs(tmp_path, model="x")
    (folder / "image").write_bytes(png_bytes((1, 2, 3)))
    inputs = TaskInputs(classify, folder)
    assert not inputs.image("image").is_annotation
    (folder / "image.geojson").write_text(json.dumps({"type": "Point", "coordinates": [3, 4]}))
    image = inputs.image("image")
    assert image.is_annotation and image.geometry.coords[0] == (3, 4)
    (folder / "image.geojson").write_text("{broken")
    with pytest.raises(TaskInputError, match="image.geojson.*not JSON"):
        inputs.image("image")


def test_arrays_read_with_their_array_yml(tmp_path):
    train = get_task("train")
    folder = tmp_path / "inputs"
    write_array(folder / "labels", ["WBC", "RBC"])
    geometry = {"type": "Point", "coordinates": [1, 1]}
    write_array(
        folder / "images", [png_bytes_path(tmp_path, 0), png_bytes_path(tmp_path, 1)], geometries=[geometry] * 2
    )
    inputs = TaskInputs(train, folder)
    assert inputs.texts("labels") == ["WBC", "RBC"]
    images = inputs.images("images")
    assert [i.label for i in images] == ["images[0]", "images[1]"] and all(i.is_annotation for i in images)
    assert inputs.file("examples") is None  # optional, absent


def png_bytes_path(tmp_path: Path, seed: int) -> Path:
    path = tmp_path / f"src{seed}.png"
    path.write_bytes(png_bytes((10, 20, 30), seed=seed))
    return path


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda f: (f / "array.yml").unlink(), "array.yml is missing"),
        (lambda f: (f / "array.yml").write_text("size: 3\n"), "2 is missing"),
        (lambda f: (f / "array.yml").write_text("count: 2\n"), "should read 'size: N'"),
    ],
)
def test_malformed_arrays_are_explained(tmp_path, setup, message):
    folder = write_array(tmp_path / "labels", ["a", "b"])
    setup(folder)
    with pytest.raises(TaskInputError, match=message):
        read_array_size(folder, what="labels")


# --------------------------------------------------------------------------- outputs


def write_classify_outputs(folder: Path, n: int = 2) -> TaskOutputs:
    outputs = TaskOutputs(get_task("classify"), folder)
    outputs.array("geometries", [box(0, 0, 5 + i, 5) for i in range(n)])
    outputs.array("classes", ["red"] * n)
    outputs.array("scores", [0.5] * n)
    outputs.scalar("summary", "red (probability 0.50)")
    from PIL import Image

    outputs.image("overlay", Image.new("RGB", (8, 8)))
    return outputs


def test_written_outputs_pass_the_check_and_read_back(tmp_path):
    outputs = write_classify_outputs(tmp_path)
    assert outputs.missing() == []
    descriptor = task_descriptor(get_task("classify"))
    assert output_problems(descriptor, tmp_path) == []
    assert (tmp_path / "geometries" / "array.yml").read_text() == "size: 2\n"
    assert read_output(descriptor, tmp_path, "scores") == [0.5, 0.5]
    assert read_output(descriptor, tmp_path, "geometries")[1].bounds == (0, 0, 6, 5)
    assert not any(p.suffix for p in tmp_path.iterdir())  # no extensions


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda f: (f / "overlay").rename(f / "overlay.png"), "overlay.png: no output has this name (outputs have no"),
        (lambda f: (f / "report.html").write_text("<p>"), "report.html: no output has this name"),
        (lambda f: (f / "summary").unlink(), "summary: missing"),
        (lambda f: (f / "scores" / "1").write_text("high"), "scores[1]: 'high' is not a valid number"),
        (lambda f: (f / "scores" / "1").write_text("1.5"), "scores[1]: 1.5 breaks leq 1"),
        (lambda f: (f / "scores" / "array.yml").write_text("size: 1\n"), "unexpected entries ['1']"),
        (lambda f: (f / "classes" / "2").write_text("red"), "unexpected entries ['2']"),
        (
            lambda f: (f / "geometries" / "0").write_text(
                json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [2, 2], [2, 0], [0, 2], [0, 0]]]})
            ),
            "geometries[0]: invalid geometry",
        ),
        (
            lambda f: (f / "geometries" / "0").write_text(
                json.dumps({"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [0, 0]}})
            ),
            "bare GeoJSON geometry",
        ),
        (lambda f: (f / "overlay").write_bytes(b"GIF89a"), "overlay: not a png file"),
    ],
)
def test_output_check_refuses_what_the_app_engine_refuses(tmp_path, damage, expected):
    write_classify_outputs(tmp_path)
    damage(tmp_path)
    problems = output_problems(task_descriptor(get_task("classify")), tmp_path)
    assert any(expected in p for p in problems), problems


def test_matching_arrays_of_other_sizes_are_refused(tmp_path):
    outputs = write_classify_outputs(tmp_path, n=2)
    outputs.array("classes", ["red"] * 3)
    problems = output_problems(task_descriptor(get_task("classify")), tmp_path)
    assert any("geometries: 2 items but classes has 3" in p for p in problems), problems


def test_writer_refuses_values_of_the_wrong_type(tmp_path):
    outputs = TaskOutputs(get_task("train"), tmp_path)
    with pytest.raises(TaskOutputError, match="whole number"):
        outputs.scalar("n_examples", 2.5)
    with pytest.raises(TaskOutputError, match="finite"):
        outputs.scalar("cv_score", float("nan"))
    with pytest.raises(TaskOutputError, match="declares no output"):
        outputs.scalar("accuracy", 1.0)
    with pytest.raises(TaskOutputError, match="not a scalar"):
        outputs.scalar("model", "x")
