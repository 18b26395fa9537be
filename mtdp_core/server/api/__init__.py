"""The HTTP API of the local server: the URL table (:mod:`.urls`), per-domain handlers
(:mod:`.handlers`) that translate HTTP to backend calls, the JSON shapes (:mod:`.serialisers`),
the request context (:mod:`.context`), who may do what (:mod:`.access`), and the Flask
application that ties them (:mod:`.app`)."""

from mtdp_core.server.api.app import create_app
from mtdp_core.server.api.context import Services

__all__ = ["Services", "create_app"]
