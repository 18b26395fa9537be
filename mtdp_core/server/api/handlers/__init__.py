"""Per-domain HTTP handlers (moto's "responses"): each one reads the request from its
:class:`~mtdp_core.server.api.context.RequestContext`, says what access it needs
(:mod:`mtdp_core.server.api.access`), calls the backend, and returns the serialised answer
(a dict, sent as JSON with status 200) or a file/image :class:`flask.Response`. No domain rule
lives here. The URL table (:mod:`mtdp_core.server.api.urls`) maps routes to them."""
