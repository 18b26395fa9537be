"""Settings of a local server instance."""

from __future__ import annotations

from dataclasses import dataclass

#: What ``GET /server/ping`` reports as the core version.
SERVER_VERSION = "mtdp-local-cytomine 1.0 (Cytomine API, legacy job API)"


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
    """

    public_url: str | None = None
    crop_default_max_size: int | None = 256
    image_cache_bytes: int = 256 * 1024 * 1024
    log_requests: bool = True
    max_clock_skew: float | None = 15 * 60
