"""The public ping route."""

from __future__ import annotations

from mtdp_core.server.api.context import RequestContext
from mtdp_core.server.api.serialisers.envelopes import JSON
from mtdp_core.server.config import SERVER_VERSION


def ping(ctx: RequestContext) -> JSON:
    return {
        "alive": True,
        "authenticated": False,
        "version": SERVER_VERSION,
        "serverURL": ctx.base_url,
        "serverID": "mtdp-local",
    }
