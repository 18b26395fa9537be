"""Pixels: crops, masks, windows and thumbnails cut from the stored image files.

What a real Cytomine does here is split between the core and its image server (PIMS for the
Spring core, IMS for the Grails one). The semantics reproduced, with their sources:

- **crop region** (PIMS ``get_annotation_region``): the annotation's bounding box, in image
  coordinates; ``increaseArea`` (PIMS ``context_factor``) grows it around its centre;
  ``square`` grows the short side; the region is then shifted (not cut) to stay inside the
  image, and cut only when larger than the image; it is discretised with floor(left/top) and
  ceil(width/height) (PIMS ``Region.discretize``). A single point is cropped with a 100 x 100
  pixel box around it (core ``getGeometryBoundaries``).
- **output size**: ``maxSize`` gives the longest side of the output, up- or down-scaling
  (PIMS ``length``); the Spring core defaults it to 256 when absent. Without ``maxSize``,
  ``zoom`` k divides the size by 2**k (PIMS ``level``); 0 is full resolution.
- **mask**: white annotation on black, single channel; **alphamask**: the crop with an alpha
  channel that is transparent outside the annotation (PNG).
- **window**: the rectangle ``x, y, w, h`` in image coordinates (top-left origin, as the
  client's ``ImageInstance.window`` documents), cut to the image unless ``withExterior`` (then
  black outside it); a window starting left of or above the image needs ``withExterior``.
- **thumb**: the whole image with its longest side at most ``maxSize`` (default 512).

Every renderer computes its output size first and checks it against the server's
:class:`~mtdp_core.server.config.PixelLimits` before building anything: no request makes the
server hold more than the stored image plus one output of at most ``max_pixels``.

Decoded images are kept in a small LRU cache (by bytes), because the crops of one image are
requested by several threads at once (``dump_crops``); decoding happens once per image.
"""

from __future__ import annotations

import io
import logging
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageColor, ImageDraw, ImageOps
from shapely import affinity
from shapely.geometry.base import BaseGeometry

from mtdp_core.server.config import PixelLimits
from mtdp_core.server.errors import BadRequest, NotFound
from mtdp_core.server.geometry import POINT_ENVELOPE, cytomine_to_image

logger = logging.getLogger(__name__)

