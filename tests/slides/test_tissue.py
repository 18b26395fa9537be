"""Tissue detection: Otsu's threshold, the mask of a slide with known tissue, blank slides, and
the tissue fraction of boxes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mtdp_core.errors import ConfigurationError
from mtdp_core.slides.reader import open_slide
from mtdp_core.slides.tissue import TissueDetector, TissueMask, otsu_threshold
from tests.helpers.slides import SIZE


def _ellipse(shape: tuple[int, int]) -> np.ndarray:
    """The tissue of ``tissue_like`` (its default ellipse) at ``shape`` (h, w)."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    sy, sx = SIZE[1] / h, SIZE[0] / w
    X, Y = (xx + 0.5) * sx, (yy + 0.5) * sy
    return ((X - SIZE[0] / 2) / (0.38 * SIZE[0])) ** 2 + ((Y - SIZE[1] / 2) / (0.36 * SIZE[1])) ** 2 <= 1


def test_otsu_threshold_splits_two_modes():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.1, 0.02, 5000), rng.normal(0.6, 0.05, 3000)])
    t = otsu_threshold(values)
    assert 0.2 < t < 0.5


@pytest.mark.parametrize("method", ["otsu_saturation", "otsu_gray"])
def test_mask_finds_the_tissue(tiff_slide, method):
    detector = TissueDetector(method=method, mpp=8.0, min_area=0)
    with open_slide(tiff_slide) as slide:
        mask = detector.detect(slide)
    truth = _ellipse(mask.mask.shape)
    iou = (mask.mask & truth).sum() / (mask.mask | truth).sum()
    assert iou > 0.9
    assert mask.scale == pytest.approx((8.0, 8.0))  # 8 µm/px on a 1 µm/px slide
    assert mask.mpp == pytest.approx(8.0)


def test_blank_slide_has_no_tissue(blank_slide):
    # Otsu alone would split the glass's noise in two; the saturation floor keeps it empty.
    with open_slide(blank_slide) as slide:
        assert TissueDetector().detect(slide).area_fraction == 0
        assert TissueDetector(method="otsu_gray").detect(slide).area_fraction == 0


def test_fixed_threshold_and_small_pieces():
    picture = np.full((100, 100, 3), 240, dtype=np.uint8)
    picture[10:60, 10:60] = (200, 120, 170)  # 50 x 50 px of tissue
    picture[80:84, 80:84] = (200, 120, 170)  # a speck of 4 x 4 px
    image = Image.fromarray(picture)
    mask, t = TissueDetector(blur=0, closing=0, min_area=0).segment(image, 1.0)
    assert mask[10:60, 10:60].all() and mask[80:84, 80:84].all() and mask.sum() == 2500 + 16
    mask, _ = TissueDetector(blur=0, closing=0, min_area=100).segment(image, 1.0)  # µm² at 1 µm/px
    assert mask.sum() == 2500
    mask, t = TissueDetector(blur=0, closing=0, min_area=0, threshold=0.9).segment(image, 1.0)
    assert t == 0.9 and not mask.any()


def test_fill_holes_and_closing():
    picture = np.full((60, 60, 3), 240, dtype=np.uint8)
    picture[10:50, 10:50] = (200, 120, 170)
    picture[25:35, 25:35] = 240  # a lumen
    image = Image.fromarray(picture)
    filled, _ = TissueDetector(blur=0, closing=0, min_area=0).segment(image, 1.0)
    holed, _ = TissueDetector(blur=0, closing=0, min_area=0, fill_holes=False).segment(image, 1.0)
    assert filled[30, 30] and not holed[30, 30]


def test_fraction_of_boxes_is_exact_on_mask_pixels():
    mask = TissueMask(np.array([[1, 1, 0, 0]] * 4, dtype=bool), (400, 400))  # left half tissue
    boxes = np.array(
        [
            [0, 0, 200, 400],  # all tissue
            [200, 0, 200, 400],  # none
            [100, 0, 200, 400],  # half
            [150, 0, 100, 100],  # fractional mask pixels: half
            [350, 350, 100, 100],  # partly outside the slide: none
        ],
        dtype=float,
    )
    assert mask.fraction(boxes) == pytest.approx([1.0, 0.0, 0.5, 0.5, 0.0])
    assert TissueMask.everywhere((400, 400)).fraction(boxes[:2]) == pytest.approx([1.0, 1.0])


def test_invalid_parameters_are_refused():
    with pytest.raises(ConfigurationError, match="otsu_saturation"):
        TissueDetector(method="magic")
    with pytest.raises(ConfigurationError, match="threshold"):
        TissueDetector(threshold=2)
    with pytest.raises(ConfigurationError, match="min_area"):
        TissueDetector(min_area=-1)


@pytest.mark.realdata
def test_real_slide_tissue(real_slide):
    with open_slide(real_slide) as slide:
        mask = TissueDetector().detect(slide)
    # The CMU region is a strip of tissue on glass: about a third of the picture.
    assert 0.2 < mask.area_fraction < 0.6
    h, w = mask.mask.shape
    assert not mask.mask[:, : w // 10].any() or mask.mask[:, : w // 10].mean() < 0.05  # glass on the left
