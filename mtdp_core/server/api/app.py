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
import secrets
import time
from collections.abc import Callable
from email.utils import formatdate, parsedate_to_datetime
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from mtdp_core.server.api.context import Caller, RequestContext, Services, too_large
from mtdp_core.server.api.serialisers.envelopes import error
from mtdp_core.server.api.urls import CONVERTERS, PUBLIC_PATHS, ROUTES, Route
from mtdp_core.server.auth import parse_authorization, verify
from mtdp_core.server.backends import CytomineStore
from mtdp_core.server.domain import STATUS_NAMES, TERMINAL_STATUSES, Row, check_range
from mtdp_core.server.errors import NotFound, ServerError, Unauthorized

logger = logging.getLogger("mtdp_core.server.requests")


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj, separators=(",", ":")), status=status, mimetype="application/json")


def create_app(services: Services) -> Flask:
    """The Flask application serving ``services`` with the routes of :data:`~.urls.ROUTES`."""
    app = Flask("mtdp_core.server")
    app.config.update(MAX_CONTENT_LENGTH=services.config.max_upload_bytes, JSON_SORT_KEYS=False)
    app.url_map.converters.update(CONVERTERS)
    uploads = {_endpoint(route) for route in ROUTES if route.upload}

    @app.before_request
    def authenticate() -> None:
        g.start = time.perf_counter()
        g.ctx = RequestContext(services, request)
        limit_body(g.ctx, request.endpoint in uploads)
        if request.path not in PUBLIC_PATHS:
            g.ctx.caller = authenticated_caller(services.store, services.config.max_clock_skew)

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
        if exc.code == 413 and getattr(g, "ctx", None) is not None:  # a body that grew past the limit while read
            return server_error(too_large(g.ctx.body_limit))
        message = f"{exc.name}: {request.method} {request.path}" if exc.code in (404, 405) else str(exc.description)
        return json_response(error(message, exc.code or 500), exc.code or 500)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        # The details (which may name files of the server) go to the log only.
        reference = secrets.token_hex(4)
        logger.exception("internal error %s on %s %s", reference, request.method, printable(request.path))
        message = f"Internal server error ({type(exc).__name__}, reference {reference}): see the server's log"
        return json_response(error(message, 500), 500)

    for route in ROUTES:
        app.add_url_rule(route.pattern, _endpoint(route), _view(route.handler), methods=route.methods.split())
    return app


def _endpoint(route: Route) -> str:
    return f"{route.methods} {route.pattern}"


def limit_body(ctx: RequestContext, upload: bool) -> None:
    """Bound what the request's body may make the server read: ``max_upload_bytes`` for a file
    upload (streamed to disk), ``max_body_bytes`` for anything else (read in memory). A declared
    length over the limit is refused before reading; a chunked body is read up to the limit only."""
    config = ctx.services.config
    ctx.body_limit = (
        (config.max_upload_bytes, "--max-upload-mb") if upload else (config.max_body_bytes, "--max-body-mb")
    )
    request.max_content_length = ctx.body_limit[0]
    if request.content_length is not None and request.content_length > ctx.body_limit[0]:
        raise too_large(ctx.body_limit, request.content_length)


def _view(handler: Callable[..., Any]) -> Callable[..., Response]:
    """A Flask view calling ``handler(ctx, **path parameters)``; a dict answer is sent as JSON.
    Integers of the path are checked first (SQLite stores 64 bits)."""

    def view(**path: Any) -> Response:
        for name, value in path.items():
            if isinstance(value, int):
                check_range(value, name.removesuffix("_id"))
        answer = handler(g.ctx, **path)
        return answer if isinstance(answer, Response) else json_response(answer)

    view.__name__ = handler.__name__
    return view


def authenticated_caller(store: CytomineStore, max_clock_skew: float | None = None) -> Caller:
    """The caller of a signed request (401 when unsigned, unknown, badly signed, dated more than
    ``max_clock_skew`` seconds from the server's clock, or by a job user whose job has ended)."""
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
    if max_clock_skew is not None:
        check_date(request.headers.get("date"), max_clock_skew)
    return Caller(user, job_project_id=_job_project(store, user))


def check_date(header: str | None, max_clock_skew: float) -> None:
    """401 unless the signed ``date`` header is within ``max_clock_skew`` seconds of the server's
    clock: a captured signature is not replayable later (as the HMAC schemes the client copies)."""
    if not header:
        raise Unauthorized("The request has no 'date' header: sign it with the current date (RFC 1123, UTC)")
    try:
        sent = parsedate_to_datetime(header).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        raise Unauthorized(
            f"Invalid 'date' header {header[:40]!r}: use RFC 1123, e.g. {formatdate(usegmt=True)}"
        ) from None
    skew = sent - time.time()
    if abs(skew) > max_clock_skew:
        raise Unauthorized(
            f"The request's date is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} the server's clock "
            f"(at most {max_clock_skew:.0f} s allowed): set the clock of the calling machine, or start the server "
            "with a larger --max-clock-skew"
        )


def _job_project(store: CytomineStore, user: Row) -> int | None:
    """The project of a job user's job (None for people); 401 once the job has ended or is gone:
    a job's keys work while it runs only, except to read that job (an app whose final status
    update got no answer confirms it was applied: a timeout can hide a success)."""
    if not user["algo"]:
        return None
    try:
        job = store.jobs.get(user["job_id"])
    except NotFound:
        raise Unauthorized(f"The keys of job user {user['username']!r} no longer work: its job was deleted") from None
    if job["status"] in TERMINAL_STATUSES and not _reads_own_job(job["id"]):
        raise Unauthorized(
            f"The keys of job {job['id']} no longer work: the job ended ({STATUS_NAMES[job['status']]}); "
            "launch a new job"
        )
    return job["project_id"]


def _reads_own_job(job_id: int) -> bool:
    return request.method in ("GET", "HEAD") and request.path.rstrip("/") == f"/api/job/{job_id}.json"


def log_request(status: int) -> None:
    """One line per request: method, path, status, user, duration (never a key); what the
    client chose (the path) is escaped, so that it cannot forge log lines."""
    elapsed = (time.perf_counter() - getattr(g, "start", time.perf_counter())) * 1000
    ctx = getattr(g, "ctx", None)
    who = ctx.caller.username if ctx is not None and ctx.caller is not None else "-"
    target = printable(request.full_path.rstrip("?"))
    logger.info("%s %s %d %s %.1fms", printable(request.method), target[:300], status, printable(who), elapsed)


def printable(text: str) -> str:
    """``text`` with control characters (CR, LF, ...) and backslashes escaped, for a log line."""
    return "".join(c if c.isprintable() and c != "\\" else c.encode("unicode_escape").decode("ascii") for c in text)
