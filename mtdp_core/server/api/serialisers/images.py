"""Abstract images, image instances and slices."""

from __future__ import annotations

from mtdp_core.server.api.serialisers.envelopes import JSON, base, timestamp
from mtdp_core.server.domain import CLASS_NAMES, Row


def _whole(value: float | None) -> int | float | None:
    return int(value) if value is not None and float(value).is_integer() else value


def _pixel_fields(row: Row, zoom: int) -> JSON:
    """Size, pyramid depth (``zoom``: the core's ``getZoomLevels``, 256-pixel tiles), and the
    physical size (µm per pixel) and objective power of files that record them (slides)."""
    mime = row.get("mime") or "application/octet-stream"
    return {
        "width": row["width"],
        "height": row["height"],
        "depth": 1,
        "duration": 1,
        "channels": 1,
        "samplePerPixel": row["samples"],
        "bitPerSample": 8,
        "bitDepth": 8,
        "colorspace": "RGB" if row["samples"] == 3 else "GRAYSCALE",
        "physicalSizeX": row.get("physical_size_x"),
        "physicalSizeY": row.get("physical_size_y"),
        "physicalSizeZ": None,
        "fps": None,
        "magnification": _whole(row.get("magnification")),  # an Integer in the cores
        "resolution": row.get("physical_size_x"),  # the Grails core's name for physicalSizeX
        "zoom": zoom,
        "tileSize": 256,
        "contentType": mime,
        "mime": mime,
        "extension": row["path"].rsplit(".", 1)[-1].lower(),
    }


def _thumbs(url: str) -> JSON:
    return {"thumb": f"{url}/thumb.png?maxSize=512", "preview": f"{url}/thumb.png?maxSize=1024"}


def abstract_image(row: Row, base_url: str, zoom: int) -> JSON:
    return (
        base("abstractimage", row)
        | _pixel_fields(row, zoom)
        | {
            "filename": row["path"],
            "originalFilename": row["original_filename"],
            "path": row["path"],
            "uploadedFile": None,
            "user": row.get("user_id"),
            **_thumbs(f"{base_url}/api/abstractimage/{row['id']}"),
        }
    )


def image_instance(row: Row, base_url: str, zoom: int, counts: dict[str, int] | None = None) -> JSON:
    """An image of a project (``counts``: its annotations by kind)."""
    counts = counts or {}
    return (
        base("imageinstance", row)
        | _pixel_fields(row, zoom)
        | {
            "baseImage": row["base_image_id"],
            "project": row["project_id"],
            "user": row["user_id"],
            "instanceFilename": row["instance_filename"],
            "originalFilename": row["original_filename"],
            "filename": row["path"],
            "path": row["path"],
            "fullPath": row["path"],
            "sample": None,
            "blindedName": None,
            "numberOfAnnotations": counts.get("user", 0),
            "numberOfJobAnnotations": counts.get("algo", 0),
            "numberOfReviewedAnnotations": counts.get("reviewed", 0),
            "reviewed": False,
            "inReview": False,
            "reviewStart": None,
            "reviewStop": None,
            "reviewUser": None,
            "referenceSlice": row["slice_id"],
            **_thumbs(f"{base_url}/api/imageinstance/{row['id']}"),
            "macroURL": None,
        }
    )


def slice_instance(image: Row, base_url: str) -> JSON:
    """The one slice of a 2-D image."""
    return {
        "class": CLASS_NAMES["sliceinstance"],
        "id": image["slice_id"],
        "created": timestamp(image["created"]),
        "updated": None,
        "deleted": None,
        "image": image["id"],
        "project": image["project_id"],
        "baseSlice": image["slice_id"],
        "channel": 0,
        "zStack": 0,
        "time": 0,
        "rank": 0,
        "mime": image["mime"],
        "path": image["path"],
        "imageServerUrl": base_url,
    }
