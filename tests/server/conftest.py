"""Fixtures of the server tests (the server, a seeded project and the official client are the
shared fixtures of tests/conftest.py): the probe app's descriptor."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.paths import PROBE_APP


@pytest.fixture
def probe_descriptor() -> Path:
    return PROBE_APP / "descriptors" / "probe.json"
