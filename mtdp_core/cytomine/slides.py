"""Whole-slide images of a Cytomine server, read through its image server at the resolution a
model needs.

How the pixels travel (measured, see docs/slides.md, *Reading slides from Cytomine*): the slide
is **not downloaded**. Its pixels are fetched at the zoom the model reads (zoom k: 2**k times
smaller than the scan), in blocks of :data:`BLOCK` x :data:`BLOCK` pixels, and only the blocks
under the tiles that will be classified (the tissue, inside the regions of interest), by a pool
of threads, into a block cache on disk. A block is asked as an image crop of a rectangle
(``GET /api/imageinstance/{id}/crop.png?location=<rectangle>&maxSize=<block side>``): the
Spring core passes ``maxSize`` of crops to PIMS but serves windows (``window-x-y-w-h``) at full
resolution only (it drops their ``zoom`` and ``maxSize``); the Grails core and the local server
answer crops the same way.

:class:`CytomineSlide` is a :class:`mtdp_core.slides.Slide` whose levels are the image
server's normalized pyramid (level k = zoom k, downsample 2**k) and whose pixels come from
those blocks, so everything the library does on a slide works on it unchanged: tissue detection
on a thumbnail (a few coarse blocks), tile grids inside regions, classification (the feature
pipeline's worker processes read the cached blocks; they never talk to the server), overlays.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from PIL import Image

from mtdp_core.cytomine.client import CytomineSession
from mtdp_core.errors import ConfigurationError, SlideReadError
from mtdp_core.slides.reader import Slide, SlideSource, register_backend

logger = logging.getLogger(__name__)

#: Side of a block, in pixels of its zoom level (one request, about 1.5 MB as PNG).
BLOCK = 1024
#: Decoded blocks kept per process (each at most BLOCK x BLOCK x 3 bytes: 3 MiB).
KEPT_BLOCKS = 24
#: Level pixels around a tile that its resizing reads (the library's filter margin, rounded up).
TILE_MARGIN = 4
MANIFEST = "slide.json"
BLOCK_FORMATS = ("png", "jpg")


@dataclass(frozen=True)
class RemoteImage:
    """What the app needs of an image instance: size, resolution, objective power, pyramid depth."""

    id: int
    name: str
    width: int
    height: int
    mpp: float | None
    magnification: float | None
    zoom: int

    @classmethod
    def from_json(cls, item: Mapping[str, Any]) -> RemoteImage:
        width, height = int(item["width"]), int(item["height"])
        mpp = item.get("physicalSizeX") or item.get("resolution")
        zoom = item.get("zoom")
        if not isinstance(zoom, int):  # the core's getZoomLevels
            zoom = max(0, math.ceil(math.log2(max(width, height) / 256))) if max(width, height) > 256 else 0
        return cls(
            id=int(item["id"]),
            name=str(item.get("instanceFilename") or item.get("originalFilename") or item["id"]),
            width=width,
            height=height,
            mpp=float(mpp) if mpp else None,
            magnification=float(item["magnification"]) if item.get("magnification") else None,
            zoom=int(zoom),
        )


def open_remote_slide(
    session: CytomineSession,
    image: RemoteImage,
    cache_dir: str | os.PathLike,
    *,
    mpp: float | None = None,
    block_format: str = "png",
) -> CytomineSlide:
    """The image as a :class:`CytomineSlide` whose blocks are cached under ``cache_dir`` (per
    server and image). ``mpp`` overrides the image's resolution (µm per pixel);
    ``block_format``: ``"png"`` (lossless) or ``"jpg"`` (smaller, re-compressed by the server)."""
    if block_format not in BLOCK_FORMATS:
        raise ConfigurationError(f"Unknown block format {block_format!r}: use one of {', '.join(BLOCK_FORMATS)}.")
    server = hashlib.sha256(session.server_url.encode()).hexdigest()[:12]
    folder = Path(cache_dir) / server / str(image.id) / block_format
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / MANIFEST
    identity = {"server": session.server_url, "block": BLOCK, "format": block_format, **asdict(image)}
    content = json.dumps(identity, sort_keys=True)
    if not manifest.is_file() or manifest.read_text() != content:  # unchanged: its mtime keys the feature cache
        for stale in folder.glob("z*/*"):  # another image or format behind the same id: old blocks
            stale.unlink()
        manifest.write_text(content)
    slide = CytomineSlide(SlideSource(str(manifest), mpp, "cytomine"))
    slide.session = session
    return slide


@register_backend("cytomine")
class CytomineSlide(Slide):
    """An image of a Cytomine server, read through its blocks (see the module docstring).

    Opened from its manifest (``SlideSource(path=<cache>/slide.json, backend="cytomine")``) in
    any process; only a slide with a ``session`` (the app's process) fetches missing blocks.
    """

    backend = "cytomine"

    def __init__(self, source: SlideSource) -> None:
        super().__init__(source)
        try:
            manifest = json.loads(Path(source.path).read_text())
        except (OSError, ValueError) as exc:
            raise SlideReadError(f"Cannot read the cached description {source.path} of a Cytomine image: {exc}")
        self.image = RemoteImage(**{k: manifest[k] for k in RemoteImage.__dataclass_fields__})
        self.block = int(manifest["block"])
        self.format = str(manifest["format"])
        self.vendor = "cytomine"
        self.level_downsamples = tuple(float(2**k) for k in range(self.image.zoom + 1))
        self.level_dimensions = tuple(
            (math.ceil(self.image.width / d), math.ceil(self.image.height / d)) for d in self.level_downsamples
        )
        if self.image.mpp:
            self._file_mpp = (self.image.mpp, self.image.mpp)
        self.objective_power = self.image.magnification
        self.session: CytomineSession | None = None
        self.fetched = 0
        self._kept: OrderedDict[tuple[int, int, int], Image.Image] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.image.name

    def block_path(self, level: int, bx: int, by: int) -> Path:
        return Path(self.source.path).parent / f"z{level}" / f"{by}_{bx}.{self.format}"

    def _block_extent(self, level: int, bx: int, by: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of a block in pixels of its level."""
        width, height = self.level_dimensions[level]
        x0, y0 = bx * self.block, by * self.block
        return x0, y0, min(width, x0 + self.block), min(height, y0 + self.block)

    def _fetch(self, level: int, bx: int, by: int) -> None:
        """Download one block (an image crop of its rectangle at its level's size) to the cache,
        as the server encoded it."""
        if self.session is None:
            raise SlideReadError(
                f"Block {bx},{by} of zoom {level} of Cytomine image {self.image.id} was not downloaded before the "
                "tiles were read: prefetch the tiles' blocks in the process that has the connection."
            )
        x0, y0, x1, y1 = self._block_extent(level, bx, by)
        scale = 2**level
        W, H = self.image.width, self.image.height
        left, top, right, bottom = x0 * scale, y0 * scale, min(W, x1 * scale), min(H, y1 * scale)
        rectangle = shapely.box(left, H - bottom, right, H - top)  # Cytomine's origin: bottom-left
        data = self.session.get_bytes(
            f"imageinstance/{self.image.id}/crop.{self.format}",
            {"location": rectangle.wkt, "maxSize": max(x1 - x0, y1 - y0)},
        )
        path = self.block_path(level, bx, by)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        with self._lock:
            self.fetched += 1

    def _block(self, level: int, bx: int, by: int) -> Image.Image:
        key = (level, bx, by)
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return self._kept[key]
        path = self.block_path(level, bx, by)
        if not path.is_file():
            self._fetch(level, bx, by)
        try:
            with Image.open(path) as stored:
                block = stored.convert("RGB")
        except OSError as exc:
            path.unlink(missing_ok=True)  # fetched again next time
            raise SlideReadError(
                f"Block {path.name} of Cytomine image {self.image.id} is not an image ({exc})"
            ) from None
        x0, y0, x1, y1 = self._block_extent(level, bx, by)
        if block.size != (x1 - x0, y1 - y0):  # a right or bottom edge block rounded by the server
            block = block.resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR)
        with self._lock:
            self._kept[key] = block
            while len(self._kept) > KEPT_BLOCKS:
                self._kept.popitem(last=False)
        return block

    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> Image.Image:
        out = Image.new("RGB", (width, height), self.background)
        for by in range(y // self.block, (y + height - 1) // self.block + 1):
            for bx in range(x // self.block, (x + width - 1) // self.block + 1):
                x0, y0, _, _ = self._block_extent(level, bx, by)
                block = self._block(level, bx, by)
                part = block.crop(
                    (
                        max(x, x0) - x0,
                        max(y, y0) - y0,
                        min(x + width - x0, block.width),
                        min(y + height - y0, block.height),
                    )
                )
                out.paste(part, (max(x, x0) - x, max(y, y0) - y))
        return out

    def blocks_under(self, level: int, boxes: np.ndarray) -> list[tuple[int, int]]:
        """The blocks of ``level`` that reading level-0 ``boxes`` (n, 4: x, y, w, h) needs."""
        if not len(boxes):
            return []
        scale = 2**level
        width, height = self.level_dimensions[level]
        b = np.asarray(boxes, dtype=np.float64)
        x0 = np.clip(np.floor(b[:, 0] / scale) - TILE_MARGIN, 0, width - 1)
        y0 = np.clip(np.floor(b[:, 1] / scale) - TILE_MARGIN, 0, height - 1)
        x1 = np.clip(np.ceil((b[:, 0] + b[:, 2]) / scale) + TILE_MARGIN, 1, width)
        y1 = np.clip(np.ceil((b[:, 1] + b[:, 3]) / scale) + TILE_MARGIN, 1, height)
        found = set()
        for cx0, cy0, cx1, cy1 in zip(
            x0 // self.block, y0 // self.block, (x1 - 1) // self.block, (y1 - 1) // self.block
        ):
            for by in range(int(cy0), int(cy1) + 1):
                for bx in range(int(cx0), int(cx1) + 1):
                    found.add((bx, by))
        return sorted(found, key=lambda b: (b[1], b[0]))

    def prefetch(
        self,
        level: int,
        boxes: np.ndarray,
        *,
        threads: int = 8,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[int, int]:
        """Download the missing blocks of ``level`` under ``boxes``, ``threads`` at a time.

        Returns (blocks needed, blocks downloaded now).
        """
        if self.session is None:
            raise SlideReadError(f"Cytomine image {self.image.id} has no connection to download its blocks with.")
        needed = self.blocks_under(level, boxes)
        missing = [b for b in needed if not self.block_path(level, *b).is_file()]
        done = len(needed) - len(missing)
        if progress:
            progress(done, len(needed))
        with ThreadPoolExecutor(
            max_workers=max(1, min(threads, len(missing) or 1)), thread_name_prefix="block"
        ) as pool:
            for _ in pool.map(lambda b: self._fetch(level, *b), missing):
                done += 1
                if progress:
                    progress(done, len(needed))
        logger.info(
            "image %d: %d blocks of zoom %d needed, %d downloaded (%d were cached)",
            self.image.id,
            len(needed),
            level,
            len(missing),
            len(needed) - len(missing),
        )
        return len(needed), len(missing)
