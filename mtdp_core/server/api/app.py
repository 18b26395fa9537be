"""The Flask application: authentication, the request context, errors, logs, and the URL table.

Every ``/api`` request is authenticated first (:mod:`mtdp_core.server.auth`: both signature
forms of the official clients); the caller then travels in the
:class:`~mtdp_core.server.api.context.RequestContext` given to the handler. Success is always
HTTP 200 (the client treats anything else as a failure); errors are JSON with the core's
status codes. No response carries cache validators.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from mtdp_core.server.api.context import Caller, RequestContext, Services
from mtdp_core.server.api.serialisers.envelopes import error
from mtdp_core.server.api.urls import CONVERTERS, PUBLIC_PATHS, ROUTES
from mtdp_core.server.auth import parse_authorization, verify
from mtdp_core.server.backends import CytomineStore
from mtdp_core.server.domain import Row
from mtdp_core.server.errors import NotFound, ServerError, Unauthorized

logger = logging.getLogger("mtdp_core.server.requests")


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj, separators=(",", ":")), status=status, mimetype="application/json")


def create_app(services: Services) -> Flask:
    """The Flask application serving ``services`` with the routes of :data:`~.urls.ROUTES`."""
    app = Flask("mtdp_core.server")
    app.config.update(MAX_CONTENT_LENGTH=None, JSON_SORT_KEYS=False)
    app.url_map.converters.update(CONVERTERS)

    @app.before_request
    def authenticate() -> None:
        g.start = time.perf_counter()
        g.ctx = RequestContext(services, request)
        if request.path not in PUBLIC_PATHS:
            g.ctx.caller = authenticated_caller(services.store)

    @app.after_request
    def finish(response: Response) -> Response:
        # The client mounts CacheControl: validators or max-age would make it serve stale data.
        for header in ("ETag", "Last-Modified", "Cache-Control", "Expires"):
            response.headers.pop(header, None)
        if services.config.log_requests:
            log_request(response.status_code)
        return response

    @app.errorhandler(ServerError)
    def server_error(exc: ServerError) -> Response:
        return json_response(error(exc.message, exc.status), exc.status)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        message = f"{exc.name}: {request.method} {request.path}" if exc.code in (404, 405) else str(exc.description)
        return json_response(error(message, exc.code or 500), exc.code or 500)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        logger.exception("internal error on %s %s", request.method, request.path)
        return json_response(error(f"Internal server error: {type(exc).__name__}: {exc}", 500), 500)

    for route in ROUTES:
        app.add_url_rule(
            route.pattern, f"{route.methods} {route.pattern}", _view(route.handler), methods=route.methods.split()
        )
    return app


def _view(handler: Callable[..., Any]) -> Callable[..., Response]:
    """A Flask view calling ``handler(ctx, **path parameters)``; a dict answer is sent as JSON."""

    def view(**path: Any) -> Response:
        answer = handler(g.ctx, **path)
        return answer if isinstance(answer, Response) else json_response(answer)

    view.__name__ = handler.__name__
    return view


def authenticated_caller(store: CytomineStore) -> Caller:
    """The caller of a signed request (401 when unsigned, unknown or badly signed)."""
    credentials = parse_authorization(request.headers.get("authorization"))
    if credentials is None:
        raise Unauthorized(
            "Authentication required: sign the request with your API keys "
            "(header 'authorization: CYTOMINE <public key>:<signature>')"
        )
    public_key, received = credentials
    user = store.users.find_by_public_key(public_key)
    if user is None:
        raise Unauthorized(
            f"Unknown public key {public_key[:8]}...: use the keys printed by 'mtdp server serve' "
            "or created by 'mtdp server user add'"
        )
    if not verify(
        user["private_key"],
        received,
        method=request.method,
        content_md5=request.headers.get("content-md5", ""),
        content_type=request.headers.get("content-type", ""),
        date=request.headers.get("date", ""),
        path_and_query=request.environ.get("RAW_URI") or request.full_path.rstrip("?"),
    ):
        raise Unauthorized("Bad request signature: check the private key and the 'date' header")
    return Caller(user, job_project_id=_job_project(store, user))


def _job_project(store: CytomineStore, user: Row) -> int | None:
    """The project of a job user's job (None for people, and for a job deleted since)."""
    if not user["algo"] or user["job_id"] is None:
        return None
    try:
        return store.jobs.get(user["job_id"])["project_id"]
    except NotFound:
        return None


def log_request(status: int) -> None:
    """One line per request: method, path, status, user, duration (never a key)."""
    elapsed = (time.perf_counter() - getattr(g, "start", time.perf_counter())) * 1000
    ctx = getattr(g, "ctx", None)
    who = ctx.caller.username if ctx is not None and ctx.caller is not None else "-"
    target = request.full_path.rstrip("?")
    logger.info("%s %s %d %s %.1fms", request.method, target[:200], status, who, elapsed)
