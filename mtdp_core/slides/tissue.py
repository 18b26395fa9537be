"""Tissue detection on a thumbnail: Otsu's threshold on saturation (or grey), then morphology.

The standard method of whole-slide pipelines (CLAM, TRIDENT's Otsu mode, TIAToolbox's
``OtsuTissueMasker``): stained tissue is coloured and darker than the glass around it. On a
low-resolution picture of the whole slide (``mpp`` µm/px, ~8 by default: a 100,000 px slide
at 0.25 µm/px gives a 3,125 px mask):

1. a median filter (``blur``) removes noise and thin debris;
2. Otsu's threshold separates tissue from glass on the HSV saturation (``"otsu_saturation"``,
   robust to dark glass and uneven illumination) or on grey levels (``"otsu_gray"``, for
   faint stains); the threshold is kept at least ``min_saturation`` (at most ``max_gray``)
   so that a blank slide, where Otsu would split noise, has no tissue; or a fixed
   ``threshold`` replaces Otsu's;
3. a closing (``closing`` µm) joins nearby fragments, holes are filled (``fill_holes``),
   and pieces smaller than ``min_area`` µm² are dropped (pen marks, dust).

``TissueMask.fraction(boxes)`` then gives the tissue fraction of any level-0 boxes in
constant time each (a summed-area table).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from mtdp_core.errors import ConfigurationError
from mtdp_core.slides.reader import Slide

logger = logging.getLogger(__name__)

TISSUE_METHODS: tuple[str, ...] = ("otsu_saturation", "otsu_gray")
#: Without a resolution, the mask is at most this many pixels on its longest side...
DEFAULT_MASK_SIDE = 2048
#: ... and the µm-based sizes below are converted as if the slide were at this resolution.
ASSUMED_MPP = 0.5


@dataclass(frozen=True)
class TissueDetector:
    """How tissue is told from glass (see the module docstring).

    Attributes:
        method: ``"otsu_saturation"`` or ``"otsu_gray"``.
        mpp: resolution of the mask, µm per pixel (coarser when the mask would exceed
            ``max_side``; finer when a caller asks for it, e.g. small tiles).
        max_side: longest side of the mask, in pixels.
        threshold: a fixed threshold instead of Otsu's: saturation in [0, 1] (tissue above)
            or grey level in [0, 1] (tissue below).
        min_saturation: lowest saturation threshold Otsu may choose (blank slides: no tissue).
        max_gray: highest grey threshold Otsu may choose.
        blur: median filter width, µm (0: none).
        closing: radius of the closing that joins fragments, µm (0: none).
        fill_holes: fill holes inside tissue (lumens, fat).
        min_area: smallest piece of tissue kept, µm².
    """

    method: str = "otsu_saturation"
    mpp: float = 8.0
    max_side: int = 4096
    threshold: float | None = None
    min_saturation: float = 0.07
    max_gray: float = 0.85
    blur: float = 40.0
    closing: float = 32.0
    fill_holes: bool = True
    min_area: float = 20_000.0

    def __post_init__(self) -> None:
        if self.method not in TISSUE_METHODS:
            raise ConfigurationError(
                f"Unknown tissue detection method {self.method!r}: use one of {', '.join(TISSUE_METHODS)}."
            )
        for name in ("mpp", "max_side"):
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"Invalid tissue detection {name} {getattr(self, name)!r}: use a number > 0.")
        for name in ("blur", "closing", "min_area"):
            if not getattr(self, name) >= 0:
                raise ConfigurationError(f"Invalid tissue detection {name} {getattr(self, name)!r}: use 0 or more.")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ConfigurationError(f"Invalid tissue threshold {self.threshold!r}: use a value in [0, 1].")

    def to_dict(self) -> dict:
        return asdict(self)

    def detect(self, slide: Slide, *, max_downsample: float | None = None) -> TissueMask:
        """The tissue mask of ``slide``.

        ``max_downsample``: the mask is at least this fine (level-0 pixels per mask pixel),
        e.g. a quarter of a tile, so that each tile's tissue fraction is measured on a few
        mask pixels (still capped by ``max_side``).
        """
        W, H = slide.dimensions
        mpp = slide.mpp or ASSUMED_MPP
        ds = self.mpp / mpp
        if max_downsample is not None:
            ds = min(ds, max_downsample)
        ds = max(ds, max(W, H) / self.max_side, 1.0)
        size = (max(1, round(W / ds)), max(1, round(H / ds)))
        thumb = slide.read_region((0, 0, W, H), size, max_output_side=max(size))
        mask_mpp = mpp * W / size[0]
        mask, threshold = self.segment(thumb, mask_mpp)
        result = TissueMask(mask, (W, H), threshold=threshold, mpp=mask_mpp if slide.mpp else None)
        logger.info(
            "tissue of %s: %.1f%% of the slide (%s, threshold %.3f, mask %dx%d px at %.3g µm/px%s)",
            slide.name,
            100 * result.area_fraction,
            self.method,
            threshold,
            size[0],
            size[1],
            mask_mpp,
            "" if slide.mpp else f", slide resolution unknown: sizes assume {ASSUMED_MPP} µm/px",
        )
        return result

    def segment(self, image: Image.Image, mpp: float) -> tuple[np.ndarray, float]:
        """Tissue mask (bool, H x W) of an RGB picture at ``mpp`` µm/px, and the threshold used
        (saturation in [0, 1], or grey level in [0, 1])."""
        # 8-bit channels computed by Pillow: no float copy of the picture (up to max_side² pixels).
        if self.method == "otsu_saturation":
            channel = np.asarray(image.convert("RGB").convert("HSV"))[..., 1]
        else:
            channel = 255 - np.asarray(image.convert("L"))  # darkness: tissue is darker than glass
        blur = _odd_pixels(self.blur, mpp)
        if blur > 1:
            channel = ndimage.median_filter(channel, size=blur, mode="nearest")
        if self.threshold is not None:
            cut = self.threshold if self.method == "otsu_saturation" else 1.0 - self.threshold
        else:
            hist = np.bincount(channel.ravel(), minlength=256).astype(np.float64)
            cut = (_otsu_index(hist, np.arange(256) / 255.0) + 0.5) / 255.0
            floor = self.min_saturation if self.method == "otsu_saturation" else 1.0 - self.max_gray
            cut = max(cut, floor)
        mask = channel > cut * 255.0
        radius = round(self.closing / mpp)
        if radius >= 1:
            # Padded so that tissue touching the border is not eroded by the closing.
            padded = np.pad(mask, radius, mode="edge")
            mask = ndimage.binary_closing(padded, structure=_disk(radius))[radius:-radius, radius:-radius]
        if self.fill_holes:
            mask = ndimage.binary_fill_holes(mask)
        min_pixels = self.min_area / (mpp * mpp)
        if min_pixels > 1 and mask.any():
            labels, n = ndimage.label(mask)
            sizes = np.bincount(labels.ravel(), minlength=n + 1)
            keep = sizes >= min_pixels
            keep[0] = False
            mask = keep[labels]
        reported = cut if self.method == "otsu_saturation" else 1.0 - cut
        return mask.astype(bool), float(reported)


@dataclass
class TissueMask:
    """A tissue mask over a slide: ``mask[row, col]`` covers level-0 pixels
    ``[col * sx, (col + 1) * sx) x [row * sy, (row + 1) * sy)``.

    Attributes:
        mask: bool (h, w).
        slide_size: level-0 (width, height).
        threshold: the threshold used (saturation, or grey level); None when not detected.
        mpp: µm per mask pixel, when the slide's resolution is known.
    """

    mask: np.ndarray
    slide_size: tuple[int, int]
    threshold: float | None = None
    mpp: float | None = None

    def __post_init__(self) -> None:
        self.mask = np.asarray(self.mask, dtype=bool)
        h, w = self.mask.shape
        # Summed-area table; int32 holds any mask up to 46,000 px square (max_side caps it lower).
        self._sat = np.zeros((h + 1, w + 1), dtype=np.int32)
        np.cumsum(np.cumsum(self.mask, axis=0, dtype=np.int32), axis=1, out=self._sat[1:, 1:])

    @classmethod
    def everywhere(cls, slide_size: tuple[int, int]) -> TissueMask:
        """A mask that counts every pixel as tissue (tiling without detection)."""
        return cls(np.ones((1, 1), dtype=bool), slide_size)

    @property
    def scale(self) -> tuple[float, float]:
        """Level-0 pixels per mask pixel along x and y."""
        h, w = self.mask.shape
        return self.slide_size[0] / w, self.slide_size[1] / h

    @property
    def area_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def fraction(self, boxes: np.ndarray) -> np.ndarray:
        """Tissue fraction of each level-0 box (n, 4) ``x, y, w, h``: float (n,) in [0, 1].

        Mask pixels partly inside a box count by the area they share with it.
        """
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if not len(boxes):
            return np.zeros(0)
        sx, sy = self.scale
        h, w = self.mask.shape
        x0 = np.clip(boxes[:, 0] / sx, 0, w)
        y0 = np.clip(boxes[:, 1] / sy, 0, h)
        x1 = np.clip((boxes[:, 0] + boxes[:, 2]) / sx, 0, w)
        y1 = np.clip((boxes[:, 1] + boxes[:, 3]) / sy, 0, h)
        covered = self._area(x0, y0, x1, y1)
        area = (boxes[:, 2] / sx) * (boxes[:, 3] / sy)
        return np.clip(covered / np.maximum(area, 1e-12), 0.0, 1.0)

    def _area(self, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray) -> np.ndarray:
        # Tissue area in a fractional box: the integral of the summed-area table, bilinear in
        # between grid points (exact for boxes whose corners fall on mask pixel corners).
        return self._sat_at(x1, y1) - self._sat_at(x0, y1) - self._sat_at(x1, y0) + self._sat_at(x0, y0)

    def _sat_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        h, w = self.mask.shape
        xi, yi = np.minimum(np.floor(x).astype(np.int64), w - 1), np.minimum(np.floor(y).astype(np.int64), h - 1)
        fx, fy = x - xi, y - yi
        s = self._sat
        corner = s[yi, xi].astype(np.float64)
        # S(x, y) = S(xi, yi) + partial column/row/pixel contributions.
        row_part = (s[yi + 1, xi] - corner) * fy  # pixels left of xi in the partial row
        col_part = (s[yi, xi + 1] - corner) * fx  # pixels above yi in the partial column
        return corner + row_part + col_part + self.mask[yi, xi] * fx * fy

    def to_image(self) -> Image.Image:
        """The mask as a black-and-white picture (tissue white)."""
        return Image.fromarray((self.mask * 255).astype(np.uint8), mode="L")


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]: the cut that maximises the between-class variance."""
    hist, edges = np.histogram(np.clip(values, 0, 1), bins=bins, range=(0.0, 1.0))
    if hist.sum() == 0:
        return 0.5
    return float(edges[_otsu_index(hist.astype(np.float64), (edges[:-1] + edges[1:]) / 2) + 1])


def _otsu_index(hist: np.ndarray, centers: np.ndarray) -> int:
    """The last bin of the lower class of Otsu's cut of a histogram."""
    total = hist.sum()
    w0 = np.cumsum(hist)
    w1 = total - w0
    m0 = np.cumsum(hist * centers)
    mean0 = m0 / np.maximum(w0, 1e-12)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mean0 - mean1) ** 2
    between[(w0 == 0) | (w1 == 0)] = -1
    if between.max() <= 0:  # one value only: nothing above it
        return int(np.argmax(hist))
    # Every cut inside an empty gap between two modes scores the same: take the middle one.
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return int(best[len(best) // 2])


def _odd_pixels(micrometres: float, mpp: float) -> int:
    n = int(round(micrometres / mpp))
    return n + 1 if n > 1 and n % 2 == 0 else n


def _disk(radius: int) -> np.ndarray:
    r = int(radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx * xx + yy * yy) <= r * r + 1e-9
