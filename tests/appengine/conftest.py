"""Fixtures of the App Engine tests: tiny synthetic examples, a tiny trained model, input folders
written as the App Engine writes them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.appengine import COLOURS, png_bytes, write_inputs
from tests.helpers.images import make_image


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
