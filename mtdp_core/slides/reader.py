"""Opening slides and reading their pixels at any resolution, in bounded memory.

One interface, ``Slide``, for every file: whole-slide images through OpenSlide (Aperio SVS,
Hamamatsu NDPI/VMS, MIRAX, Leica SCN, Philips/Ventana/generic tiled TIFF, DICOM, ...) and
plain images (PNG, JPEG, untiled TIFF, ...) through Pillow, as one-level slides. What a
caller gets:

- geometry: level-0 ``dimensions``, ``level_dimensions`` and ``level_downsamples``;
- resolution: ``mpp`` (µm per level-0 pixel) and ``objective_power`` when the file has them,
  or ``mpp`` given by the user when it does not (``open_slide(path, mpp=0.25)``);
- pixels: ``read_region(box, size)``: the level-0 box ``(x, y, width, height)`` (floats,
  origin top-left) as an RGB image of ``size`` pixels, read from the *best level* (the
  coarsest one that is still at least as fine as the output, as OpenSlide's
  ``get_best_level_for_downsample`` and the PIMS image server choose) and resized there.
  Large outputs are assembled block by block, so memory stays bounded whatever the slide
  (a thumbnail of a 100,000 px slide without a pyramid never holds level 0). Outside the
  slide and in its empty tiles, pixels are the slide's background colour (white).

``Resolution`` says what a caller wants (``"0.5"`` µm/px, ``"20x"``) and
``Slide.downsample_for`` turns it into level-0 pixels per output pixel.

A ``Slide`` is safe to share between threads (OpenSlide handles are). Worker processes open
their own handle: ``SlideSource`` is what travels to them, and ``cached_slide(source)`` opens
each slide once per process.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from PIL import Image, ImageOps

from mtdp_core.errors import ConfigurationError, MissingResolutionError, RegionOutsideSlideError, SlideReadError

logger = logging.getLogger(__name__)

#: File types OpenSlide reads (openslide.org/formats), then the plain images Pillow reads.
OPENSLIDE_EXTENSIONS = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
    ".czi",
    ".dcm",
)
PLAIN_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
SLIDE_EXTENSIONS = tuple(dict.fromkeys(OPENSLIDE_EXTENSIONS + PLAIN_EXTENSIONS))
FORMATS_HELP = (
    "OpenSlide formats (Aperio .svs, Hamamatsu .ndpi/.vms, MIRAX .mrxs, Leica .scn, Philips/Ventana/generic "
    "tiled .tiff, Sakura .svslide, Zeiss .czi, DICOM) and plain images (.png, .jpg, .tif, .bmp, .webp)"
)
#: A plain image is decoded whole (PNG/JPEG have no random access): above this many pixels,
#: ask for a pyramidal file instead.
MAX_PLAIN_PIXELS = 300_000_000
#: Pixels read from a level at once; larger outputs are assembled from blocks of this size.
READ_BLOCK_PIXELS = 2048 * 2048
#: Longest output side ``read_region`` makes unless told otherwise.
DEFAULT_MAX_OUTPUT_SIDE = 20_000
#: Level downsamples within this relative margin of the one asked for count as equal
#: (OpenSlide's 4.000138 is level 2 of a 4x request, not level 1).
LEVEL_TOLERANCE = 0.01
#: The convention that links magnification and resolution: 10 µm/px at 1x (20x = 0.5 µm/px).
MPP_AT_1X = 10.0

Box = tuple[float, float, float, float]


# --------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class Resolution:
    """A target resolution: ``mpp`` (µm per pixel) or ``magnification`` (objective power).

    ``Resolution.parse("0.5")``, ``"0.5mpp"``, ``"0.5um"`` -> 0.5 µm/px; ``"20x"`` -> 20x.
    """

    mpp: float | None = None
    magnification: float | None = None

    def __post_init__(self) -> None:
        if (self.mpp is None) == (self.magnification is None):
            raise ConfigurationError("A resolution is either mpp (µm per pixel) or magnification, exactly one.")
        value = self.mpp if self.mpp is not None else self.magnification
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ConfigurationError(f"Invalid resolution {value!r}: use a positive number (e.g. 0.5 µm/px or 20x).")

    @classmethod
    def parse(cls, value: Resolution | str | float) -> Resolution:
        if isinstance(value, Resolution):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return cls(mpp=float(value))
        text = str(value).strip().lower().replace("µ", "u")
        match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(x|mpp|um|um/px|)", text)
        if not match:
            raise ConfigurationError(
                f"Invalid resolution {value!r}: use micrometres per pixel (e.g. 0.5 or 0.5mpp) or a "
                "magnification (e.g. 20x)."
            )
        number = float(match.group(1))
        return cls(magnification=number) if match.group(2) == "x" else cls(mpp=number)

    def __str__(self) -> str:
        return f"{self.mpp:g} µm/px" if self.mpp is not None else f"{self.magnification:g}x"

    def to_dict(self) -> dict:
        return {"mpp": self.mpp} if self.mpp is not None else {"magnification": self.magnification}


# --------------------------------------------------------------------------- sources and slides


@dataclass(frozen=True)
class SlideSource:
    """What identifies an open slide and lets another process open it again.

    Attributes:
        path: the file.
        mpp: µm per level-0 pixel given by the user (overrides the file's), or None.
        backend: ``"openslide"`` or ``"pillow"``; None picks by content.
    """

    path: str
    mpp: float | None = None
    backend: str | None = None

    def key(self) -> str:
        """Path, size and modification time (and the user's mpp): changes when the file does."""
        st = os.stat(self.path)
        return f"{Path(self.path).resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{self.mpp}"


class Slide:
    """A slide (or a plain image as a one-level slide). Use ``open_slide`` to get one.

    Attributes:
        source: how it was opened (path, user mpp, backend).
        vendor: OpenSlide's vendor (``"aperio"``, ``"generic-tiff"``, ...) or the image format.
        level_dimensions: (width, height) of each level, level 0 first.
        level_downsamples: level-0 pixels per pixel of each level.
        properties: the file's metadata (OpenSlide properties, or Pillow's info).
        objective_power: the scanner's objective magnification, or None.
        background: RGB colour of empty tiles and of the outside of the slide.
    """

    backend: str = ""

    def __init__(self, source: SlideSource) -> None:
        self.source = source
        self.vendor = ""
        self.level_dimensions: tuple[tuple[int, int], ...] = ()
        self.level_downsamples: tuple[float, ...] = ()
        self.properties: Mapping[str, str] = {}
        self.objective_power: float | None = None
        self.background: tuple[int, int, int] = (255, 255, 255)
        self._file_mpp: tuple[float, float] | None = None

    # ----------------------------------------------------------------- metadata

    @property
    def path(self) -> Path:
        return Path(self.source.path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height)."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def mpp_xy(self) -> tuple[float, float] | None:
        """µm per level-0 pixel along x and y: the user's value, else the file's, else None."""
        if self.source.mpp is not None:
            return (float(self.source.mpp), float(self.source.mpp))
        return self._file_mpp

    @property
    def mpp(self) -> float | None:
        """µm per level-0 pixel (the mean of x and y), or None when unknown."""
        xy = self.mpp_xy
        return None if xy is None else (xy[0] + xy[1]) / 2

    @property
    def magnification(self) -> float | None:
        """Objective power of level 0: from the file, else derived from mpp (10 µm/px at 1x), else None."""
        if self.objective_power is not None:
            return self.objective_power
        return None if self.mpp is None else MPP_AT_1X / self.mpp

    def info(self) -> dict[str, Any]:
        """What ``mtdp slides info`` prints: geometry, resolution and where it came from."""
        mpp_from = "user" if self.source.mpp is not None else "file" if self._file_mpp else None
        return {
            "path": str(self.path),
            "backend": self.backend,
            "vendor": self.vendor,
            "width": self.dimensions[0],
            "height": self.dimensions[1],
            "levels": [
                {"level": i, "width": w, "height": h, "downsample": round(d, 4)}
                for i, ((w, h), d) in enumerate(zip(self.level_dimensions, self.level_downsamples))
            ],
            "mpp": None if self.mpp is None else round(self.mpp, 6),
            "mpp_xy": None if self.mpp_xy is None else [round(v, 6) for v in self.mpp_xy],
            "mpp_source": mpp_from,
            "objective_power": self.objective_power,
            "magnification": None if self.magnification is None else round(self.magnification, 3),
        }

    def __repr__(self) -> str:
        w, h = self.dimensions
        mpp = f"{self.mpp:.4g} µm/px" if self.mpp else "no resolution"
        return f"<Slide {self.name}: {w}x{h}, {self.level_count} levels, {mpp}, {self.vendor}>"

    # ----------------------------------------------------------------- resolution

    def downsample_for(self, resolution: Resolution | str | float | None) -> float:
        """Level-0 pixels per pixel at ``resolution`` (None: level 0, 1.0).

        Raises MissingResolutionError when the slide's own resolution is needed and unknown.
        """
        if resolution is None:
            return 1.0
        res = Resolution.parse(resolution)
        if res.mpp is not None:
            if self.mpp is None:
                raise MissingResolutionError(
                    f"Slide {self.name} has no resolution metadata (µm per pixel), needed to read it at {res}: give "
                    "the scan's resolution (--slide-mpp, e.g. 0.25 for a 40x scan, 0.5 for 20x), or read it at a "
                    "magnification (e.g. 20x) if the file records its objective power."
                )
            return res.mpp / self.mpp
        if self.objective_power is not None:
            return self.objective_power / res.magnification
        if self.mpp is not None:
            logger.warning(
                "slide %s records no objective power: %s taken as %.4g µm/px (%.0f µm/px at 1x)",
                self.name,
                res,
                MPP_AT_1X / res.magnification,
                MPP_AT_1X,
            )
            return (MPP_AT_1X / res.magnification) / self.mpp
        raise MissingResolutionError(
            f"Slide {self.name} records neither its objective power nor its resolution, needed to read it at {res}: "
            "give the scan's resolution (--slide-mpp, e.g. 0.25 for a 40x scan)."
        )

    def best_level(self, downsample: float) -> int:
        """The coarsest level whose downsample is at most ``downsample`` (within 1%)."""
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + LEVEL_TOLERANCE):
                best = level if ds >= self.level_downsamples[best] else best
        return best

    # ----------------------------------------------------------------- pixels

    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> Image.Image:
        """RGB pixels of ``level`` at level coordinates; the box lies inside the level."""
        raise NotImplementedError

    def read_region(
        self,
        box: Box,
        size: tuple[int, int],
        *,
        max_output_side: int = DEFAULT_MAX_OUTPUT_SIDE,
    ) -> Image.Image:
        """The level-0 ``box`` ``(x, y, width, height)`` as an RGB image of ``size`` ``(w, h)``.

        Reads the best level for the output's scale, then resizes (bilinear, antialiased when
        shrinking). Parts of the box outside the slide come out in the background colour.
        Memory is bounded by ``READ_BLOCK_PIXELS`` per block plus the output.

        Raises:
            RegionOutsideSlideError: the box does not overlap the slide.
            ConfigurationError: an empty box, or an output longer than ``max_output_side``.
        """
        x, y, w, h = (float(v) for v in box)
        ow, oh = (int(v) for v in size)
        if not (w > 0 and h > 0 and ow > 0 and oh > 0) or not all(math.isfinite(v) for v in (x, y, w, h)):
            raise ConfigurationError(f"Invalid region {box!r} -> {size!r}: width, height and output size must be > 0.")
        if max(ow, oh) > max_output_side:
            raise ConfigurationError(
                f"Output of {ow}x{oh} px asked from {self.name}: over the {max_output_side} px limit; read at a "
                "lower resolution or in smaller regions."
            )
        W, H = self.dimensions
        if x >= W or y >= H or x + w <= 0 or y + h <= 0:
            raise RegionOutsideSlideError(
                f"Region x={x:g}, y={y:g}, {w:g}x{h:g} is outside slide {self.name} ({W}x{H} px): give level-0 "
                "pixel coordinates with the origin at the top-left corner."
            )
        scale = min(w / ow, h / oh)  # level-0 pixels per output pixel (the finer axis decides the level)
        level = self.best_level(scale)
        lds = self.level_downsamples[level]
        # Output pixels per block side such that the level pixels read stay within the budget.
        block = max(64, int(math.sqrt(READ_BLOCK_PIXELS) * lds / max(w / ow, h / oh)))
        if ow <= block and oh <= block:
            return self._read_resized(level, (x, y, w, h), (ow, oh))
        out = Image.new("RGB", (ow, oh), self.background)
        sx, sy = w / ow, h / oh
        for by in range(0, oh, block):
            for bx in range(0, ow, block):
                bw, bh = min(block, ow - bx), min(block, oh - by)
                sub = (x + bx * sx, y + by * sy, bw * sx, bh * sy)
                if sub[0] >= W or sub[1] >= H or sub[0] + sub[2] <= 0 or sub[1] + sub[3] <= 0:
                    continue  # all background
                out.paste(self._read_resized(level, sub, (bw, bh)), (bx, by))
        return out

    def _read_resized(self, level: int, box: Box, size: tuple[int, int]) -> Image.Image:
        """One block: the level pixels around ``box`` (clipped, background outside), resized."""
        x, y, w, h = box
        ow, oh = size
        lds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        lx0, ly0, lx1, ly1 = x / lds, y / lds, (x + w) / lds, (y + h) / lds
        exact = (
            abs(lx0 - round(lx0)) < 1e-6
            and abs(ly0 - round(ly0)) < 1e-6
            and abs((lx1 - lx0) - ow) < 1e-6
            and abs((ly1 - ly0) - oh) < 1e-6
        )
        if exact:  # the level has the output's scale and the box falls on its pixels: no resampling
            ix0, iy0 = round(lx0), round(ly0)
            return self._read_padded(level, ix0, iy0, ow, oh, lw, lh)
        # Margin for the resampling filter (its support grows with the shrink factor).
        pad = math.ceil(max((lx1 - lx0) / ow, (ly1 - ly0) / oh, 1.0)) + 1
        ix0, iy0 = math.floor(lx0) - pad, math.floor(ly0) - pad
        ix1, iy1 = math.ceil(lx1) + pad, math.ceil(ly1) + pad
        patch = self._read_padded(level, ix0, iy0, ix1 - ix0, iy1 - iy0, lw, lh)
        return patch.resize(
            (ow, oh), Image.Resampling.BILINEAR, box=(lx0 - ix0, ly0 - iy0, lx1 - ix0, ly1 - iy0), reducing_gap=None
        )

    def _read_padded(self, level: int, x: int, y: int, w: int, h: int, lw: int, lh: int) -> Image.Image:
        cx0, cy0, cx1, cy1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
        if cx0 == x and cy0 == y and cx1 == x + w and cy1 == y + h:
            return self._read_level(level, x, y, w, h)
        canvas = Image.new("RGB", (w, h), self.background)
        if cx1 > cx0 and cy1 > cy0:
            canvas.paste(self._read_level(level, cx0, cy0, cx1 - cx0, cy1 - cy0), (cx0 - x, cy0 - y))
        return canvas

    def read(
        self, x: float, y: float, width: float, height: float, *, resolution: Resolution | str | float | None = None
    ) -> Image.Image:
        """The level-0 box at ``resolution`` (None: level 0): output size = box size / downsample."""
        ds = self.downsample_for(resolution)
        return self.read_region((x, y, width, height), (max(1, round(width / ds)), max(1, round(height / ds))))

    def thumbnail(self, max_side: int = 1024) -> Image.Image:
        """The whole slide with its longest side ``max_side`` (aspect ratio kept; never larger than level 0)."""
        W, H = self.dimensions
        scale = max(max(W, H) / max_side, 1.0)
        size = (max(1, round(W / scale)), max(1, round(H / scale)))
        return self.read_region((0, 0, W, H), size, max_output_side=max(size))

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OpenSlideSlide(Slide):
    """A slide read through OpenSlide (openslide-python + the openslide-bin library wheel)."""

    backend = "openslide"

    def __init__(self, source: SlideSource) -> None:
        super().__init__(source)
        openslide = _import_openslide()
        try:
            self._osr = openslide.OpenSlide(source.path)
        except (openslide.OpenSlideError, OSError) as exc:
            raise SlideReadError(_unreadable(source.path, exc)) from None
        props = dict(self._osr.properties)
        self.properties = props
        self.vendor = props.get("openslide.vendor", "") or (self._osr.detect_format(source.path) or "")
        self.level_dimensions = tuple(tuple(int(v) for v in d) for d in self._osr.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._osr.level_downsamples)
        mx, my = _positive(props.get("openslide.mpp-x")), _positive(props.get("openslide.mpp-y"))
        if mx or my:
            self._file_mpp = (mx or my, my or mx)
        self.objective_power = _positive(props.get("openslide.objective-power"))
        color = props.get("openslide.background-color")
        if color and re.fullmatch(r"[0-9a-fA-F]{6}", color):
            self.background = tuple(int(color[i : i + 2], 16) for i in (0, 2, 4))  # type: ignore[assignment]

    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> Image.Image:
        openslide = _import_openslide()
        lds = self.level_downsamples[level]
        try:
            # OpenSlide takes the location in level-0 coordinates and the size in level pixels.
            rgba = self._osr.read_region((round(x * lds), round(y * lds)), level, (width, height))
        except openslide.OpenSlideError as exc:
            raise SlideReadError(
                f"Cannot decode region x={x}, y={y}, {width}x{height} of level {level} of {self.source.path} ({exc}): "
                "the file is damaged; re-export or re-scan it."
            ) from None
        return _flatten(rgba, self.background)

    @property
    def associated_images(self) -> Mapping[str, Image.Image]:
        """Label, macro and thumbnail pictures stored in the file (lazily decoded)."""
        return self._osr.associated_images

    def close(self) -> None:
        self._osr.close()


class PillowSlide(Slide):
    """A plain image (PNG, JPEG, untiled TIFF, ...) as a one-level slide, decoded once, kept in memory."""

    backend = "pillow"

    def __init__(self, source: SlideSource) -> None:
        super().__init__(source)
        try:
            with Image.open(source.path) as probe:
                fmt = probe.format or ""
                size = probe.size
                info = dict(probe.info)
                orientation = probe.getexif().get(0x0112)
                tags = dict(getattr(probe, "tag_v2", {}) or {})
        except (OSError, Image.DecompressionBombError, ValueError) as exc:
            raise SlideReadError(_unreadable(source.path, exc)) from None
        if orientation in (5, 6, 7, 8):
            size = (size[1], size[0])
        if size[0] * size[1] > MAX_PLAIN_PIXELS:
            raise SlideReadError(
                f"Image {source.path} is a plain {fmt} image of {size[0]}x{size[1]} px, too large to decode whole: "
                "convert it to a pyramidal tiled TIFF (e.g. `vips tiffsave in out.tif --tile --pyramid`)."
            )
        self.vendor = fmt.lower()
        self.level_dimensions = (size,)
        self.level_downsamples = (1.0,)
        self.properties = {str(k): str(v) for k, v in info.items() if isinstance(v, (str, int, float, tuple))}
        self._file_mpp = _plain_mpp(info, tags)
        self._image: Image.Image | None = None
        self._lock = threading.Lock()

    def _pixels(self) -> Image.Image:
        with self._lock:
            if self._image is None:
                try:
                    with Image.open(self.source.path) as image:
                        image.load()
                        image = ImageOps.exif_transpose(image)
                        self._image = _flatten(image, self.background)
                except (OSError, Image.DecompressionBombError, ValueError) as exc:
                    raise SlideReadError(_unreadable(self.source.path, exc)) from None
            return self._image

    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> Image.Image:
        return self._pixels().crop((x, y, x + width, y + height))

    def close(self) -> None:
        self._image = None


# --------------------------------------------------------------------------- opening

BACKENDS: dict[str, type[Slide]] = {"openslide": OpenSlideSlide, "pillow": PillowSlide}


def register_backend(name: str):
    """Class decorator: another way to open slides, named by ``SlideSource.backend`` (e.g.
    ``mtdp_core.cytomine.slides``: images of a Cytomine server read through its image server).
    Worker processes forked after the registration open such slides too."""

    def register(cls: type[Slide]) -> type[Slide]:
        BACKENDS[name] = cls
        return cls

    return register


def open_slide(path: str | os.PathLike | SlideSource, *, mpp: float | None = None, backend: str | None = None) -> Slide:
    """Open a slide file: OpenSlide when it reads the file, else Pillow (plain images).

    Args:
        path: the file (or a SlideSource).
        mpp: µm per level-0 pixel, overriding the file's (for files without it).
        backend: force ``"openslide"`` or ``"pillow"``.

    Raises:
        SlideReadError: the file does not exist or no backend reads it (the message lists the formats).
    """
    if isinstance(path, SlideSource):
        source = path
    else:
        if mpp is not None and not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and mpp > 0):
            raise ConfigurationError(f"Invalid slide resolution {mpp!r} µm/px: use a positive number (e.g. 0.25).")
        source = SlideSource(os.fspath(path), None if mpp is None else float(mpp), backend)
    if source.backend is not None and source.backend not in BACKENDS:
        raise ConfigurationError(f"Unknown slide backend {source.backend!r}: use one of {', '.join(BACKENDS)}.")
    file = Path(source.path)
    if not file.is_file():
        raise SlideReadError(f"Slide file {file} does not exist: give the path of a slide ({FORMATS_HELP}).")
    if source.backend is not None:
        return BACKENDS[source.backend](source)
    if _openslide_reads(source.path):
        return OpenSlideSlide(source)
    return PillowSlide(source)