#: Output formats by route extension; the first is the fall-back, like the core's checkFormat.
FORMATS = {
    "jpg": ("JPEG", "image/jpeg"),
    "png": ("PNG", "image/png"),
    "tif": ("TIFF", "image/tiff"),
    "tiff": ("TIFF", "image/tiff"),
    "webp": ("WEBP", "image/webp"),
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
_ORIENTATION = 0x0112  # the EXIF orientation tag
#: Tile side of the virtual pyramid that defines the valid zoom levels of a flat image.
TILE_SIZE = 256
#: Widest outline ``draw`` crops accept.
MAX_THICKNESS = 100


def image_info(path: Path) -> tuple[int, int, int, str]:
    """(width, height, samples per pixel, mime type) from the file header, without decoding.

    The size is the displayed one: EXIF orientations that rotate by 90 degrees swap it, as
    :func:`decode` applies them.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.format in ("JPEG", "TIFF", "WEBP", "PNG") and image.getexif().get(_ORIENTATION) in (5, 6, 7, 8):
                width, height = height, width
            bands = len(image.getbands())
            mime = Image.MIME.get(image.format or "", "application/octet-stream")
    except (OSError, Image.DecompressionBombError) as exc:
        raise BadRequest(f"Cannot read image {path}: {exc}") from None
    return width, height, (1 if bands == 1 else 3), mime


def max_zoom_level(width: int, height: int) -> int:
    """Deepest zoom level of an image: halve until the longest side fits one 256-pixel tile."""
    longest = max(width, height, 1)
    return max(0, math.ceil(math.log2(longest / TILE_SIZE))) if longest > TILE_SIZE else 0


class ImageCache:
    """Thread-safe LRU cache of decoded images (uint8 arrays, HxW or HxWx3), bounded in bytes.

    Concurrent requests for an image that is not cached yet wait for one decode instead of
    decoding it once each.
    """

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, float], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, float], threading.Lock] = {}
        self.hits = 0
        self.misses = 0

    def get(self, path: str | os.PathLike) -> np.ndarray:
        path = str(path)
        try:
            key = (path, os.stat(path).st_mtime)
        except OSError:
            # The name only: a server path is no business of the caller's (the operator's log has it).
            logger.error("image file %s is missing", path)
            raise NotFound(f"Image file {os.path.basename(path)!r} is missing from the server's disk") from None
        with self._lock:
            array = self._items.get(key)
            if array is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return array
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                array = self._items.get(key)
                if array is not None:
                    self.hits += 1
                    return array
            array = decode(path)
            with self._lock:
                self.misses += 1
                self._loading.pop(key, None)
                if array.nbytes <= self.max_bytes:
                    self._items[key] = array
                    self._bytes += array.nbytes
                    while self._bytes > self.max_bytes:
                        _, old = self._items.popitem(last=False)
                        self._bytes -= old.nbytes
            return array

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


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


@dataclass(frozen=True)
class Region:
    """A rectangle in image pixels (top-left origin), float until discretised."""

    left: float
    top: float
    width: float
    height: float

    def discretize(self, image_width: int, image_height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) integer pixels inside the image (PIMS discretize + clip)."""
        left = max(0, math.floor(self.left))
        top = max(0, math.floor(self.top))
        right = min(image_width, left + max(1, math.ceil(self.width - 1e-9)))
        bottom = min(image_height, top + max(1, math.ceil(self.height - 1e-9)))
        return left, top, max(right, left + 1), max(bottom, top + 1)


def annotation_region(
    geometry: BaseGeometry,
    image_width: int,
    image_height: int,
    increase_area: float | None = None,
    square: bool = False,
) -> Region:
    """The crop rectangle of a geometry given in Cytomine coordinates (see module docstring)."""
    minx, miny, maxx, maxy = geometry.bounds
    if geometry.geom_type == "Point":
        half = POINT_ENVELOPE / 2
        minx, miny, maxx, maxy = minx - half, miny - half, maxx + half, maxy + half
    left, top = minx, image_height - maxy
    width, height = maxx - minx, maxy - miny
    if increase_area is not None and increase_area != 1.0:
        if not (math.isfinite(increase_area) and increase_area > 0):
            raise BadRequest(
                f"Invalid increaseArea {increase_area}: use a positive factor (e.g. 1.5 for 50% more context)"
            )
        left -= width * (increase_area - 1) / 2.0
        top -= height * (increase_area - 1) / 2.0
        width *= increase_area
        height *= increase_area
    if square:
        if width < height:
            left -= (height - width) / 2
            width = height
        elif height < width:
            top -= (width - height) / 2
            height = width
    width = min(width, image_width)
    left = 0 if left < 0 else min(left, image_width - width)
    height = min(height, image_height)
    top = 0 if top < 0 else min(top, image_height - height)
    return Region(left, top, width, height)


def output_size(width: int, height: int, max_size: int | None, zoom: int | None, max_zoom: int) -> tuple[int, int]:
    """Output dimensions of a ``width`` x ``height`` pixel region (see module docstring)."""
    if max_size is not None:
        if max_size < 1:
            raise BadRequest(f"Invalid maxSize {max_size}: use a positive number of pixels")
        if width >= height:
            return max_size, max(1, round(height * max_size / width))
        return max(1, round(width * max_size / height)), max_size
    if zoom:
        if not 0 <= zoom <= max_zoom:
            raise BadRequest(f"Level tier {zoom} does not exist: this image has zoom levels 0 to {max_zoom}")
        factor = 2**zoom
        return max(1, round(width / factor)), max(1, round(height / factor))
    return width, height


def _resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    if image.size == size:
        return image
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0 if size[0] < image.size[0] else None)


