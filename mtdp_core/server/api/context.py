"""What every handler receives: the server's services, who is calling, and the request.

:class:`RequestContext` is built once per request, after authentication; handlers read the
request through it (body, query parameters, paging, uploaded file) and never reach for Flask
globals, so a handler is a plain function of ``(ctx, **path parameters)``.
"""

from __future__ import annotations

import json
import math
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from flask import Request

from mtdp_core.server.api.serialisers.envelopes import collection
from mtdp_core.server.backends import CytomineStore
from mtdp_core.server.config import ServerConfig
from mtdp_core.server.domain import Row, as_bool, as_int
from mtdp_core.server.errors import BadRequest, PayloadTooLarge
from mtdp_core.server.sources import ImageCache


class Launcher(Protocol):
    """The local processing server (:class:`mtdp_core.server.launcher.JobLauncher`)."""

    def execute(self, job_id: int, base_url: str, *, wait: bool = False) -> Row: ...

    def kill(self, job_id: int) -> Row: ...

    def process_state(self, job_id: int) -> dict[str, Any] | None: ...


@dataclass
class Services:
    """What the API serves: the store, the settings, open images (decoded or slides), and the job runner."""

    store: CytomineStore
    config: ServerConfig
    cache: ImageCache
    launcher: Launcher | None = None


@dataclass(frozen=True)
class Caller:
    """Who sends the request: a person (administrator or not) or a job user, whose keys are
    those of one job of one project."""

    user: Row
    job_project_id: int | None = None

    @property
    def id(self) -> int:
        return self.user["id"]

    @property
    def username(self) -> str:
        return self.user["username"]

    @property
    def is_admin(self) -> bool:
        return bool(self.user["is_admin"])

    @property
    def is_job(self) -> bool:
        return bool(self.user["algo"])

    @property
    def kind(self) -> str:
        """``"admin"``, ``"user"`` or ``"job"``."""
        return "job" if self.is_job else "admin" if self.is_admin else "user"


@dataclass
class RequestContext:
    """One request: services, caller (None on the public routes) and the Flask request."""

    services: Services
    request: Request
    caller: Caller | None = None
    body_limit: tuple[int, str] = (0, "")  # the most bytes the body may have, and the flag that sets it
    _body: Any = field(default=None, init=False, repr=False)

    @property
    def store(self) -> CytomineStore:
        return self.services.store

    @property
    def user(self) -> Row:
        """The calling user's row (authenticated routes only)."""
        assert self.caller is not None, "a public route has no caller"
        return self.caller.user

    @property
    def base_url(self) -> str:
        """The URL written into absolute URLs: the configured public one, or the one the client used."""
        return (self.services.config.public_url or self.request.host_url).rstrip("/")

    # ------------------------------------------------------------------ the request
    def body(self) -> Any:
        """The JSON body; a form-encoded body (some client helpers post dicts that way) as a dict."""
        if self._body is None:
            self._body = _parse_body(self._raw_body())
        return self._body

    def has_body(self) -> bool:
        return bool(self._raw_body())

    def _raw_body(self) -> bytes:
        raw = self.request.get_data(cache=True)
        # A body without Content-Length is read up to the limit only: reaching it means it was longer.
        if self.request.content_length is None and self.body_limit[0] and len(raw) >= self.body_limit[0]:
            raise too_large(self.body_limit)
        return raw

    def json_object(self) -> dict[str, Any]:
        data = self.body()
        if not isinstance(data, dict):
            raise BadRequest("A JSON object is expected in the request body")
        return data

    def arg(self, name: str) -> str | None:
        return self.request.args.get(name)

    def arg_int(self, name: str, default: int | None = None) -> int | None:
        return as_int(self.request.args.get(name), name, default=default)

    def arg_bool(self, name: str) -> bool:
        return as_bool(self.request.args.get(name))

    def arg_float(self, name: str) -> float | None:
        value = self.request.args.get(name)
        if value in (None, "", "null"):
            return None
        try:
            number = float(value)  # type: ignore[arg-type]
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise BadRequest(f"Invalid {name} {value[:40]!r}: a finite number is expected") from None
        return number

    def listing_params(self) -> dict[str, Any]:
        """Query parameters, and those of a POSTed search body."""
        params: dict[str, Any] = dict(self.request.args.items())
        if self.request.method == "POST" and self.has_body():
            params.update({k: v for k, v in self.json_object().items() if v is not None})
        return params

    def paging(self) -> tuple[int, int]:
        """(offset, max) of a collection; ``max=0`` means everything."""
        offset = self.arg_int("offset", 0) or 0
        max_ = self.arg_int("max", 0) or 0
        if offset < 0 or max_ < 0:
            raise BadRequest(f"Invalid offset {offset} / max {max_}: use non-negative integers (max=0 means all)")
        return offset, max_

    def page(self, items: list[Any]) -> dict[str, Any]:
        """The collection envelope of the requested page of ``items``."""
        offset, max_ = self.paging()
        return collection(items, offset=offset, max_=max_)

    def uploaded_file(self) -> tuple[str | None, BinaryIO]:
        """(file name, content as a binary stream) of the multipart field ``files[]`` (or the only
        file sent); the content is spooled to a temporary file by Werkzeug, never held whole in memory."""
        upload = self.request.files.get("files[]") or next(iter(self.request.files.values()), None)
        if upload is None:
            raise BadRequest("No file in the request: send it as multipart/form-data field 'files[]'")
        return upload.filename, upload.stream

    def form_or_arg(self, name: str) -> str | None:
        """A value given in the query string or in the multipart form."""
        return self.request.args.get(name) or self.request.form.get(name)


def too_large(limit: tuple[int, str], size: int | None = None) -> PayloadTooLarge:
    """413 for a body over ``limit`` (bytes, and the flag that sets it)."""
    what = f"of {size:,} bytes " if size is not None else ""
    return PayloadTooLarge(
        f"Request body {what}over the server's limit of {limit[0]:,} bytes: send less (e.g. smaller chunks of "
        f"annotations), or start the server with a larger {limit[1]}"
    )


#: How deeply a JSON body may nest (Cytomine's bodies nest 3 levels; Python's parser recurses).
MAX_JSON_DEPTH = 32


def _parse_body(raw: bytes) -> Any:
    if not raw:
        return {}
    too_deep = BadRequest(f"The request body is JSON nested too deeply: at most {MAX_JSON_DEPTH} levels are accepted")
    try:
        data = json.loads(raw)
    except RecursionError:
        raise too_deep from None
    except ValueError:
        # Annotation.review() posts a dict through requests' data=, i.e. form-encoded, under a JSON
        # content type: read it as a form.
        try:
            form = urllib.parse.parse_qs(raw.decode("utf-8"), strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            raise BadRequest("The request body is not valid JSON") from None
        return {key: (values if len(values) > 1 else values[0]) for key, values in form.items()}
    if _depth(data) > MAX_JSON_DEPTH:
        raise too_deep
    return data


def _depth(data: Any) -> int:
    """How deeply lists and objects nest in ``data`` (iteratively: no recursion to exhaust)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth)
            if depth > MAX_JSON_DEPTH:
                break
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest
