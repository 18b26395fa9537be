"""Slides written for the tests: multi-level tiled TIFF and Aperio-like SVS from H&E-like pixels
(``mtdp_core.slides.testing``), a plain PNG, a blank slide, and the real CMU slide when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtdp_core.slides.testing import tissue_like, write_slide

#: Level-0 size of the generated slides (width, height): three levels, 128 px tiles, so
#: regions cross tile borders and edge tiles are partial.
SIZE = (720, 560)
MPP = 1.0  # a 720 x 560 µm piece: tissue larger than the detector's smallest piece (0.02 mm²)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One torch thread: the models here are tiny (32 px tiles), where a second thread only adds
    synchronisation (as in tests/transfer)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def slide_pixels() -> np.ndarray:
    """H&E-like level-0 pixels (h, w, 3): tissue in a centred ellipse, glass around it."""
    return tissue_like((SIZE[1], SIZE[0]), seed=3)


@pytest.fixture(scope="session")
def slides_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slides")


@pytest.fixture(scope="session")
def tiff_slide(slides_dir, slide_pixels) -> Path:
    """A generic pyramidal tiled TIFF: 3 levels (1, 2, 4), 1 µm/px in its TIFF tags, lossless."""
    return write_slide(slides_dir / "pyramid.tif", slide_pixels, levels=3, tile=128, mpp=MPP)


@pytest.fixture(scope="session")
def svs_slide(slides_dir, slide_pixels) -> Path:
    """An Aperio-like SVS: 3 levels, a thumbnail IFD, AppMag 10 and MPP 1 in its description."""
    return write_slide(
        slides_dir / "aperio.svs", slide_pixels, levels=3, tile=128, fmt="svs", mpp=MPP, magnification=10
    )


@pytest.fixture(scope="session")
def png_slide(slides_dir, slide_pixels) -> Path:
    """The same pixels as a plain PNG (no resolution)."""
    path = slides_dir / "plain.png"
    Image.fromarray(slide_pixels).save(path)
    return path


@pytest.fixture(scope="session")
def blank_slide(slides_dir) -> Path:
    """Glass only: no tissue anywhere."""
    rng = np.random.default_rng(0)
    glass = np.clip(243 + rng.normal(0, 1.5, (SIZE[1], SIZE[0], 3)), 0, 255).astype(np.uint8)
    return write_slide(slides_dir / "blank.tif", glass, levels=2, tile=128, mpp=MPP)


@pytest.fixture
def real_slide(shared_data) -> Path:
    path = shared_data / "wsi" / "CMU-1-Small-Region.svs"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


# --------------------------------------------------------------------------- classification

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


@pytest.fixture(scope="session")
def two_tissue_slide(slides_dir) -> Path:
    """A 3-level Aperio-like slide, 1 µm/px: pink tissue on the left, purple on the right."""
    return write_slide(slides_dir / "two_tissues.svs", two_tissue_pixels(), levels=3, tile=128, fmt="svs", mpp=MPP)


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


@pytest.fixture(scope="session")
def probe_model(tmp_path_factory) -> Path:
    return make_probe(tmp_path_factory.mktemp("models") / "probe.npz")
