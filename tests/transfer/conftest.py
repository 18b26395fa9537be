"""Fixtures of the transfer tests: a tiny two-colour classification task on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import make_image


def colour_task(root: Path, n_per_class: int, seed: int, size=(36, 28)) -> tuple[list[Path], list[str]]:
    """Images of two classes that differ by colour (red-ish vs blue-ish), varied sizes."""
    paths, labels = [], []
    for c, (name, color) in enumerate([("red", (190, 60, 60)), ("blue", (60, 60, 190))]):
        for i in range(n_per_class):
            w, h = size[0] + 4 * (i % 3), size[1]
            paths.append(
                make_image(root / name / f"img{i:02d}_{name}.png", size=(w, h), color=color, seed=seed + 100 * c + i)
            )
            labels.append(name)
    return paths, labels


@pytest.fixture
def colour_splits(tmp_path) -> dict[str, tuple[list[Path], list[str]]]:
    """train (8 per class), val (4 per class) and test (6 per class) splits."""
    return {
        split: colour_task(tmp_path / split, n, seed)
        for split, n, seed in (("train", 8, 0), ("val", 4, 1000), ("test", 6, 2000))
    }


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One torch thread in these tests: their tensors are tiny (16-64 px images), where a
    second thread only adds synchronisation, and on a shared machine that waiting dominates."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
