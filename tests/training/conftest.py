"""A tiny pool and the options of a fast CPU training run."""

from __future__ import annotations

import pytest

from tests.data.pool_factory import make_tiny_pool


@pytest.fixture(scope="module")
def tiny_pool(tmp_path_factory):
    return make_tiny_pool(tmp_path_factory.mktemp("pool") / "pool")


@pytest.fixture
def fast_config(tiny_pool, tmp_path):
    """resnet18 at 32 px, batch 8, a few iterations, no workers: about a second per run."""
    return {
        "pool": str(tiny_pool.path),
        "backbone": "resnet18",
        "weights": "random",
        "image_size": 32,
        "batch_size": 8,
        "iterations": 4,
        "lr": 0.01,
        "head_lr_multiplier": 5.0,
        "warmup_iterations": 0,
        "num_workers": 0,
        "device": "cpu",
        "log_every": 1,
        "val_every": 0,
        "checkpoint_every": 100,
        "progress": False,
        "output_dir": str(tmp_path / "run"),
    }
