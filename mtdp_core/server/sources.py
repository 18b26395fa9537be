"""Where served pixels come from: plain images decoded whole by Pillow, and whole-slide files
read level by level through OpenSlide (:mod:`mtdp_core.server.slides`), behind one interface.

A :class:`PixelSource` has a level-0 ``width``, ``height``, a ``mode`` (``"L"`` or ``"RGB"``)
and ``region(box, size)``: the level-0 box (left, top, right, bottom) resized to ``size``. The
renderers of :mod:`mtdp_core.server.imaging` (crops, windows, thumbnails, tiles) only use that,
so every route serves both kinds of image.

:class:`ImageCache` keeps sources between requests, because the crops of one image are asked by
several threads at once (``dump_crops``): a plain image is decoded once (the cache is bounded in
bytes), a slide is opened once (bounded in handles; a slide's memory is OpenSlide's tile cache).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageOps

from mtdp_core.server.errors import BadRequest, NotFound
from mtdp_core.server.slides import SLIDE_EXTENSIONS, SlideFile, probe_slide, slide_vendor

logger = logging.getLogger(__name__)

#: Plain image files; with the whole-slide ones, what an import finds in a folder.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
FILE_EXTENSIONS = tuple(dict.fromkeys(IMAGE_EXTENSIONS + SLIDE_EXTENSIONS))
_ORIENTATION = 0x0112  # the EXIF orientation tag


@dataclass(frozen=True)
class ImageFileInfo:
    """What the server stores about an image file: its displayed size, samples per pixel,
    content type and, for whole-slide files, resolution (µm per pixel) and objective power."""

    width: int
    height: int
    samples: int
    mime: str
    physical_size_x: float | None = None
    physical_size_y: float | None = None
    magnification: float | None = None


def image_info(path: Path) -> ImageFileInfo:
    """The file's :class:`ImageFileInfo`, from its header (a plain image is not decoded).

    A plain image's size is the displayed one: EXIF orientations that rotate by 90 degrees swap
    it, as :func:`decode` applies them.
    """
    slide = probe_slide(path)
    if slide is not None:
        return ImageFileInfo(
            slide.width,
            slide.height,
            3,
            slide.content_type,
            slide.physical_size_x,
            slide.physical_size_y,
            slide.magnification,
        )
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.format in ("JPEG", "TIFF", "WEBP", "PNG") and image.getexif().get(_ORIENTATION) in (5, 6, 7, 8):
                width, height = height, width
            bands = len(image.getbands())
            mime = Image.MIME.get(image.format or "", "application/octet-stream")
    except (OSError, Image.DecompressionBombError) as exc:
        raise BadRequest(
            f"Cannot read image {path}: {exc}. Use a plain image (JPEG, PNG, TIFF, BMP, WebP) or a whole-slide "
            "file OpenSlide reads (SVS, NDPI, MRXS, SCN, pyramidal TIFF...)"
        ) from None
    return ImageFileInfo(width, height, 1 if bands == 1 else 3, mime)


class PixelSource(Protocol):
    """An image the renderers can read (see the module docstring)."""

    width: int
    height: int
    mode: str

    def region(self, box: tuple[float, float, float, float], size: tuple[int, int]) -> Image.Image: ...


def resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Bilinear resize (antialiased when shrinking); the image itself at its own size."""
    if image.size == size:
        return image
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0 if size[0] < image.size[0] else None)


class FlatImage:
    """A plain image decoded whole: uint8 pixels, HxW (grey) or HxWx3."""

    def __init__(self, pixels: np.ndarray) -> None:
        self.pixels = pixels
        self.height, self.width = pixels.shape[:2]
        self.mode = "L" if pixels.ndim == 2 else "RGB"

    @property
    def nbytes(self) -> int:
        return self.pixels.nbytes

    def region(self, box: tuple[float, float, float, float], size: tuple[int, int]) -> Image.Image:
        left, top, right, bottom = box
        if all(float(v).is_integer() for v in box):  # crops, windows, tiles and thumbnails: whole pixels
            part = self.pixels[int(top) : int(bottom), int(left) : int(right)]
            return resize(Image.fromarray(np.ascontiguousarray(part)), size)
        x0, y0 = int(np.floor(left)), int(np.floor(top))
        part = self.pixels[y0 : int(np.ceil(bottom)), x0 : int(np.ceil(right))]
        return Image.fromarray(np.ascontiguousarray(part)).resize(
            size, Image.Resampling.BILINEAR, box=(left - x0, top - y0, right - x0, bottom - y0)
        )


def decode(path: str | os.PathLike) -> np.ndarray:
    """The image as uint8 pixels: HxW for grey images, HxWx3 otherwise (EXIF orientation applied)."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode not in ("L", "RGB"):
                image = image.convert("L" if image.mode in ("1", "I", "I;16", "F") else "RGB")
            array = np.asarray(image)
    except (OSError, Image.DecompressionBombError) as exc:
        logger.error("image file %s cannot be decoded: %s", path, exc)
        raise NotFound(f"Image file {os.path.basename(path)!r} cannot be decoded: see the server's log") from None
    array.setflags(write=False)
    return array


def open_source(path: str | os.PathLike) -> FlatImage | SlideFile:
    """A slide when OpenSlide reads the file, else the decoded plain image."""
    vendor = slide_vendor(path)
    return SlideFile(path, vendor) if vendor is not None else FlatImage(decode(path))


class ImageCache:
    """Thread-safe LRU cache of open sources: decoded plain images (at most ``max_bytes`` of
    pixels) and open slides (at most ``max_slides`` handles).

    Concurrent requests for an image that is not cached yet wait for one decode instead of
    decoding it once each.
    """

    def __init__(self, max_bytes: int = 256 * 1024 * 1024, max_slides: int = 32) -> None:
        self.max_bytes = max_bytes
        self.max_slides = max_slides
        self._items: OrderedDict[tuple[str, float], FlatImage | SlideFile] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, float], threading.Lock] = {}
        self.hits = 0
        self.misses = 0

    def get(self, path: str | os.PathLike) -> FlatImage | SlideFile:
        path = str(path)
        try:
            key = (path, os.stat(path).st_mtime)
        except OSError:
            # The name only: a server path is no business of the caller's (the operator's log has it).
            logger.error("image file %s is missing", path)
            raise NotFound(f"Image file {os.path.basename(path)!r} is missing from the server's disk") from None
        with self._lock:
            source = self._items.get(key)
            if source is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return source
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                source = self._items.get(key)
                if source is not None:
                    self.hits += 1
                    return source
            source = open_source(path)
            with self._lock:
                self.misses += 1
                self._loading.pop(key, None)
                self._keep(key, source)
            return source

    def _keep(self, key: tuple[str, float], source: FlatImage | SlideFile) -> None:
        """Cache ``source`` and evict the oldest entries beyond the budgets. An evicted slide is
        not closed: a request may still read it; OpenSlide closes it with its last reference."""
        cost = source.nbytes if isinstance(source, FlatImage) else 0
        if cost > self.max_bytes:
            return
        self._items[key] = source
        self._bytes += cost

        def slides() -> int:
            return sum(isinstance(s, SlideFile) for s in self._items.values())

        while self._bytes > self.max_bytes or slides() > self.max_slides:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.nbytes if isinstance(old, FlatImage) else 0

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
