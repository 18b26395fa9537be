"""The connection to a Cytomine server: the official client, plus retries and plain JSON calls.

Apps talk to Cytomine through the official ``cytomine-python-client`` (3.0.0, the last release
with the job API). Its model/collection helpers return ``False`` on any failure and never
retry, and it has no request timeout; :class:`CytomineSession` wraps the client's signed
HTTP session so that the apps get

- one place that retries what is safe to retry (GETs, and idempotent writes) on connection
  errors, timeouts, 5xx, 408 and 429, with exponential backoff and jitter;
- typed errors (:class:`CytomineRequestError` with the HTTP status) instead of ``False``;
- timeouts on every request (a hung server must not hang a job forever).

This module (with the rest of ``mtdp_core.cytomine``) is the only place that imports the
``cytomine`` package.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import requests

from mtdp_core.cytomine.errors import CytomineConnectionError, CytomineRequestError

logger = logging.getLogger(__name__)

#: (connect, read) timeouts in seconds for every request.
DEFAULT_TIMEOUT = (15.0, 300.0)
DEFAULT_RETRIES = 4
DEFAULT_BACKOFF = 0.5
_RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}


def _error_text(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].strip()
    if isinstance(body, dict):
        for key in ("errors", "message", "error"):
            if body.get(key):
                return str(body[key])[:300]
    return str(body)[:200]


def backoff_delay(attempt: int, base: float) -> float:
    """Seconds to wait before retry ``attempt`` (1, 2, ...): ``base * 2**(attempt-1)`` with +-25% jitter
    (so that the threads of a pool that failed together do not retry together)."""
    return base * (2 ** (attempt - 1)) * random.uniform(0.75, 1.25)


def with_retries(
    call: Callable[[], Any],
    *,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
    what: str = "request",
    sleep: Callable[[float], None] = time.sleep,
) -> Any:
    """Run ``call``; on a retryable :class:`CytomineRequestError`, wait and run it again, up to
    ``retries`` more times. Non-retryable errors (4xx) are raised at once."""
    attempt = 0
    while True:
        try:
            return call()
        except CytomineRequestError as exc:
            attempt += 1
            if not exc.retryable or attempt > retries:
                raise
            delay = backoff_delay(attempt, backoff)
            logger.warning("%s failed (%s); retry %d/%d in %.1f s", what, exc, attempt, retries, delay)
            sleep(delay)


class CytomineSession:
    """A connected official client (``cytomine.Cytomine`` or ``CytomineJob``) with retries.

    Args:
        client: the connected client; requests are signed with its current keys (a
            ``CytomineJob`` switches to the job user's keys when it starts).
        retries: extra attempts for retryable failures (default ``DEFAULT_RETRIES``); backoff: first
            delay in seconds (default ``DEFAULT_BACKOFF``).
        timeout: (connect, read) seconds per request.
    """

    def __init__(
        self,
        client: Any,
        *,
        retries: int | None = None,
        backoff: float | None = None,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    ) -> None:
        self.client = client
        self.retries = DEFAULT_RETRIES if retries is None else retries
        self.backoff = DEFAULT_BACKOFF if backoff is None else backoff
        self.timeout = timeout
        self._lock = threading.Lock()

    @classmethod
    def connect(cls, host: str, public_key: str, private_key: str, **kwargs: Any) -> CytomineSession:
        """Connect the official client (its singleton) to ``host`` with these keys."""
        from cytomine import Cytomine

        client = Cytomine(host, public_key, private_key, configure_logging=False)
        check_connected(client, host)
        return cls(client, **kwargs)

    # ------------------------------------------------------------------ url and auth
    @property
    def base_url(self) -> str:
        """``http(s)://host/api``."""
        return self.client._base_url().rstrip("/")

    @property
    def server_url(self) -> str:
        """``http(s)://host`` (identifies the server in cache keys)."""
        return self.client._base_url(with_base_path=False).rstrip("/")

    def _auth(self) -> Any:
        from cytomine.cytomine import CytomineAuth

        return CytomineAuth(
            self.client._public_key, self.client._private_key, self.client._base_url(), self.client._base_path
        )

    def url(self, path: str) -> str:
        """Absolute URL of ``path`` (``"annotation.json"``, ``"/api/..."`` or already absolute)."""
        if path.startswith(("http://", "https://")):
            return path
        if path.startswith("/api/"):
            return self.server_url + path
        return f"{self.base_url}/{path.lstrip('/')}"

    # ------------------------------------------------------------------ raw requests
    def request_once(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        stream: bool = False,
    ) -> requests.Response:
        """One signed request; HTTP 200 or :class:`CytomineRequestError` (status None when no
        response came back)."""
        url = self.url(path)
        headers = self.client._headers(content_type="application/json" if method != "GET" or stream else None)
        query = {k: _query_value(v) for k, v in (params or {}).items() if v is not None}
        data = json.dumps(body) if body is not None else None
        try:
            response = self.client._session.request(
                method,
                url,
                params=query,
                data=data,
                headers=headers,
                auth=self._auth(),
                timeout=self.timeout,
                allow_redirects=False,
                stream=stream,
            )
        except requests.RequestException as exc:
            raise CytomineRequestError(
                f"Check that the server is reachable: {method} {_short(url)} failed ({type(exc).__name__})", url=url
            ) from exc
        if response.status_code != 200:
            text = _error_text(response)
            response.close()
            raise CytomineRequestError(
                f"{method} {_short(url)} answered HTTP {response.status_code}: {text}",
                status=response.status_code,
                url=url,
            )
        return response

    def request(self, method: str, path: str, *, retry: bool = True, **kwargs: Any) -> requests.Response:
        """:meth:`request_once`, retried on retryable failures when ``retry``."""
        if not retry:
            return self.request_once(method, path, **kwargs)
        return with_retries(
            lambda: self.request_once(method, path, **kwargs),
            retries=self.retries,
            backoff=self.backoff,
            what=f"{method} {_short(self.url(path))}",
        )

    def get_json(self, path: str, params: Mapping[str, Any] | None = None, *, retry: bool = True) -> Any:
        return _json_of(self.request("GET", path, params=params, retry=retry))

    def post_json(
        self, path: str, body: Any = None, params: Mapping[str, Any] | None = None, *, retry: bool = False
    ) -> Any:
        """POST (not retried by default: a create is not idempotent; callers that can tell whether
        it happened retry themselves)."""
        return _json_of(self.request("POST", path, params=params, body=body, retry=retry))

    def put_json(self, path: str, body: Any = None, *, retry: bool = True) -> Any:
        return _json_of(self.request("PUT", path, body=body, retry=retry))

    def get_bytes(self, path: str, params: Mapping[str, Any] | None = None, *, retry: bool = True) -> bytes:
        return self.request("GET", path, params=params, retry=retry).content

    def get_collection(self, path: str, params: Mapping[str, Any] | None = None) -> list[dict]:
        """All items of a collection (``max=0``: one request; the client's own pagination loops
        forever when ``size < max``)."""
        query = {"max": 0, "offset": 0, **(params or {})}
        data = self.get_json(path, query)
        if not isinstance(data, dict) or "collection" not in data:
            raise CytomineRequestError(f"GET {path} did not return a collection: is the host a Cytomine server?")
        return list(data["collection"])

    def download(self, path: str, destination: Any, params: Mapping[str, Any] | None = None) -> None:
        """Stream a file (attached file, job data) to ``destination``, retried on failure."""

        def once() -> None:
            response = self.request_once("GET", path, params=params, stream=True)
            with open(destination, "wb") as handle:
                handle.writelines(response.iter_content(1 << 20))

        with_retries(once, retries=self.retries, backoff=self.backoff, what=f"download {path}")

    def upload(
        self, path: str, file_path: Any, params: Mapping[str, Any] | None = None, filename: str | None = None
    ) -> Any:
        """Multipart upload (``files[]``) of ``file_path`` as the client does; retried (an upload
        of the same attachment twice is harmless but avoided: only failures without a response
        are retried)."""
        from requests_toolbelt import MultipartEncoder

        url = self.url(path)

        def once() -> Any:
            with open(file_path, "rb") as handle:
                encoder = MultipartEncoder(fields={"files[]": (filename or str(file_path), handle)})
                headers = self.client._headers(content_type=encoder.content_type)
                try:
                    response = self.client._session.post(
                        url,
                        params=dict(params or {}),
                        data=encoder,
                        headers=headers,
                        auth=self._auth(),
                        timeout=self.timeout,
                    )
                except requests.RequestException as exc:
                    raise CytomineRequestError(
                        f"Upload to {_short(url)} failed ({type(exc).__name__})", url=url
                    ) from exc
            if response.status_code != 200:
                raise CytomineRequestError(
                    f"Upload to {_short(url)} answered HTTP {response.status_code}: {_error_text(response)}",
                    status=response.status_code,
                    url=url,
                )
            return _json_of(response)

        return with_retries(once, retries=self.retries, backoff=self.backoff, what=f"upload {filename or file_path}")


def _query_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, set)):
        return ",".join(str(v) for v in value)
    return value


def _json_of(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise CytomineRequestError(
            f"{response.request.method} {_short(response.url)} did not answer JSON: is the host a Cytomine server?",
            status=response.status_code,
            url=response.url,
        ) from None


def _short(url: str) -> str:
    """A URL without its query string and scheme/host (for messages that must stay short)."""
    path = url.split("?", 1)[0]
    if "://" in path:
        path = "/" + path.split("://", 1)[1].split("/", 1)[-1]
    return path


def check_connected(client: Any, host: str) -> None:
    """Raise :class:`CytomineConnectionError` unless ``client`` reached the server with valid keys."""
    user = getattr(client, "current_user", None)
    if user is None or user is False or getattr(user, "id", None) is None:
        raise CytomineConnectionError(
            f"Check the host and API keys: {host} did not accept them (GET /api/user/current.json failed)."
        )
