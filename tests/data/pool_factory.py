"""Tiny synthetic task pools for tests (images of a few dozen pixels, a colour per class)."""

from __future__ import annotations

from pathlib import Path

from mtdp_core.data.pools import SampleRow, TaskInfo, TaskPool, load_pool, write_pool_index, write_task
from tests.helpers.images import make_image

# (name, number of classes, number of images): very different sizes, as in real pools.
DEFAULT_SPECS = (("alpha", 2, 10), ("beta", 3, 15), ("gamma", 2, 40))


def make_tiny_pool(root: Path, specs=DEFAULT_SPECS, *, index: bool = True) -> TaskPool:
    """Every 5th image goes to val, the next to test, the rest to train; two images per group."""
    tasks = []
    for ti, (name, n_classes, n_images) in enumerate(specs):
        rows = []
        for i in range(n_images):
            c = i % n_classes
            split = ("train", "train", "train", "val", "test")[i % 5]
            size = (36 + (i % 3) * 6, 32)  # some non-square images, for the random square crop
            make_image(
                root / name / "img" / f"{i:03d}.png",
                size=size,
                color=(40 + 160 * (c % 2), 60 * c, (40 + 50 * ti) % 256),
                seed=100 * ti + i,
            )
            rows.append(SampleRow(f"img/{i:03d}.png", split, f"class{c}", f"g{i // 2}"))
        info = TaskInfo(
            name,
            tuple(f"class{k}" for k in range(n_classes)),
            "roc_auc" if n_classes == 2 else "accuracy",
            group_kind="image",
        )
        tasks.append(write_task(root / name, info, rows))
    if index:
        write_pool_index(root, tasks)
    return load_pool(root)
