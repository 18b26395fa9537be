"""Shared fixtures: hermetic weights folders, tiny synthetic images, the real-data folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MTDP_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def session_graph_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("graphs")


@pytest.fixture
def shared_graph_dir(monkeypatch, session_graph_dir) -> Path:
    """Exported ONNX graphs shared by the tests that ask for it (each export takes seconds): a
    backbone is exported once per session. Other tests get an empty graph folder of their own,
    so what engine ``auto`` picks never depends on the tests that ran before."""
    monkeypatch.setenv("MTDP_GRAPH_DIR", str(session_graph_dir))
    return session_graph_dir


@pytest.fixture(autouse=True)
def _isolated_weight_dirs(tmp_path_factory, monkeypatch):
    """No test sees the machine's own weights and graph caches: each gets empty ones."""
    base = tmp_path_factory.mktemp("weights")
    monkeypatch.setenv("MTDP_WEIGHTS_DIR", str(base / "mtdp"))
    monkeypatch.setenv("TORCH_HOME", str(base / "torch"))
    monkeypatch.delenv("TORCH_MODEL_ZOO", raising=False)
    monkeypatch.setenv("HOME", str(base / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("MTDP_GRAPH_DIR", str(base / "graphs"))
    yield


@pytest.fixture
def weights_dir() -> Path:
    path = Path(os.environ["MTDP_WEIGHTS_DIR"])
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_image(path: Path, size=(40, 32), color=None, seed=0, mode="RGB") -> Path:
    rng = np.random.default_rng(seed)
    w, h = size
    if color is None:
        array = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    else:
        array = np.empty((h, w, 3), dtype=np.uint8)
        array[:] = color
        array = np.clip(array.astype(int) + rng.integers(-20, 21, size=array.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(array)
    if mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.fixture
def tiny_image_folder(tmp_path) -> Path:
    """Two class folders of small images of distinct colours (PNG and JPEG)."""
    root = tmp_path / "images"
    for c, (name, color) in enumerate([("red", (200, 40, 40)), ("blue", (40, 40, 200))]):
        for i in range(4):
            ext = "png" if i % 2 else "jpg"
            make_image(root / name / f"{name}_{i}.{ext}", size=(40 + 4 * i, 32), color=color, seed=10 * c + i)
    return root


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (set MTDP_SHARED_DATA)")
    return SHARED_DATA
