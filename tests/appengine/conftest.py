"""Fixtures of the App Engine tests: tiny synthetic examples, a tiny trained model, input folders
written as the App Engine writes them."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.images import make_image

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


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A linear SVM on random-ResNet18 features of red and blue images (what train would give)."""
    from mtdp_core.transfer import FeatureExtractor, Probe, save_model

    root = tmp_path_factory.mktemp("tiny-model")
    paths, labels = [], []
    for c, (name, color) in enumerate(COLOURS.items()):
        for i in range(6):
            paths.append(make_image(root / name / f"{i}.png", size=(36, 28), color=color, seed=10 * c + i))
            labels.append(name)
    extractor = FeatureExtractor("resnet18", "random", image_size=32, batch_size=8, num_workers=0)
    probe = Probe("svm", n_splits=3).fit(extractor.transform([str(p) for p in paths]), np.asarray(labels))
    return save_model(root / "model.npz", probe, features=extractor, extra={"app": "test"})


@pytest.fixture
def crop_inputs(tmp_path, tiny_model) -> Path:
    """classify's inputs for an annotation: a red crop, its geometry (relative to the crop, y up), the model."""
    folder = write_inputs(tmp_path / "inputs", n_workers=0, batch_size=4)
    (folder / "image").write_bytes(png_bytes(COLOURS["red"], size=(60, 50)))
    geometry = {"type": "Polygon", "coordinates": [[[5, 5], [55, 5], [55, 45], [5, 45], [5, 5]]]}
    (folder / "image.geojson").write_text(json.dumps(geometry), encoding="utf-8")
    (folder / "model").write_bytes(tiny_model.read_bytes())
    return folder
