"""Fixtures of the transfer tests: a tiny two-colour classification task on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.images import colour_task
from tests.helpers.threads import one_torch_thread  # noqa: F401  (autouse: one torch thread for tiny tensors)


@pytest.fixture
def colour_splits(tmp_path) -> dict[str, tuple[list[Path], list[str]]]:
    """train (8 per class), val (4 per class) and test (6 per class) splits."""
    return {
        split: colour_task(tmp_path / split, n, seed)
        for split, n, seed in (("train", 8, 0), ("val", 4, 1000), ("test", 6, 2000))
    }
