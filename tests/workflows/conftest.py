"""Fixtures of the app tests: the local server with a small synthetic project, the apps registered
from their descriptors, and helpers to run an app in this process (``main(argv)``, as a person
runs it with their keys) or to launch it as Cytomine does (a subprocess built from the descriptor)."""

from __future__ import annotations

import pytest

from mtdp_core.server.testing import seed_synthetic_project
from tests.helpers.apps import APPS, Apps
from tests.helpers.paths import REPO_ROOT as ROOT


@pytest.fixture
def apps(server, tmp_path, monkeypatch) -> Apps:
    """Three 96x64 images with six boxes each (terms tumour/stroma), the four apps registered."""
    monkeypatch.chdir(tmp_path)  # outputs of in-process runs go to ./mtdp-out
    project = seed_synthetic_project(server, tmp_path / "images", n_images=3, boxes_per_image=6)
    software = {app: server.register_app(ROOT / "descriptors" / f"{app}.json")["id"] for app in APPS}
    return Apps(server, project, software)
