"""Fixtures of the server tests, reusable by app tests: a running local server, a seeded
project, and the official client connected to it."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtdp_core.server.testing import SeededProject, running_server, seed_synthetic_project

PROBE_APP = Path(__file__).resolve().parent / "probe_app"


@pytest.fixture
def server():
    """A local server with an in-memory database on a free port."""
    with running_server() as srv:
        yield srv


@pytest.fixture
def seeded(server, tmp_path) -> SeededProject:
    """Two 96x64 PNG images with four boxes each, terms 'tumour' and 'stroma'."""
    return seed_synthetic_project(server, tmp_path / "images")


@pytest.fixture
def client(server):
    """The official cytomine-python-client connected to ``server`` with the admin keys."""
    return server.connect()


@pytest.fixture
def probe_descriptor() -> Path:
    return PROBE_APP / "descriptors" / "probe.json"
