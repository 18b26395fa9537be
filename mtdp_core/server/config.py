"""Settings of a local server instance, and the limits that bound what a request may cost."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mtdp_core.server.errors import BadRequest

#: What ``GET /server/ping`` reports as the core version.
SERVER_VERSION = "mtdp-local-cytomine 1.0 (Cytomine API, legacy job API)"
MIB = 1024 * 1024


@dataclass(frozen=True)
class PixelLimits:
    """How large an image the server renders for one request (a crop, mask, window, thumbnail,
    or a tile of a whole-slide image), whatever the request asks: every renderer computes its
    output size first, calls :meth:`check`, and never builds anything larger than that output
    (the region it reads is at most the stored image, or one pyramid level of it).

    Attributes:
        max_side: longest side of an output: 10,000 pixels, PIMS's ``OUTPUT_SIZE_LIMIT`` (what a
            real Cytomine refuses, in its default ``SAFE_REJECT`` mode).
        max_pixels: width x height of an output (default 4096 x 4096; about 48 MiB as RGB).
        max_upscale: how many times a region may be enlarged (per side): a 20-pixel box can be
            cropped at up to 1280 pixels by default.
    """

    max_side: int = 10_000
    max_pixels: int = 4096 * 4096
    max_upscale: float = 64.0

    def fit(self, size: tuple[int, int]) -> tuple[int, int]:
        """``size`` shrunk (aspect kept) to the longest side and the pixels allowed: what PIMS's
        ``SAFE_RESIZE`` gives a request that asks for it (the core's crop ``safe=true``)."""
        width, height = size
        ratio = min(1.0, self.max_side / max(width, height), math.sqrt(self.max_pixels / (width * height)))
        return max(1, math.floor(width * ratio)), max(1, math.floor(height * ratio))

    def check(self, size: tuple[int, int], region: tuple[float, float] | None = None, *, what: str = "image") -> None:
        """400 when an output of ``size`` (width, height), rendered from a ``region`` of that many
        source pixels, would pass a limit; the message names the limit and its flag."""
        width, height = size
        if width * height > self.max_pixels:
            side = math.isqrt(self.max_pixels)
            raise BadRequest(
                f"The {what} asked is {width} x {height} pixels, over the server's limit of {self.max_pixels:,} "
                f"pixels (e.g. {side} x {side}): ask a smaller maxSize (or a zoom level), or start the server "
                "with a larger --max-pixels"
            )
        if max(width, height) > self.max_side:
            raise BadRequest(
                f"The {what} asked is {width} x {height} pixels, over the image server's limit of {self.max_side:,} "
                "pixels a side (PIMS's output size limit): ask a smaller maxSize or a higher zoom level, or a smaller "
                "region"
            )
        if region is not None and region[0] > 0 and region[1] > 0:
            factor = max(width / region[0], height / region[1])
            if factor > self.max_upscale:
                raise BadRequest(
                    f"The {what} asked enlarges a {region[0]:g} x {region[1]:g} pixel region {factor:.0f} times, "
                    f"over the server's limit of {self.max_upscale:g} times: ask a smaller maxSize, or start the "
                    "server with a larger --max-upscale"
                )


@dataclass(frozen=True)
class ServerConfig:
    """Behaviour switches of the local server.

    Attributes:
        public_url: base URL written into absolute URLs (``cropURL``, attached file ``url``,
            the ``host`` given to jobs). None: the URL the request came to (what the client
            used, so its signatures match).
        crop_default_max_size: longest side of an annotation crop when the request gives no
            ``maxSize``. 256 is what the Spring core does (``@RequestParam(defaultValue =
            "256") maxSize``); None reproduces the Grails core, where a crop without
            ``maxSize`` is at full resolution (or reduced by ``zoom``).
        image_cache_bytes: memory for decoded images kept between crop requests.
        log_requests: log one line per request (method, path, status, user, duration).
        max_clock_skew: seconds a request's signed ``date`` may differ from the server's clock
            (15 minutes, as the HMAC schemes the client's signature copies); None: not checked
            (a captured signature then works forever).
        max_body_bytes: size of a request body (JSON, forms), read in memory; larger: 413.
        max_upload_bytes: size of an uploaded file (attached files, job data), streamed to disk.
        pixel_limits: what one request may make the server render (:class:`PixelLimits`).
    """

    public_url: str | None = None
    crop_default_max_size: int | None = 256
    image_cache_bytes: int = 256 * 1024 * 1024
    log_requests: bool = True
    max_clock_skew: float | None = 15 * 60
    max_body_bytes: int = 16 * MIB
    max_upload_bytes: int = 1024 * MIB
    pixel_limits: PixelLimits = field(default_factory=PixelLimits)
