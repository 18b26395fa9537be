"""Each task on tiny synthetic inputs written as the App Engine writes them (entrypoint in this
process): its outputs pass the App Engine's checks; bad inputs fail with a message that says what to fix."""

from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtdp_core.appengine.errors import TaskInputError
from mtdp_core.appengine.files import output_problems, read_output
from mtdp_core.appengine.runner import main, run_task
from mtdp_core.appengine.spec import task_descriptor
from mtdp_core.appengine.tasks import get_task
from mtdp_core.cytomine.errors import ParameterError
from mtdp_core.errors import MtdpError
from mtdp_core.transfer.persistence import load_model
from tests.helpers.appengine import COLOURS, FAST, examples_zip, png_bytes, write_array, write_inputs


def run(name: str, inputs: Path, tmp_path: Path) -> tuple[Path, dict]:
    outputs = tmp_path / "outputs"
    run_task(get_task(name), inputs, outputs)
    descriptor = task_descriptor(get_task(name))
    assert output_problems(descriptor, outputs) == []
    return outputs, {key: read_output(descriptor, outputs, key) for key in descriptor["outputs"]}


# --------------------------------------------------------------------------- classify


def test_classify_an_annotation(crop_inputs, tmp_path):
    outputs, values = run("classify", crop_inputs, tmp_path)
    assert values["classes"] == ["red"]
    assert 0.5 < values["scores"][0] <= 1.0
    # The annotation's own geometry, relative to the crop (Cytomine adds the crop offset back).
    assert values["geometries"][0].bounds == (5, 5, 55, 45)
    assert values["summary"].startswith("red (probability")
    with Image.open(values["overlay"]) as overlay:
        assert overlay.format == "PNG" and overlay.size == (60, 50)


def test_classify_applies_the_crop_size_the_model_was_trained_with(crop_inputs, tmp_path, monkeypatch):
    """A legacy model records its crops (256 px longest side): the full-resolution crop is scaled to it."""
    from mtdp_core.appengine.tasks import classify

    seen = {}
    original = classify.emulate_crop

    def spy(image, spec):
        out = original(image, spec)
        seen["size"], seen["spec"] = out.size, spec
        return out

    monkeypatch.setattr(classify, "emulate_crop", spy)
    monkeypatch.setattr(
        "mtdp_core.cytomine.apps.svm_predict.model_crop_spec",
        lambda model: __import__("mtdp_core.cytomine.crops", fromlist=["CropSpec"]).CropSpec(max_size=30),
    )
    run("classify", crop_inputs, tmp_path / "a")
    assert seen["size"] == (30, 25)
    write_inputs(crop_inputs, crop_max_size=0, crop_zoom=1)  # override: no rescaling, zoom 1 halves
    run("classify", crop_inputs, tmp_path / "b")
    assert seen["size"] == (30, 25) and seen["spec"].max_size is None and seen["spec"].zoom == 1


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        (lambda f: (f / "model").unlink(), TaskInputError, r"Give the input 'Model' \(model\)"),
        (lambda f: (f / "model").write_bytes(b"not a model"), TaskInputError, "Give an mtdp model file"),
        (lambda f: (f / "image").write_bytes(b"\x89PNG broken"), TaskInputError, "cannot be read as a picture"),
        (lambda f: (f / "batch_size").write_text("many"), ParameterError, "Set batch_size to a whole number"),
        (lambda f: (f / "device").write_text("tpu"), ParameterError, "Set device to one of auto, cpu, cuda"),
        (
            lambda f: (f / "weights").write_text("imagenet"),
            MtdpError,
            r"random\): the model was trained on resnet18 .*random.* not imagenet",
        ),
    ],
)
def test_classify_bad_inputs_fail_clearly(crop_inputs, tmp_path, damage, error, message):
    damage(crop_inputs)
    with pytest.raises(error, match=message):
        run_task(get_task("classify"), crop_inputs, tmp_path / "out")


def test_entrypoint_exit_status_and_last_line(crop_inputs, tmp_path, caplog):
    assert main(["classify", "--inputs", str(crop_inputs), "--outputs", str(tmp_path / "ok")]) == 0
    (crop_inputs / "model").unlink()
    assert main(["classify", "--inputs", str(crop_inputs), "--outputs", str(tmp_path / "ko")]) == 1
    assert "FAILED: Give the input 'Model' (model)" in caplog.records[-1].getMessage()


# --------------------------------------------------------------------------- train


@pytest.mark.slow
def test_train_from_a_zip_of_class_folders_then_classify_with_its_model(tmp_path, crop_inputs):
    inputs = write_inputs(tmp_path / "inputs", cv_folds=3, **FAST)
    examples_zip(inputs / "examples", n=5)
    outputs, values = run("train", inputs, tmp_path / "train")
    assert values["classes"] == ["blue", "red"] and values["class_counts"] == [5, 5]
    assert values["n_examples"] == 10 and values["cv_metric"] == "roc_auc"
    assert values["cv_score"] > 0.8
    model = load_model(values["model"])
    assert model.kind == "svm" and [c.name for c in model.classes] == ["blue", "red"]
    assert json.loads(values["metrics"].read_text())["cross_validated"]["n"] == 10
    # the model classifies with classify (what a person does next)
    (crop_inputs / "model").write_bytes(values["model"].read_bytes())
    _, result = run("classify", crop_inputs, tmp_path / "classify")
    assert result["classes"] == ["red"]