def _openslide_reads(path: str) -> bool:
    try:
        openslide = _import_openslide()
    except SlideReadError:
        return False
    try:
        return openslide.OpenSlide.detect_format(path) is not None
    except (openslide.OpenSlideError, OSError):
        return False


_OPENSLIDE: Any = None


def _import_openslide() -> Any:
    global _OPENSLIDE
    if _OPENSLIDE is None:
        try:
            import openslide
        except ImportError as exc:  # openslide-python without its library, or not installed
            raise SlideReadError(
                f"OpenSlide is not available ({exc}): install it with `pip install openslide-python openslide-bin`."
            ) from None
        _OPENSLIDE = openslide
    return _OPENSLIDE


# Slides opened in this process, by source, for worker processes that read many tiles of
# few slides. A handle opened before a fork is never reused in the child (the pid is part of
# the key): each process opens its own.
_PROCESS_SLIDES: OrderedDict[tuple[int, SlideSource], Slide] = OrderedDict()
_PROCESS_SLIDES_MAX = 4
_PROCESS_LOCK = threading.Lock()


def cached_slide(source: SlideSource) -> Slide:
    """The slide of ``source``, opened once per process (the last few are kept open)."""
    key = (os.getpid(), source)
    with _PROCESS_LOCK:
        slide = _PROCESS_SLIDES.get(key)
        if slide is not None:
            _PROCESS_SLIDES.move_to_end(key)
            return slide
    slide = open_slide(source)
    with _PROCESS_LOCK:
        _PROCESS_SLIDES[key] = slide
        while len(_PROCESS_SLIDES) > _PROCESS_SLIDES_MAX:
            (pid, _), old = _PROCESS_SLIDES.popitem(last=False)
            if pid == os.getpid():
                old.close()
    return slide


