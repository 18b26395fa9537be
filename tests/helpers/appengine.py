"""App Engine inputs written as the App Engine writes them (scalars, arrays, a zip of examples),
tiny synthetic pictures, and fast task settings: shared by the App Engine tests."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

#: Tiny and fast: a random ResNet18 on 32-pixel inputs (the tasks' logic, not the model, is tested).
FAST = {"backbone": "resnet18", "weights": "random", "image_size": 32, "batch_size": 8, "n_workers": 0}
COLOURS = {"red": (200, 40, 40), "blue": (40, 40, 200)}


def write_inputs(folder: Path, **values) -> Path:
    """Scalar inputs as the App Engine writes them: one text file per input, no extension."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in values.items():
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def write_array(folder: Path, items: list, *, geometries: list | None = None) -> Path:
    """An array input: items 0..N-1 (paths are copied, other values written as text) and array.yml."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, item in enumerate(items):
        if isinstance(item, Path):
            (folder / str(i)).write_bytes(item.read_bytes())
        else:
            (folder / str(i)).write_text(str(item), encoding="utf-8")
        if geometries is not None:
            (folder / f"{i}.geojson").write_text(json.dumps(geometries[i]), encoding="utf-8")
    (folder / "array.yml").write_text(f"size: {len(items)}\n", encoding="utf-8")
    return folder


def png_bytes(color, size=(36, 28), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    w, h = size
    array = np.clip(np.array(color) + rng.integers(-25, 26, size=(h, w, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def examples_zip(path: Path, *, n: int = 4, top: str | None = "cells", classes=COLOURS) -> Path:
    """A zip of class folders (inside one top folder, as zipping a folder makes)."""
    prefix = f"{top}/" if top else ""
    with zipfile.ZipFile(path, "w") as archive:
        for c, (name, color) in enumerate(classes.items()):
            for i in range(n):
                archive.writestr(f"{prefix}{name}/{name}_{i}.png", png_bytes(color, seed=10 * c + i))
    return path