@pytest.mark.slow
def test_train_from_arrays_of_annotations_and_labels_joined_with_a_zip(tmp_path):
    inputs = write_inputs(tmp_path / "inputs", cv_folds=2, **FAST)
    sources = []
    for i in range(6):
        path = tmp_path / f"crop{i}"
        path.write_bytes(png_bytes(COLOURS["red" if i % 2 else "blue"], seed=i))
        sources.append(path)
    geometry = {"type": "Polygon", "coordinates": [[[0, 0], [30, 0], [30, 20], [0, 0]]]}
    write_array(inputs / "images", sources, geometries=[geometry] * 6)
    write_array(inputs / "labels", ["red" if i % 2 else "blue" for i in range(6)])
    examples_zip(inputs / "examples", n=2, top=None, classes={"red": COLOURS["red"], "green": (40, 200, 40)})
    _, values = run("train", inputs, tmp_path)
    assert values["classes"] == ["blue", "green", "red"] and values["class_counts"] == [3, 2, 5]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda f: None, "Give examples: a zip of class folders"),
        (lambda f: examples_zip(f / "examples", classes={"red": COLOURS["red"]}), "at least two classes: found 1"),
        (lambda f: (f / "examples").write_bytes(b"PK not a zip"), "cannot be opened"),
        (lambda f: zipfile.ZipFile(f / "examples", "w").writestr("notes.txt", "x"), "it holds none"),
        (lambda f: zipfile.ZipFile(f / "examples", "w").writestr("../evil/a.png", "x"), "points outside the zip"),
        (
            lambda f: (write_array(f / "images", [png_path(f, 0), png_path(f, 1)]), write_array(f / "labels", ["a"])),
            "2 images but 1 labels",
        ),
        (lambda f: write_array(f / "images", [png_path(f, 0), png_path(f, 1)]), "Give labels for the 2 example images"),
        (
            lambda f: (write_array(f / "images", [png_path(f, 0), b_path(f)]), write_array(f / "labels", ["a", "b"])),
            r"Give images\[1\] as an image file",
        ),
        (
            lambda f: (write_array(f / "images", [png_path(f, 0)]), write_array(f / "labels", ["a/b"])),
            "without '/'",
        ),
    ],
)
def test_train_bad_examples_fail_before_any_work(tmp_path, setup, message):
    inputs = write_inputs(tmp_path / "inputs", **FAST)
    setup(inputs)
    with pytest.raises(TaskInputError, match=message):
        run_task(get_task("train"), inputs, tmp_path / "out")


def png_path(folder: Path, seed: int) -> Path:
    path = folder.parent / f"src{seed}.png"
    path.write_bytes(png_bytes((100, 100, 100), seed=seed))
    return path


def b_path(folder: Path) -> Path:
    path = folder.parent / "broken"
    path.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    return path


# --------------------------------------------------------------------------- extract_features, finetune


def test_extract_features_of_annotations(tmp_path):
    inputs = write_inputs(tmp_path / "inputs", **FAST)
    sources = [png_path(inputs / "x", i) for i in range(3)]
    write_array(inputs / "images", sources, geometries=[{"type": "Point", "coordinates": [1, 1]}] * 3)
    _, values = run("extract_features", inputs, tmp_path)
    assert values["n_images"] == 3 and values["n_features"] == 512
    with np.load(values["features"], allow_pickle=False) as data:
        assert data["features"].shape == (3, 512)
        assert list(data["filenames"]) == ["images_0.png", "images_1.png", "images_2.png"]
    assert json.loads(values["metadata"].read_text())["backbone"]["arch"] == "resnet18"


@pytest.mark.slow
def test_finetune_from_a_zip(tmp_path):
    inputs = write_inputs(
        tmp_path / "inputs", epochs=1, learning_rates="0.001", val_fraction=0.5, augment=False, **FAST
    )
    examples_zip(inputs / "examples", n=4)
    _, values = run("finetune", inputs, tmp_path)
    assert values["classes"] == ["blue", "red"] and values["best_epoch"] == 1
    assert values["best_learning_rate"] == pytest.approx(0.001)
    assert load_model(values["model"]).kind == "finetune"
    assert values["history"].read_text().startswith("lr,epoch")


def test_cpu_quota_from_cgroups(tmp_path):
    from mtdp_core.appengine.runner import cpu_quota

    assert cpu_quota(tmp_path) is None  # no cgroup files: unlimited
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpu_quota(tmp_path) == 2  # 1.5 CPUs: two threads
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(tmp_path) == 4
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_quota(tmp_path) is None


def test_limit_threads_sets_every_engine_s_threads_without_needing_torch(tmp_path, monkeypatch):
    # The torch-free images have no torch: the limit goes through OMP_NUM_THREADS, which ONNX Runtime
    # (runtime.cpu_threads) and torch both read; the container smoke found `import torch` here.
    from mtdp_core.appengine import runner
    from mtdp_core.runtime import cpu_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 64)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` would fail
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    runner.limit_threads(tmp_path)
    assert os.environ["OMP_NUM_THREADS"] == "2" and cpu_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # set by the user: kept
    runner.limit_threads(tmp_path)
    assert cpu_threads() == 3
