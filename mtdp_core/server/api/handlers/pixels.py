"""Pixels: thumbnails, windows, crops and tiles of images, crops and masks of annotations, downloads."""

from __future__ import annotations

import os

import shapely
from flask import Response, send_file

from mtdp_core.server.api import access
from mtdp_core.server.api.context import RequestContext
from mtdp_core.server.api.handlers.images import image_of
from mtdp_core.server.domain import ANNOTATION_DOMAINS
from mtdp_core.server.errors import BadRequest, NotFound
from mtdp_core.server.geometry import parse_wkt
from mtdp_core.server.imaging import CropOptions, render_crop, render_thumb, render_tile, render_window

THUMB_SIZE, PREVIEW_SIZE = 512, 1024


def image_response(data: bytes, mime: str) -> Response:
    return Response(data, mimetype=mime)


def file_response(path: str, download_name: str) -> Response:
    """A stored file as an attachment (no validators: the client's cache must not keep it). The
    name goes into a header: control characters (CR/LF) are replaced, whatever was stored."""
    if not os.path.isfile(path):
        raise NotFound(f"The file {download_name[:60]!r} is missing from the server's disk")
    safe = "".join("_" if ord(c) < 32 or ord(c) == 127 else c for c in download_name) or "file"
    return send_file(path, as_attachment=True, download_name=safe, conditional=False, etag=False)


def _thumb(ctx: RequestContext, path: str, default_size: int, fmt: str) -> Response:
    max_size = ctx.arg_int("maxSize", default_size) or default_size
    return image_response(*render_thumb(ctx.services.cache.get(path), max_size, fmt, ctx.services.config.pixel_limits))


def image_thumb(ctx: RequestContext, image_id: int, fmt: str) -> Response:
    return _thumb(ctx, image_of(ctx, image_id)["path"], THUMB_SIZE, fmt)


def image_preview(ctx: RequestContext, image_id: int, fmt: str) -> Response:
    return _thumb(ctx, image_of(ctx, image_id)["path"], PREVIEW_SIZE, fmt)


def abstract_thumb(ctx: RequestContext, abstract_id: int, fmt: str) -> Response:
    access.require_abstract_image_access(ctx, abstract_id)
    return _thumb(ctx, ctx.store.images.get_abstract(abstract_id)["path"], THUMB_SIZE, fmt)


def image_window(ctx: RequestContext, image_id: int, x: int, y: int, w: int, h: int, fmt: str) -> Response:
    pixels = ctx.services.cache.get(image_of(ctx, image_id)["path"])
    options = {
        "with_exterior": ctx.arg_bool("withExterior"),
        "max_size": ctx.arg_int("maxSize"),
        "zoom": ctx.arg_int("zoom"),
        "limits": ctx.services.config.pixel_limits,
    }
    return image_response(*render_window(pixels, x, y, w, h, fmt, **options))


def slice_tile(ctx: RequestContext, slice_id: int, z: int, tx: int, ty: int, fmt: str) -> Response:
    """A tile of the normalized pyramid (the Spring core's ``normalized-tile`` route)."""
    image = ctx.store.images.get_by_slice(slice_id)
    image_of(ctx, image["id"])  # the caller's access to the image
    source = ctx.services.cache.get(image["path"])
    return image_response(*render_tile(source, z, tx, ty, fmt, ctx.services.config.pixel_limits))


def image_crop(ctx: RequestContext, image_id: int, fmt: str) -> Response:
    image = image_of(ctx, image_id)
    wkt = ctx.arg("location") or ctx.arg("geometry")
    if not wkt:
        raise BadRequest("An image crop needs 'location' (a WKT geometry in Cytomine coordinates)")
    options = crop_options(ctx, "crop", fmt)
    pixels = ctx.services.cache.get(image["path"])
    return image_response(*render_crop(pixels, parse_wkt(wkt), options, ctx.services.config.pixel_limits))


def annotation_crop(ctx: RequestContext, domain: str, annotation_id: int, crop: str, fmt: str) -> Response:
    """``crop``, ``mask`` or ``alphamask`` of an annotation."""
    row = ctx.store.annotations.get(annotation_id, ANNOTATION_DOMAINS[domain])
    image = image_of(ctx, row["image_id"])
    options = crop_options(ctx, crop, fmt)
    pixels = ctx.services.cache.get(image["path"])  # decoding happens outside the database lock
    return image_response(
        *render_crop(pixels, shapely.from_wkt(row["location"]), options, ctx.services.config.pixel_limits)
    )


def download_image(ctx: RequestContext, image_id: int) -> Response:
    row = image_of(ctx, image_id)
    return file_response(row["path"], row["original_filename"])


def download_abstract_image(ctx: RequestContext, abstract_id: int) -> Response:
    access.require_abstract_image_access(ctx, abstract_id)
    row = ctx.store.images.get_abstract(abstract_id)
    return file_response(row["path"], row["original_filename"])


def crop_options(ctx: RequestContext, kind: str, fmt: str) -> CropOptions:
    """Crop parameters from the query string (the client's Annotation.dump sends them)."""
    if kind == "crop":
        requested = (ctx.arg("type") or "").lower()
        if requested in ("draw", "mask", "alphamask"):
            kind = requested
        elif ctx.arg_bool("draw"):
            kind = "draw"
        elif ctx.arg_bool("mask"):
            kind = "mask"
        elif ctx.arg_bool("alphaMask"):
            kind = "alphamask"
    return CropOptions(
        kind=kind,
        max_size=ctx.arg_int("maxSize", ctx.services.config.crop_default_max_size),
        zoom=ctx.arg_int("zoom"),
        increase_area=ctx.arg_float("increaseArea"),
        square=ctx.arg_bool("square"),
        fmt=fmt,
        jpeg_quality=ctx.arg_int("jpegQuality"),
        color=(ctx.arg("color") or "#ff0000").replace("0x", "#"),
        thickness=ctx.arg_int("thickness", 1) or 1,
        safe=ctx.arg_bool("safe"),
    )
