"""Tiny synthetic images on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_image(path: Path, size=(40, 32), color=None, seed=0, mode="RGB") -> Path:
    """An image file: random pixels, or ``color`` with a little noise."""
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


def colour_task(root: Path, n_per_class: int, seed: int, size=(36, 28)) -> tuple[list[Path], list[str]]:
    """Images of two classes that differ by colour (red-ish vs blue-ish), varied sizes, in class folders."""
    paths, labels = [], []
    for c, (name, color) in enumerate([("red", (190, 60, 60)), ("blue", (60, 60, 190))]):
        for i in range(n_per_class):
            w, h = size[0] + 4 * (i % 3), size[1]
            paths.append(
                make_image(root / name / f"img{i:02d}_{name}.png", size=(w, h), color=color, seed=seed + 100 * c + i)
            )
            labels.append(name)
    return paths, labels