def _geometry_mask(geometry_px: BaseGeometry, size: tuple[int, int]) -> Image.Image:
    """Rasterise a geometry given in output pixel coordinates (top-left origin) as an L mask."""
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    for part in getattr(geometry_px, "geoms", [geometry_px]):
        if part.geom_type == "Polygon":
            draw.polygon(list(part.exterior.coords), fill=255)
            for ring in part.interiors:
                draw.polygon(list(ring.coords), fill=0)
        elif part.geom_type in ("LineString", "LinearRing"):
            draw.line(list(part.coords), fill=255, width=1)
        elif part.geom_type == "Point":
            draw.point((part.x, part.y), fill=255)
        elif hasattr(part, "geoms"):
            mask = Image.composite(Image.new("L", size, 255), mask, _geometry_mask(part, size))
    return mask


def encode(image: Image.Image, fmt: str, jpeg_quality: int | None = None) -> tuple[bytes, str]:
    """Image bytes and mime type for a route extension (jpg, png, tif, tiff, webp)."""
    pil_format, mime = FORMATS.get(fmt.lower(), FORMATS["jpg"])
    if pil_format == "JPEG" and image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    options: dict[str, object] = {}
    if pil_format == "JPEG":
        options["quality"] = int(jpeg_quality) if jpeg_quality else 90
    elif pil_format == "PNG":
        options["compress_level"] = 1  # fast: crops are transient and served to a local client
    image.save(buffer, format=pil_format, **options)
    return buffer.getvalue(), mime


@dataclass(frozen=True)
class CropOptions:
    """What a crop request asks for (query parameters of ``.../crop.png`` and friends)."""

    kind: str = "crop"  # crop | mask | alphamask | draw
    max_size: int | None = 256
    zoom: int | None = None
    increase_area: float | None = None
    square: bool = False
    fmt: str = "png"
    jpeg_quality: int | None = None
    color: str = "#ff0000"
    thickness: int = 1

    def __post_init__(self) -> None:
        """400 for a value no crop can be made with (the region and output size are checked once known)."""
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise BadRequest(f"Invalid jpegQuality {self.jpeg_quality}: use 1 to 100")
        if not 1 <= self.thickness <= MAX_THICKNESS:
            raise BadRequest(f"Invalid thickness {self.thickness}: use 1 to {MAX_THICKNESS} pixels")
        try:
            ImageColor.getrgb(self.color)
        except ValueError:
            raise BadRequest(f"Invalid color {self.color[:40]!r}: use #RRGGBB (or 0xRRGGBB) or a colour name") from None


def render_crop(
    pixels: np.ndarray, geometry: BaseGeometry, options: CropOptions, limits: PixelLimits | None = None
) -> tuple[bytes, str]:
    """Crop (or mask) of ``geometry`` (Cytomine coordinates) from decoded ``pixels``."""
    image_height, image_width = pixels.shape[:2]
    region = annotation_region(geometry, image_width, image_height, options.increase_area, options.square)
    left, top, right, bottom = region.discretize(image_width, image_height)
    out_size = output_size(
        right - left, bottom - top, options.max_size, options.zoom, max_zoom_level(image_width, image_height)
    )
    (limits or PixelLimits()).check(out_size, (right - left, bottom - top), what=options.kind)
    fmt = options.fmt
    if options.kind == "alphamask":
        fmt = "png"  # alpha needs PNG, as the core's checkFormat(['png'])

    # The geometry in output pixels: Cytomine -> image coordinates, shift to the region, scale.
    scale_x = out_size[0] / (right - left)
    scale_y = out_size[1] / (bottom - top)
    geometry_px = affinity.affine_transform(
        cytomine_to_image(geometry, image_height), [scale_x, 0, 0, scale_y, -left * scale_x, -top * scale_y]
    )
    if options.kind == "mask":
        return encode(_geometry_mask(geometry_px, out_size), fmt, options.jpeg_quality)

    crop = Image.fromarray(np.ascontiguousarray(pixels[top:bottom, left:right]))
    crop = _resize(crop, out_size)
    if options.kind == "alphamask":
        crop = crop.convert("RGBA")
        crop.putalpha(_geometry_mask(geometry_px, out_size))
    elif options.kind == "draw":
        crop = crop.convert("RGB")
        draw = ImageDraw.Draw(crop)
        for part in getattr(geometry_px, "geoms", [geometry_px]):
            if part.geom_type == "Polygon":
                draw.line(list(part.exterior.coords), fill=options.color, width=max(1, options.thickness))
            elif part.geom_type == "LineString":
                draw.line(list(part.coords), fill=options.color, width=max(1, options.thickness))
            elif part.geom_type == "Point":
                x, y = part.x, part.y
                draw.line([(x - 10, y), (x + 10, y)], fill=options.color)
                draw.line([(x, y - 10), (x, y + 10)], fill=options.color)
    return encode(crop, fmt, options.jpeg_quality)


