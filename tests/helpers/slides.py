"""Slides and models shared by the slide, slide-app and App Engine tests: a two-tissue H&E-like
picture (pink on the left, purple on the right), tiles cut from it, and a tiny probe trained on them
that records its resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mtdp_core.slides.testing import tissue_like

#: Level-0 size of the generated slides (width, height): three levels, 128 px tiles, so
#: regions cross tile borders and edge tiles are partial.
SIZE = (720, 560)
MPP = 1.0  # a 720 x 560 µm piece: tissue larger than the detector's smallest piece (0.02 mm²)

#: The tiny models read 32 px tiles at 2 µm/px (64 level-0 pixels of the 1 µm/px slides).
MODEL_MPP = 2.0
MODEL_SIZE = 32


def two_tissue_pixels(seed: int = 7) -> np.ndarray:
    """Tissue on glass (a 40 px margin), pink on the left half and purple on the right."""
    h, w = SIZE[1], SIZE[0]
    inside = np.zeros((h, w), dtype=bool)
    inside[40:-40, 40:-40] = True
    pix = tissue_like((h, w), seed=seed, tissue=inside).astype(np.float64)
    right = pix[:, w // 2 :]
    tissue_right = inside[:, w // 2 :]
    right[tissue_right] = right[tissue_right] * np.array([0.55, 0.45, 0.95])
    return np.clip(pix, 0, 255).astype(np.uint8)


def training_tiles(n_per_class: int = 12, seed: int = 11):
    """Crops of another two-tissue picture at 2 µm/px, 32 px: (images, labels)."""
    pix = two_tissue_pixels(seed)
    image = Image.fromarray(pix)
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, (x0, x1) in (("pink", (48, 290)), ("purple", (400, 610))):
        for _ in range(n_per_class):
            x, y = int(rng.integers(x0, x1)), int(rng.integers(48, 440))
            images.append(
                image.crop((x, y, x + 64, y + 64)).resize((MODEL_SIZE, MODEL_SIZE), Image.Resampling.BILINEAR)
            )
            labels.append(label)
    return images, labels


def make_probe(path: Path, *, mpp: float | None = MODEL_MPP, seed: int = 0) -> Path:
    """A logistic-regression probe on random ResNet18 features of 32 px tiles, saved as mtdp does."""
    from sklearn.linear_model import LogisticRegression

    from mtdp_core.transfer.features import FeatureExtractor
    from mtdp_core.transfer.persistence import save_model

    images, labels = training_tiles()
    fx = FeatureExtractor("resnet18", "random", seed=seed, image_size=MODEL_SIZE, num_workers=0, device="cpu")
    clf = LogisticRegression(max_iter=2000).fit(fx.transform(images), labels)
    return save_model(path, clf, features=fx, mpp=mpp)
