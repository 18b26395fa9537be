"""Whole-slide files (SVS, NDPI, MRXS, SCN, pyramidal TIFF...) as the server's image server sees them.

A real Cytomine leaves pixels to its image server (PIMS; IMS for the Grails core), which keeps
the file's pyramid and answers every request from one level of it. This module is that part of
the local server, on OpenSlide (``openslide-python`` + the ``openslide-bin`` library wheel):

- **metadata** (:func:`probe_slide`): level-0 size, the levels, µm per pixel
  (``openslide.mpp-x/y``) and objective power (``openslide.objective-power``), the content type
  the legacy image server gave the format (``openslide/svs``, ``image/pyrtiff``...);
- **pixels** (:meth:`SlideFile.region`): a level-0 box at an output size, read from the level
  PIMS picks (``Pyramid.most_appropriate_tier``: the coarsest level whose downsample is at
  most the requested one, the mean of both axes; 1% is allowed for rounded level sizes, so an
  Aperio level of downsample 4.0001 serves a 4x request), then resized (bilinear over the exact
  fractional box, antialiased when shrinking). Large outputs are made block by block so that no
  read holds more than :data:`READ_SIDE` x :data:`READ_SIDE` level pixels: memory stays bounded
  whatever the slide (the output itself is bounded by the renderers' 10,000 px limit).

It is deliberately independent of ``mtdp_core.slides`` (the library's reader): the server is
the image server the apps are tested against, and a test compares its crops with the library's
regions, which only means something when two implementations agree (see docs/local_server.md).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from mtdp_core.server.errors import BadRequest, NotFound

logger = logging.getLogger(__name__)

#: File types of whole-slide images found by ``mtdp server import`` in a folder (any other file
#: OpenSlide reads can be imported by naming it). Hamamatsu VMS is left out of folder scans: its
#: JPEG pieces would be imported as images of their own.
SLIDE_EXTENSIONS = (".svs", ".ndpi", ".mrxs", ".scn", ".svslide", ".bif", ".tif", ".tiff")
#: Content types of the legacy Cytomine image server, by OpenSlide vendor.
CONTENT_TYPES = {
    "aperio": "openslide/svs",
    "hamamatsu": "openslide/ndpi",
    "mirax": "openslide/mrxs",
    "leica": "openslide/scn",
    "sakura": "openslide/svslide",
    "ventana": "openslide/bif",
    "philips": "openslide/philips",
    "zeiss": "openslide/czi",
    "dicom": "openslide/dicom",
    "generic-tiff": "image/pyrtiff",
}
#: Longest side, in level pixels, of one read from the file.
READ_SIDE = 2048
#: Relative margin under which a level's downsample counts as the requested one.
LEVEL_TOLERANCE = 0.01


@dataclass(frozen=True)
class SlideMetadata:
    """What the server stores about a whole-slide file when it is imported."""

    width: int
    height: int
    levels: tuple[tuple[int, int], ...]
    physical_size_x: float | None  # µm per level-0 pixel
    physical_size_y: float | None
    magnification: float | None  # objective power
    content_type: str


def _openslide():
    import openslide  # imported on use: plain images never need it

    return openslide


def slide_vendor(path: str | Path) -> str | None:
    """OpenSlide's name for the file's format (``"aperio"``, ``"generic-tiff"``...), None when
    OpenSlide does not read it (a plain image)."""
    openslide = _openslide()
    try:
        return openslide.OpenSlide.detect_format(str(path))
    except (openslide.OpenSlideError, OSError):
        return None


def probe_slide(path: str | Path) -> SlideMetadata | None:
    """The metadata of a file OpenSlide reads, None for any other file."""
    vendor = slide_vendor(path)
    return None if vendor is None else SlideFile(path, vendor).metadata


def _positive(text: str | None) -> float | None:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


class SlideFile:
    """An open whole-slide file (thread-safe, as OpenSlide handles are). See the module docstring."""

    mode = "RGB"

    def __init__(self, path: str | Path, vendor: str | None = None) -> None:
        openslide = _openslide()
        try:
            self._osr = openslide.OpenSlide(str(path))
        except (openslide.OpenSlideError, OSError) as exc:
            logger.error("slide file %s cannot be read: %s", path, exc)
            raise NotFound(f"Slide file {Path(path).name!r} cannot be read: see the server's log") from None
        self.path = Path(path)
        props = self._osr.properties
        self.vendor = vendor or props.get("openslide.vendor") or "generic-tiff"
        self.levels: tuple[tuple[int, int], ...] = tuple((int(w), int(h)) for w, h in self._osr.level_dimensions)
        self.downsamples: tuple[float, ...] = tuple(float(d) for d in self._osr.level_downsamples)
        self.width, self.height = self.levels[0]
        color = props.get("openslide.background-color") or "ffffff"
        self.background = (
            tuple(int(color[i : i + 2], 16) for i in (0, 2, 4))
            if re.fullmatch(r"[0-9a-fA-F]{6}", color)
            else (255, 255, 255)
        )
        mpp_x, mpp_y = _positive(props.get("openslide.mpp-x")), _positive(props.get("openslide.mpp-y"))
        self.metadata = SlideMetadata(
            width=self.width,
            height=self.height,
            levels=self.levels,
            physical_size_x=mpp_x or mpp_y,
            physical_size_y=mpp_y or mpp_x,
            magnification=_positive(props.get("openslide.objective-power")),
            content_type=CONTENT_TYPES.get(self.vendor, f"openslide/{self.vendor}"),
        )

    def level_for(self, factor: float) -> int:
        """The coarsest level whose downsample is at most ``factor`` (level-0 pixels per output pixel)."""
        chosen = 0
        for level, downsample in enumerate(self.downsamples):
            if downsample <= factor * (1 + LEVEL_TOLERANCE) and downsample >= self.downsamples[chosen]:
                chosen = level
        return chosen

    def region(self, box: tuple[float, float, float, float], size: tuple[int, int]) -> Image.Image:
        """The level-0 ``box`` (left, top, right, bottom; fractions allowed) at ``size`` (width,
        height), read from one level, block by block when large. Outside the slide: its background."""
        left, top, right, bottom = box
        out_w, out_h = size
        if right <= left or bottom <= top or out_w < 1 or out_h < 1:
            raise BadRequest(f"Empty region {box} or output size {size}")
        level = self.level_for(((right - left) / out_w + (bottom - top) / out_h) / 2)
        scale = self.downsamples[level]
        x0, y0, x1, y1 = left / scale, top / scale, right / scale, bottom / scale
        per_x, per_y = (x1 - x0) / out_w, (y1 - y0) / out_h  # level pixels per output pixel
        step = max(1, int(READ_SIDE / (max(per_x, per_y, 1.0) + 2)))  # output pixels per block side
        if step >= out_w and step >= out_h:
            return self._resampled(level, (x0, y0, x1, y1), size)
        out = Image.new("RGB", size)
        for by in range(0, out_h, step):
            for bx in range(0, out_w, step):
                w, h = min(step, out_w - bx), min(step, out_h - by)
                part = (x0 + bx * per_x, y0 + by * per_y, x0 + (bx + w) * per_x, y0 + (by + h) * per_y)
                out.paste(self._resampled(level, part, (w, h)), (bx, by))
        return out

    def _resampled(self, level: int, part: tuple[float, float, float, float], size: tuple[int, int]) -> Image.Image:
        """Level pixels of ``part`` (level coordinates) resized to ``size``; unresampled when the
        part falls on whole pixels of that size."""
        x0, y0, x1, y1 = part
        whole = all(abs(v - round(v)) < 1e-6 for v in part)
        if whole and (round(x1 - x0), round(y1 - y0)) == size:
            return self._level_pixels(level, round(x0), round(y0), size[0], size[1])
        # A margin around the part: the filter's support (wider when shrinking) must see real pixels.
        margin = 1 + math.ceil(max((x1 - x0) / size[0], (y1 - y0) / size[1], 1.0))
        ix, iy = math.floor(x0) - margin, math.floor(y0) - margin
        patch = self._level_pixels(level, ix, iy, math.ceil(x1) + margin - ix, math.ceil(y1) + margin - iy)
        return patch.resize(
            size, Image.Resampling.BILINEAR, box=(x0 - ix, y0 - iy, x1 - ix, y1 - iy), reducing_gap=None
        )

    def _level_pixels(self, level: int, x: int, y: int, width: int, height: int) -> Image.Image:
        """RGB pixels of a rectangle of ``level`` (level coordinates; OpenSlide makes the outside
        of the slide transparent, painted here in the background colour)."""
        openslide = _openslide()
        scale = self.downsamples[level]
        try:
            rgba = self._osr.read_region((round(x * scale), round(y * scale)), level, (width, height))
        except openslide.OpenSlideError as exc:
            logger.error("slide file %s cannot be decoded at level %d: %s", self.path, level, exc)
            raise NotFound(f"Slide file {self.path.name!r} cannot be decoded: see the server's log") from None
        alpha = rgba.getchannel("A")
        if alpha.getextrema()[0] == 255:
            return rgba.convert("RGB")
        flat = Image.new("RGB", rgba.size, self.background)
        flat.paste(rgba.convert("RGB"), mask=alpha)
        return flat