# --------------------------------------------------------------------------- helpers


def _flatten(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """RGB from any mode; transparent pixels (OpenSlide's empty tiles) become the background."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        alpha = rgba.getchannel("A")
        if alpha.getextrema()[0] == 255:
            return rgba.convert("RGB")
        out = Image.new("RGB", rgba.size, background)
        out.paste(rgba.convert("RGB"), mask=alpha)
        return out
    return image.convert("RGB")


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _plain_mpp(info: dict, tags: dict) -> tuple[float, float] | None:
    """µm/px of a plain image from its TIFF resolution tags or DPI, when plausibly a scan's.

    A TIFF resolution in pixels per centimetre is taken as is; DPI (TIFF inches, PNG, JPEG)
    only from 1000 dpi (25.4 µm/px): lower values are the 72/96/300 dpi defaults writers put.
    """
    unit = tags.get(296)
    xres, yres = tags.get(282), tags.get(283)
    if unit == 3 and xres and yres:  # pixels per centimetre
        x, y = _positive(float(xres)), _positive(float(yres))
        if x and y:
            return (1e4 / x, 1e4 / y)
    dpi = info.get("dpi")
    if isinstance(dpi, tuple) and len(dpi) == 2:
        x, y = _positive(dpi[0]), _positive(dpi[1])
        if x and y and min(x, y) >= 1000:
            return (25400 / x, 25400 / y)
    return None


def _unreadable(path: str, exc: BaseException) -> str:
    detail = str(exc).strip() or type(exc).__name__
    return f"Cannot open slide {path} ({detail}): not a format mtdp reads. Use {FORMATS_HELP}."
