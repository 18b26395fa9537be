"""The connection to a Cytomine server: the official client, plus retries and plain JSON calls.

Apps talk to Cytomine through the official ``cytomine-python-client`` (3.0.0, the last release
with the job API). Its model/collection helpers return ``False`` on any failure and never
retry, and it has no request timeout; :class:`CytomineSession` wraps the client's signed
HTTP session so that the apps get

- one place that retries what is safe to retry (GETs, and idempotent writes) on connection
  errors, timeouts, 5xx, 408 and 429, with exponential backoff and jitter;
- for writes that are not idempotent (creating a job, uploading a file), a *reconcile* step
  between attempts: a request that failed without a clear answer (no response, a gateway's
  502/504, a 500) may still have been applied, so what the server holds is checked before the
  request is sent again (Cytomine has no transactions or idempotency keys to lean on);
- typed errors (:class:`CytomineRequestError` with the HTTP status) instead of ``False``, and
  messages that keep the server's reason (the title of a gateway's HTML page, the core's
  ``errors``);
- timeouts on every request (a hung server must not hang a job forever).

This module (with the rest of ``mtdp_core.cytomine``) is the only place that imports the
``cytomine`` package.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
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
        text = response.text
        title = re.search(r"<title>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
        if title:  # a gateway's error page (nginx: "504 Gateway Time-out")
            return " ".join(title.group(1).split())[:200]
        return " ".join(re.sub(r"<[^>]+>", " ", text).split())[:200]
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
    reconcile: Callable[[], Any] | None = None,
) -> Any:
    """Run ``call``; on a retryable :class:`CytomineRequestError`, wait and run it again, up to
    ``retries`` more times. Non-retryable errors (4xx) are raised at once.

    ``reconcile`` (for writes that are not idempotent): called after each retryable failure,
    before the next attempt; when it returns something other than None, the failed attempt
    was applied after all and that value is returned instead of sending the request again.
    It is also tried once when the retries are exhausted.
    """
    attempt = 0
    while True:
        try:
            return call()
        except CytomineRequestError as exc:
            attempt += 1
            if not exc.retryable:
                raise
            delay = backoff_delay(attempt, backoff)
            if reconcile is not None:
                sleep(delay)  # give an attempt still in flight at the server time to land
                found = reconcile()
                if found is not None:
                    logger.warning("%s failed (%s) but was applied: not sent again", what, exc)
                    return found
                delay = 0.0
            if attempt > retries:
                raise
            logger.warning("%s failed (%s); retry %d/%d in %.1f s", what, exc, attempt, retries, delay)
            sleep(delay)


@contextlib.contextmanager
def thread_pool(max_workers: int, name: str) -> Iterator[ThreadPoolExecutor]:
    """A thread pool that, when the caller fails or is stopped (SIGTERM, Ctrl-C), cancels the
    work not started yet instead of running all of it first (``ThreadPoolExecutor``'s own exit
    waits for every queued task), then waits for the tasks in flight."""
    pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name)
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


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
        """Connect the official client (its singleton) to ``host`` with these keys, and check them.

        The client waits for ``/server/ping`` (up to 2 minutes) but reads the current user once
        and hides the outcome: here that read is retried like any request, and only a 401/403
        is reported as refused keys (a 500 or a gateway timeout is the server's problem).

        Raises:
            CytomineConnectionError: no server answers, it refuses the keys, or keeps failing.
        """
        client = _client_class()(host, public_key, private_key, configure_logging=False)
        session = cls(client, **kwargs)
        session.current_user()
        return session

    def current_user(self) -> dict:
        """The user of these keys (``GET /api/user/current.json``), retried.

        Raises:
            CytomineConnectionError: 401/403 (keys refused), or no usable answer after retries.
        """
        host = self.server_url
        try:
            user = self.get_json("user/current.json")
        except CytomineRequestError as exc:
            if exc.status in (401, 403):
                raise CytomineConnectionError(
                    f"Check the API keys (cytomine_public_key, cytomine_private_key): {host} refused them ({exc})."
                ) from None
            if exc.status is None:
                raise CytomineConnectionError(
                    f"Check cytomine_host and that the server runs: no answer from {host} ({exc})."
                ) from None
            if exc.retryable:
                raise CytomineConnectionError(
                    f"Re-run when the server works again: {host} kept failing after {self.retries + 1} attempts "
                    f"({exc})."
                ) from None
            raise CytomineConnectionError(f"Check cytomine_host: {host} is not a Cytomine server ({exc}).") from None
        if not isinstance(user, dict) or user.get("id") is None:
            raise CytomineConnectionError(f"Check cytomine_host: {host} did not answer as a Cytomine server does.")
        from cytomine.models.user import CurrentUser

        self.client._current_user = CurrentUser().populate(user)  # what the client's own helpers see
        return user

    @property
    def keys(self) -> tuple[str, str]:
        """The (public, private) keys requests are signed with now."""
        return self.client._public_key, self.client._private_key

    def use_keys(self, public_key: str, private_key: str) -> dict:
        """Sign the next requests with other keys (a job switches to its job user's); returns their user."""
        self.client._public_key, self.client._private_key = public_key, private_key
        return self.current_user()

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
        self,
        path: str,
        file_path: Any,
        params: Mapping[str, Any] | None = None,
        filename: str | None = None,
        *,
        reconcile: Callable[[], Any] | None = None,
    ) -> Any:
        """Multipart upload (``files[]``) of ``file_path`` as the client does, retried on
        transient failures. An upload creates an object: give ``reconcile`` (see
        :func:`with_retries`) to find the one a failed attempt may have created, so that a
        retry does not create a second."""
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

        return with_retries(
            once,
            retries=self.retries,
            backoff=self.backoff,
            what=f"upload {filename or file_path}",
            reconcile=reconcile,
        )


@functools.cache
def _client_class() -> type:
    """The official client, except that a connection error while it reads the current user
    leaves ``current_user`` False (as any other failure does) instead of escaping its
    constructor: :meth:`CytomineSession.current_user` then asks again, with retries."""
    from cytomine import Cytomine

    class Client(Cytomine):
        def set_current_user(self) -> None:
            try:
                super().set_current_user()
            except requests.RequestException as exc:
                logger.warning("reading the current user failed (%s): asking again", type(exc).__name__)
                self._current_user = False

    return Client


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