def _scaled(pixels: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int]) -> Image.Image:
    """The pixels ``box`` (left, top, right, bottom) of an image, resized to ``size``."""
    left, top, right, bottom = box
    return _resize(Image.fromarray(np.ascontiguousarray(pixels[top:bottom, left:right])), size)


def render_window(
    pixels: np.ndarray,
    x: int,
    y: int,
    w: int,
    h: int,
    fmt: str,
    *,
    with_exterior: bool = False,
    max_size: int | None = None,
    limits: PixelLimits | None = None,
) -> tuple[bytes, str]:
    """The rectangle ``x, y, w, h`` (top-left origin) of the image, its longest side ``max_size``
    when given. With ``with_exterior`` the part outside the image is black; the output is built
    at its final size (never the rectangle asked, which may be far larger)."""
    if w <= 0 or h <= 0:
        raise BadRequest(f"Invalid window {w} x {h}: width and height must be positive")
    if not with_exterior and (x < 0 or y < 0):
        raise BadRequest(
            f"Window {x},{y},{w},{h} starts outside the image: use x, y >= 0, or withExterior=true to get "
            "black pixels outside the image"
        )
    image_height, image_width = pixels.shape[:2]
    inside = (max(0, x), max(0, y), min(image_width, x + w), min(image_height, y + h))
    if not with_exterior:
        if inside[2] <= inside[0] or inside[3] <= inside[1]:
            raise BadRequest(f"Window {x},{y},{w},{h} lies outside the {image_width} x {image_height} image")
        x, y, w, h = inside[0], inside[1], inside[2] - inside[0], inside[3] - inside[1]
    size = output_size(w, h, max_size, None, 0) if max_size else (w, h)
    (limits or PixelLimits()).check(size, (w, h), what="window")
    if not with_exterior:
        return encode(_scaled(pixels, inside, size), fmt)
    window = Image.new("L" if pixels.ndim == 2 else "RGB", size, 0)
    if inside[2] > inside[0] and inside[3] > inside[1]:
        sx, sy = size[0] / w, size[1] / h
        left, top = round((inside[0] - x) * sx), round((inside[1] - y) * sy)
        right, bottom = round((inside[2] - x) * sx), round((inside[3] - y) * sy)
        if right > left and bottom > top:
            window.paste(_scaled(pixels, inside, (right - left, bottom - top)), (left, top))
    return encode(window, fmt)


def render_thumb(pixels: np.ndarray, max_size: int, fmt: str, limits: PixelLimits | None = None) -> tuple[bytes, str]:
    """The whole image, its longest side at most ``max_size`` (never enlarged)."""
    height, width = pixels.shape[:2]
    size = output_size(width, height, max_size, None, 0) if max(width, height) > max_size else (width, height)
    (limits or PixelLimits()).check(size, what="thumbnail")
    return encode(_scaled(pixels, (0, 0, width, height), size), fmt)
