"""Pixels: crops, masks, windows, thumbnails and tiles rendered from the stored images.

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
  ``zoom`` k divides the size by 2**k (PIMS ``level``); 0 is full resolution. A crop asked with
  ``safe=true`` (the core's ``X-Image-Size-Safety: SAFE_RESIZE``) is shrunk to fit the limits.
- **mask**: white annotation on black, single channel; **alphamask**: the crop with an alpha
  channel that is transparent outside the annotation (PNG).
- **window**: the rectangle ``x, y, w, h`` in image coordinates (top-left origin, as the
  client's ``ImageInstance.window`` documents), cut to the image unless ``withExterior`` (then
  black outside it); a window starting left of or above the image needs ``withExterior``.
- **thumb**: the whole image with its longest side at most ``maxSize`` (default 512).
- **tile** (PIMS ``normalized-tile``): tile ``tx, ty`` (256 pixels, smaller on the right and
  bottom edges) of zoom ``z`` of the normalized pyramid, each tier half the previous one
  (rounded up), zoom 0 the smallest (fits one tile), the largest zoom the full resolution.

Every renderer computes its output size first and checks it against the server's
:class:`~mtdp_core.server.config.PixelLimits` (a side over 10,000 pixels, as PIMS, or more than
``max_pixels``) before building anything: no request makes the server hold more than one output.
Pixels come from a :class:`~mtdp_core.server.sources.PixelSource`: a decoded plain image or a
whole-slide file, read from the one pyramid level each output needs (so a crop of a 100,000
pixel slide reads a few tiles, never the slide).
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass

from PIL import Image, ImageColor, ImageDraw
from shapely import affinity
from shapely.geometry.base import BaseGeometry

from mtdp_core.server.config import PixelLimits
from mtdp_core.server.errors import BadRequest
from mtdp_core.server.geometry import POINT_ENVELOPE, cytomine_to_image
from mtdp_core.server.sources import PixelSource

logger = logging.getLogger(__name__)

#: Output formats by route extension; the first is the fall-back, like the core's checkFormat.
FORMATS = {
    "jpg": ("JPEG", "image/jpeg"),
    "png": ("PNG", "image/png"),
    "tif": ("TIFF", "image/tiff"),
    "tiff": ("TIFF", "image/tiff"),
    "webp": ("WEBP", "image/webp"),
}
#: Tile side of the normalized pyramid, which also defines the valid zoom levels of an image.
TILE_SIZE = 256
#: Widest outline ``draw`` crops accept.
MAX_THICKNESS = 100


def max_zoom_level(width: int, height: int) -> int:
    """Deepest zoom level of an image: halve until the longest side fits one 256-pixel tile."""
    longest = max(width, height, 1)
    return max(0, math.ceil(math.log2(longest / TILE_SIZE))) if longest > TILE_SIZE else 0


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
    safe: bool = False

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
    source: PixelSource, geometry: BaseGeometry, options: CropOptions, limits: PixelLimits | None = None
) -> tuple[bytes, str]:
    """Crop (or mask) of ``geometry`` (Cytomine coordinates) from ``source``."""
    limits = limits or PixelLimits()
    image_width, image_height = source.width, source.height
    region = annotation_region(geometry, image_width, image_height, options.increase_area, options.square)
    left, top, right, bottom = region.discretize(image_width, image_height)
    out_size = output_size(
        right - left, bottom - top, options.max_size, options.zoom, max_zoom_level(image_width, image_height)
    )
    out_size = limits.fit(out_size) if options.safe else out_size
    limits.check(out_size, (right - left, bottom - top), what=options.kind)
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

    crop = source.region((left, top, right, bottom), out_size)
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


def render_window(
    source: PixelSource,
    x: int,
    y: int,
    w: int,
    h: int,
    fmt: str,
    *,
    with_exterior: bool = False,
    max_size: int | None = None,
    zoom: int | None = None,
    limits: PixelLimits | None = None,
) -> tuple[bytes, str]:
    """The rectangle ``x, y, w, h`` (top-left origin) of the image, its longest side ``max_size``,
    else reduced ``2**zoom`` times. With ``with_exterior`` the part outside the image is black; the
    output is built at its final size (never the rectangle asked, which may be far larger)."""
    if w <= 0 or h <= 0:
        raise BadRequest(f"Invalid window {w} x {h}: width and height must be positive")
    if not with_exterior and (x < 0 or y < 0):
        raise BadRequest(
            f"Window {x},{y},{w},{h} starts outside the image: use x, y >= 0, or withExterior=true to get "
            "black pixels outside the image"
        )
    inside = (max(0, x), max(0, y), min(source.width, x + w), min(source.height, y + h))
    if not with_exterior:
        if inside[2] <= inside[0] or inside[3] <= inside[1]:
            raise BadRequest(f"Window {x},{y},{w},{h} lies outside the {source.width} x {source.height} image")
        x, y, w, h = inside[0], inside[1], inside[2] - inside[0], inside[3] - inside[1]
    size = output_size(w, h, max_size, zoom, max_zoom_level(source.width, source.height))
    (limits or PixelLimits()).check(size, (w, h), what="window")
    if not with_exterior:
        return encode(source.region(inside, size), fmt)
    window = Image.new(source.mode, size, 0)
    sx, sy = size[0] / w, size[1] / h
    left, top = round((inside[0] - x) * sx), round((inside[1] - y) * sy)
    right, bottom = round((inside[2] - x) * sx), round((inside[3] - y) * sy)
    if right > left and bottom > top:
        window.paste(source.region(inside, (right - left, bottom - top)), (left, top))
    return encode(window, fmt)


def render_thumb(source: PixelSource, max_size: int, fmt: str, limits: PixelLimits | None = None) -> tuple[bytes, str]:
    """The whole image, its longest side at most ``max_size`` (never enlarged)."""
    width, height = source.width, source.height
    size = output_size(width, height, max_size, None, 0) if max(width, height) > max_size else (width, height)
    (limits or PixelLimits()).check(size, what="thumbnail")
    return encode(source.region((0, 0, width, height), size), fmt)


def tier_size(width: int, height: int, zoom: int) -> tuple[int, int]:
    """Size of zoom ``zoom`` of the normalized pyramid (PIMS ``normalized_pyramid``: each tier half
    the previous one, rounded up; zoom 0 is the smallest)."""
    for _ in range(max_zoom_level(width, height) - zoom):
        width, height = -(-width // 2), -(-height // 2)
    return width, height


def render_tile(
    source: PixelSource, zoom: int, tx: int, ty: int, fmt: str, limits: PixelLimits | None = None
) -> tuple[bytes, str]:
    """Tile ``tx, ty`` of zoom ``zoom`` of the normalized pyramid (see the module docstring)."""
    max_zoom = max_zoom_level(source.width, source.height)
    if not 0 <= zoom <= max_zoom:
        raise BadRequest(f"Zoom {zoom} does not exist: this image has zoom levels 0 to {max_zoom}")
    tier_w, tier_h = tier_size(source.width, source.height, zoom)
    columns, rows = -(-tier_w // TILE_SIZE), -(-tier_h // TILE_SIZE)
    if not (0 <= tx < columns and 0 <= ty < rows):
        raise BadRequest(
            f"Tile ({tx}, {ty}) does not exist at zoom {zoom}: tx is 0 to {columns - 1}, ty 0 to {rows - 1}"
        )
    left, top = tx * TILE_SIZE, ty * TILE_SIZE
    right, bottom = min(tier_w, left + TILE_SIZE), min(tier_h, top + TILE_SIZE)
    (limits or PixelLimits()).check((right - left, bottom - top), what="tile")
    fx, fy = source.width / tier_w, source.height / tier_h
    return encode(source.region((left * fx, top * fy, right * fx, bottom * fy), (right - left, bottom - top)), fmt)
