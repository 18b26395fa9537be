"""The graph cache: keys, export checked against torch, atomic and concurrent writes, listing."""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest
import torch
from torch import nn

from mtdp_core.backbones.base import Backbone
from mtdp_core.errors import ExportError
from mtdp_core.inference import graphs
from mtdp_core.inference.graphs import (
    check_graph,
    clear_graphs,
    compare_features,
    ensure_graph,
    find_graph,
    graph_dirs,
    graph_key,
    graph_name,
    list_graphs,
    read_metadata,
    tensors_digest,
)


class TinyBackbone(Backbone):
    """Two convolutions: exports in about a second."""

    arch = "tiny"
    n_features = 8

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 8, 3))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_key_names_change_with_everything_that_makes_the_graph(monkeypatch):
    base = graph_name(graph_key("resnet18", "sha256-aa", 224))
    others = {
        graph_name(graph_key("resnet34", "sha256-aa", 224)),
        graph_name(graph_key("resnet18", "sha256-bb", 224)),
        graph_name(graph_key("resnet18", "sha256-aa", 256)),
    }
    monkeypatch.setattr(graphs, "__version__", "99.0")
    others.add(graph_name(graph_key("resnet18", "sha256-aa", 224)))
    assert base not in others and len(others) == 4
    assert base.startswith("resnet18-224px-") and base.endswith(".onnx")


def test_graph_dirs_search_the_env_folders_then_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("MTDP_GRAPH_DIR", f"{tmp_path / 'ro'}{os.pathsep}{tmp_path / 'rw'}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert graph_dirs() == [tmp_path / "ro", tmp_path / "rw", tmp_path / "cache" / "mtdp" / "graphs"]


def test_tensors_digest_follows_the_weights():
    a, b = TinyBackbone(0), TinyBackbone(0)
    assert tensors_digest(a) == tensors_digest(b)
    with torch.no_grad():
        b.body[0].weight[0, 0, 0, 0] += 1e-3
    assert tensors_digest(a) != tensors_digest(b)


def test_export_once_then_found_with_metadata_and_the_same_features(tmp_path):
    model = TinyBackbone()
    key = graph_key("tiny", tensors_digest(model), 20)
    calls = []

    def factory():
        calls.append(1)
        return model

    path = ensure_graph(key, factory, folder=tmp_path)
    assert path == tmp_path / graph_name(key) and calls == [1]
    assert ensure_graph(key, factory, folder=tmp_path) == path and calls == [1]  # reused, not re-exported
    assert not list(tmp_path.glob("*.tmp"))
    meta = read_metadata(path)
    assert meta["key"] == key and meta["identity"] == model.identity() and meta["n_features"] == 8
    stats = check_graph(model, path, 20)
    assert stats["max_rel_diff"] <= graphs.RTOL and stats["min_cosine"] >= graphs.MIN_COSINE


def test_a_graph_that_does_not_reproduce_torch_is_refused(tmp_path):
    model = TinyBackbone(0)
    path = ensure_graph(graph_key("tiny", tensors_digest(model), 20), lambda: model, folder=tmp_path)
    with pytest.raises(ExportError, match="does not reproduce its features"):
        check_graph(TinyBackbone(1), path, 20)  # other weights: the graph is not this module


def test_the_export_check_runs_before_the_graph_is_kept(tmp_path, monkeypatch):
    def failing(model, path, size):
        raise ExportError("mismatch")

    monkeypatch.setattr(graphs, "check_graph", failing)
    model = TinyBackbone()
    key = graph_key("tiny", tensors_digest(model), 20)
    with pytest.raises(ExportError, match="mismatch"):
        ensure_graph(key, lambda: model, folder=tmp_path)
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob("*.tmp"))


def test_compare_features_scale_and_cosine():
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    stats = compare_features(a, a + np.array([[0.0, 0.004], [0.0, 0.0]]))
    assert stats["max_rel_diff"] == pytest.approx(0.001)
    assert stats["min_cosine"] < 1.0 and compare_features(a, a)["min_cosine"] == pytest.approx(1.0)


def _export_in_child(folder: str, marker_dir: str, barrier) -> None:
    model = TinyBackbone()
    key = graph_key("tiny", tensors_digest(model), 20)

    def factory():
        open(os.path.join(marker_dir, f"exported-{os.getpid()}"), "w").close()
        return model

    barrier.wait()
    ensure_graph(key, factory, folder=folder)


def test_two_processes_exporting_at_once_export_once(tmp_path):
    folder, markers = tmp_path / "graphs", tmp_path / "markers"
    markers.mkdir()
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: forking a process that ran torch is not safe
    barrier = ctx.Barrier(2)
    children = [ctx.Process(target=_export_in_child, args=(str(folder), str(markers), barrier)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(600)
    assert [c.exitcode for c in children] == [0, 0]
    assert len(list(markers.iterdir())) == 1  # the second waited on the lock, then found the graph
    assert len(list(folder.glob("*.onnx"))) == 1 and not list(folder.glob("*.tmp"))
    assert read_metadata(next(folder.glob("*.onnx")))["key"]["arch"] == "tiny"


def test_a_graph_under_another_keys_name_is_not_trusted(tmp_path, monkeypatch):
    from mtdp_core.inference.engines import onnx_backbone

    monkeypatch.setenv("MTDP_GRAPH_DIR", str(tmp_path))
    model = TinyBackbone()
    path = ensure_graph(graph_key("tiny", tensors_digest(model), 20), lambda: model)
    other = TinyBackbone(1)
    path.rename(tmp_path / graph_name(graph_key("tiny", tensors_digest(other), 20)))
    with pytest.raises(ExportError, match="does not hold what its name says"):
        onnx_backbone(other, image_size=20)


def test_list_and_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("MTDP_GRAPH_DIR", str(tmp_path))
    model = TinyBackbone()
    ensure_graph(graph_key("tiny", tensors_digest(model), 20), lambda: model)
    assert find_graph(graph_key("tiny", tensors_digest(model), 20)) is not None
    [entry] = list_graphs()
    assert entry["arch"] == "tiny" and entry["image_size"] == 20 and entry["current"]
    assert clear_graphs(stale_only=True) == []
    monkeypatch.setattr(graphs, "__version__", "99.0")  # now it is another version's graph
    assert not list_graphs()[0]["current"]
    assert len(clear_graphs(stale_only=True)) == 1 and list_graphs() == []
