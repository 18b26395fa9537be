"""The inference tests share one graph folder per session (exports take seconds each)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _shared_graphs(shared_graph_dir):
    yield
