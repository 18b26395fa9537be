"""What every handler receives: the server's services, who is calling, and the request.

:class:`RequestContext` is built once per request, after authentication; handlers read the
request through it (body, query parameters, paging, uploaded file) and never reach for Flask
globals, so a handler is a plain function of ``(ctx, **path parameters)``.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Protocol

from flask import Request

from mtdp_core.server.api.serialisers.envelopes import collection
from mtdp_core.server.backends import CytomineStore
from mtdp_core.server.config import ServerConfig
from mtdp_core.server.domain import Row, as_bool, as_int
from mtdp_core.server.errors import BadRequest
from mtdp_core.server.imaging import ImageCache


class Launcher(Protocol):
    """The local processing server (:class:`mtdp_core.server.launcher.JobLauncher`)."""

    def execute(self, job_id: int, base_url: str, *, wait: bool = False) -> Row: ...

    def kill(self, job_id: int) -> Row: ...

    def process_state(self, job_id: int) -> dict[str, Any] | None: ...


@dataclass
class Services:
    """What the API serves: the store, the settings, decoded images, and the job runner."""

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
            self._body = _parse_body(self.request.get_data(cache=True))
        return self._body

    def has_body(self) -> bool:
        return bool(self.request.get_data(cache=True))

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
            return float(value)  # type: ignore[arg-type]
        except ValueError:
            raise BadRequest(f"Invalid {name} {value!r}: a number is expected") from None

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

    def uploaded_file(self) -> tuple[str | None, bytes]:
        """(file name, content) of the multipart field ``files[]`` (or the only file sent)."""
        upload = self.request.files.get("files[]") or next(iter(self.request.files.values()), None)
        if upload is None:
            raise BadRequest("No file in the request: send it as multipart/form-data field 'files[]'")
        return upload.filename, upload.read()

    def form_or_arg(self, name: str) -> str | None:
        """A value given in the query string or in the multipart form."""
        return self.request.args.get(name) or self.request.form.get(name)


def _parse_body(raw: bytes) -> Any:
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        # Annotation.review() posts a dict through requests' data=, i.e. form-encoded, under a JSON
        # content type: read it as a form.
        try:
            form = urllib.parse.parse_qs(raw.decode("utf-8"), strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            raise BadRequest("The request body is not valid JSON") from None
        return {key: (values if len(values) > 1 else values[0]) for key, values in form.items()}
