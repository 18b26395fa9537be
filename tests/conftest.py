"""Shared fixtures: hermetic weights folders, tiny synthetic images, the real-data folder, and the
local Cytomine server (with a seeded project and the official client) for the app tests.
Helpers that are not fixtures live in ``tests/helpers``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.helpers.images import make_image
from tests.helpers.paths import SHARED_DATA

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


@pytest.fixture
def server():
    """A local Cytomine server with an in-memory database on a free port."""
    from mtdp_core.server.testing import running_server

    with running_server() as srv:
        yield srv


@pytest.fixture
def seeded(server, tmp_path):
    """Two 96x64 PNG images with four boxes each, terms 'tumour' and 'stroma'."""
    from mtdp_core.server.testing import seed_synthetic_project

    return seed_synthetic_project(server, tmp_path / "images")


@pytest.fixture
def client(server):
    """The official cytomine-python-client connected to ``server`` with the admin keys."""
    return server.connect()
