"""Fault injection: a proxy that fails requests the way gateways and servers do, a local server
in its own process that can be killed, an app in its own process that can be stopped, and
counts of the predictions a project holds.

Used by the tests (``tests/test_faults.py``, ``tests/cytomine/test_*``, ``tests/workflows/test_faults.py``)
and by the fault-matrix benchmark (``benchmarks/bench_faults.py``); it knows nothing of mtdp's
apps beyond their command lines, so any test of the local server can use it too::

    with running_server() as server, FaultProxy(server_address(server)) as proxy:
        proxy.set_faults([Fault("504_late", 0.3, methods=("POST",))], seed=1)
        ...  # point the client (or an app's --cytomine_host) at proxy.url

Faults (``Fault.kind``), each drawn per request with probability ``rate``:

=============  ==============================================================================
``500``        answered 500 by the proxy; the server never sees the request (not applied)
``502``/``503`` the same with a gateway's 502 / an overloaded core's 503
``500_late``   forwarded and applied, then answered 500 (a core that saved, then failed answering)
``504_late``   forwarded and applied, then answered 504 Gateway Time-out instead of the
               server's answer (a gateway that gave up just before the answer came)
``504_early``  answered 504 at once; the request reaches the server ``delay`` seconds later
               (a gateway that gave up while the core went on: applied after the "failure")
``reset``      the connection is reset (RST) without forwarding (not applied)
``reset_late`` forwarded and applied, then the connection is reset without an answer
``delay``      forwarded after ``delay`` seconds (slow network or overloaded server)
=============  ==============================================================================

Draws are deterministic: a request's fate depends on the seed, its method, path, query, body
and how many identical requests came before (not on thread timing), so a run with the same
seed and the same requests meets the same faults.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import re
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

from tests.helpers.paths import REPO_ROOT as REPO

logger = logging.getLogger(__name__)

FAULT_KINDS = ("500", "502", "503", "500_late", "504_late", "504_early", "reset", "reset_late", "delay")
WRITE_METHODS = ("POST", "PUT", "DELETE")
#: Requests that push predictions: bulk annotation creation and suggested terms.
PUSH_WRITES = r"^/api/annotation(/\d+/term/\d+)?\.json$"
#: Hop-by-hop headers (RFC 9110 7.6.1): never forwarded by a proxy.
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
_GATEWAY_PAGES = {
    502: "502 Bad Gateway",
    503: "503 Service Temporarily Unavailable",
    504: "504 Gateway Time-out",
}


@dataclass(frozen=True)
class Fault:
    """A fault injected into a share ``rate`` of the requests that match ``methods`` and ``path``.

    Attributes:
        kind: one of ``FAULT_KINDS`` (see the module docstring).
        rate: probability in [0, 1] for each matching request.
        methods: HTTP methods it applies to.
        path: regular expression searched in the request path (without the query); "" matches all.
        delay: seconds, for ``delay`` and ``504_early``.
        times: inject it at most this many times (None: no limit), e.g. "the first bulk create".
        body: regular expression searched in the request body; "" matches all (e.g. the PUT that
            sets a job's final status).
    """

    kind: str
    rate: float
    methods: tuple[str, ...] = ("GET", "POST", "PUT", "DELETE")
    path: str = ""
    delay: float = 0.2
    times: int | None = None
    body: str = ""

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}: use one of {', '.join(FAULT_KINDS)}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"fault rate {self.rate} is not in [0, 1]")

    def matches(self, method: str, path: str, body: bytes = b"") -> bool:
        return (
            method in self.methods
            and (not self.path or re.search(self.path, path) is not None)
            and (not self.body or re.search(self.body.encode(), body) is not None)
        )


@dataclass
class Exchange:
    """One request seen by the proxy: what it was, the fault it met, the status the server gave."""

    method: str
    path: str
    fault: str | None
    upstream_status: int | None


@dataclass
class _Trigger:
    count: int
    action: Callable[[], None]
    methods: tuple[str, ...]
    path: str
    seen: int = 0
    fired: bool = False


@dataclass
class ProxyStats:
    requests: int = 0
    faults: Counter = field(default_factory=Counter)
    upstream_errors: int = 0


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of ``upstream`` (``http://host:port``) that injects faults.

    The Host header is forwarded unchanged, so a server that builds absolute URLs from it
    (``cropURL``) points them back at the proxy, and the client's signatures (which cover the
    path, not the host) stay valid. When the upstream cannot be reached the proxy answers 502,
    as nginx in front of a stopped Cytomine does.
    """

    def __init__(
        self, upstream: str, faults: Sequence[Fault] = (), *, seed: int = 0, upstream_timeout: float = 120.0
    ) -> None:
        self.upstream = upstream
        self.upstream_timeout = upstream_timeout
        self.stats = ProxyStats()
        self.log: list[Exchange] = []
        self._faults: tuple[Fault, ...] = tuple(faults)
        self._seed = seed
        self._occurrences: Counter = Counter()
        self._injected: Counter = Counter()
        self._triggers: list[_Trigger] = []
        self._lock = threading.Lock()
        self._server: _QuietServer | None = None
        self._thread: threading.Thread | None = None
        self._late: list[threading.Thread] = []

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_ProxyHandler):
            owner = proxy

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fault-proxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        self.settle()

    def settle(self, timeout: float = 30.0) -> None:
        """Wait until the requests that ``504_early`` sends late have reached the server."""
        deadline = time.monotonic() + timeout
        for thread in list(self._late):
            thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("start the proxy first")
        return f"http://127.0.0.1:{self._server.server_port}"

    # ------------------------------------------------------------------ configuration
    def set_faults(self, faults: Sequence[Fault], *, seed: int | None = None) -> None:
        """Replace the faults (and the seed); occurrence counts restart, so draws repeat."""
        with self._lock:
            self._faults = tuple(faults)
            if seed is not None:
                self._seed = seed
            self._occurrences.clear()
            self._injected.clear()

    def on_request(
        self,
        count: int,
        action: Callable[[], None],
        *,
        methods: Sequence[str] = WRITE_METHODS,
        path: str = PUSH_WRITES,
    ) -> None:
        """Run ``action()`` once, right after the ``count``-th matching request was applied by
        the server and before its answer goes back (e.g. kill the app mid-push: the write is
        done, the app never learns it)."""
        with self._lock:
            self._triggers.append(_Trigger(count, action, tuple(methods), path))

    def count(self, *, methods: Sequence[str] = WRITE_METHODS, path: str = "") -> int:
        """Requests seen so far with these methods and whose path matches ``path``."""
        with self._lock:
            return sum(1 for e in self.log if e.method in methods and (not path or re.search(path, e.path)))

    # ------------------------------------------------------------------ decisions
    def _draw(self, method: str, target: str, body: bytes) -> Fault | None:
        key = f"{method} {target} {hashlib.sha256(body).hexdigest()}"
        path = urllib.parse.urlsplit(target).path
        with self._lock:
            n = self._occurrences[key]
            self._occurrences[key] += 1
            for index, fault in enumerate(self._faults):
                if not fault.matches(method, path, body):
                    continue
                if fault.times is not None and self._injected[index] >= fault.times:
                    continue
                digest = hashlib.sha256(f"{self._seed}|{index}|{n}|{key}".encode()).digest()
                if int.from_bytes(digest[:8], "big") / 2**64 < fault.rate:
                    self._injected[index] += 1
                    return fault
        return None

    def _record(self, method: str, target: str, fault: Fault | None, status: int | None) -> list[_Trigger]:
        path = urllib.parse.urlsplit(target).path
        fired = []
        with self._lock:
            self.stats.requests += 1
            if fault is not None:
                self.stats.faults[fault.kind] += 1
            self.log.append(Exchange(method, path, fault.kind if fault else None, status))
            applied = status is not None and (fault is None or fault.kind not in ("500", "502", "503", "reset"))
            if applied:
                for trigger in self._triggers:
                    if trigger.fired or method not in trigger.methods or not re.search(trigger.path, path):
                        continue
                    trigger.seen += 1
                    if trigger.seen >= trigger.count:
                        trigger.fired = True
                        fired.append(trigger)
        return fired

    def forward(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, str, list, bytes]:
        """Send the request to the upstream; (status, reason, headers, body), 502 when unreachable."""
        parts = urllib.parse.urlsplit(self.upstream)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self.upstream_timeout)
        try:
            connection.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                connection.putheader(name, value)
            connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            response = connection.getresponse()
            data = response.read()
            return response.status, response.reason, response.getheaders(), data
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, or cut mid-answer (a killed server)
            with self._lock:
                self.stats.upstream_errors += 1
            logger.debug("upstream %s unreachable: %s", self.upstream, exc)
            return 502, "Bad Gateway", [("Content-Type", "text/html")], _gateway_page(502)
        finally:
            connection.close()


def _gateway_page(status: int) -> bytes:
    title = _GATEWAY_PAGES.get(status, f"{status} Error")
    return f"<html><head><title>{title}</title></head><body><center><h1>{title}</h1></center></body></html>".encode()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away (a killed app resetting its keep-alive connections) is expected here.
        logger.debug("fault proxy: connection from %s ended badly: %r", client_address, sys.exc_info()[1])


class _ProxyHandler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's session uses it

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_GET

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        owner = self.owner
        method, target = self.command, self.path
        body = self._read_body()
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP | {"content-length"}]
        fault = owner._draw(method, target, body)
        kind = fault.kind if fault else None
        if kind in ("500", "502", "503"):
            owner._record(method, target, fault, None)
            status = int(kind)
            if status == 500:
                payload = json.dumps({"success": False, "errors": "Injected fault: internal error", "status": 500})
                self._answer(status, "Internal Server Error", [("Content-Type", "application/json")], payload.encode())
            else:
                self._answer(status, _GATEWAY_PAGES[status][4:], [("Content-Type", "text/html")], _gateway_page(status))
            return
        if kind == "reset":
            owner._record(method, target, fault, None)
            self._reset()
            return
        if kind == "504_early":
            owner._record(method, target, fault, None)

            def late() -> None:
                time.sleep(fault.delay)
                owner.forward(method, target, headers, body)

            thread = threading.Thread(target=late, daemon=True, name="fault-proxy-late")
            owner._late.append(thread)
            thread.start()
            self._answer(504, "Gateway Time-out", [("Content-Type", "text/html")], _gateway_page(504))
            return
        if kind == "delay":
            time.sleep(fault.delay)
        status, reason, response_headers, data = owner.forward(method, target, headers, body)
        for trigger in owner._record(method, target, fault, status):
            try:
                trigger.action()
            except Exception:  # a trigger must not break the proxy
                logger.exception("fault proxy trigger failed")
        if kind == "500_late":
            payload = json.dumps({"success": False, "errors": "Injected fault: failed after saving", "status": 500})
            self._answer(500, "Internal Server Error", [("Content-Type", "application/json")], payload.encode())
        elif kind == "504_late":
            self._answer(504, "Gateway Time-out", [("Content-Type", "text/html")], _gateway_page(504))
        elif kind == "reset_late":
            self._reset()
        else:
            kept = [(k, v) for k, v in response_headers if k.lower() not in _HOP_BY_HOP | {"content-length"}]
            self._answer(status, reason, kept, data)

    def _answer(self, status: int, reason: str, headers: Iterable[tuple[str, str]], body: bytes) -> None:
        try:
            self.send_response_only(status, reason)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _reset(self) -> None:
        """Drop the connection with a TCP reset (SO_LINGER 0), as a crashed peer or a middlebox does."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    def finish(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            super().finish()


def server_address(server: Any) -> str:
    """``http://127.0.0.1:PORT`` of a started ``LocalCytomine`` (its real port, whatever its public URL)."""
    return f"http://127.0.0.1:{server.port}"


# --------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env() -> dict[str, str]:
    """This environment, with the repository importable (for apps and servers run as processes)."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO), "PYTHONUNBUFFERED": "1"}


class ServerProcess:
    """``mtdp server serve`` on ``data`` in its own process, which can be killed and restarted.

    Seed the data folder first (e.g. with a ``LocalCytomine(data)`` in this process, stopped
    before ``start()``). The port stays the same across restarts.
    """

    def __init__(self, data: str | os.PathLike, *, port: int | None = None, log: str | os.PathLike | None = None):
        self.data = Path(data)
        self.port = port or _free_port()
        self.log_path = Path(log) if log else self.data / "server-process.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ServerProcess:
        (self.data / "server.json").unlink(missing_ok=True)  # left behind by a killed server
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mtdp_core", "server", "serve", "--data", str(self.data), "--port", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=subprocess_env(),
            cwd=str(self.data),
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return self
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server process did not start: see {self.log_path}")
            time.sleep(0.05)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(30)

    def restart(self) -> ServerProcess:
        self.kill()
        return self.start()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AppProcess:
    """An app (``workflows/<app>/run.py``) run in its own process with ``argv``, its output in ``log``."""

    def __init__(self, app: str, argv: Sequence[str], *, cwd: str | os.PathLike, env: dict[str, str] | None = None):
        self.log_path = Path(cwd) / f"{app}-{time.monotonic_ns()}.log"
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "workflows" / app / "run.py"), *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(cwd),
            env={**subprocess_env(), **(env or {})},
        )
        log.close()

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(sig)

    def wait(self, timeout: float = 300.0) -> int:
        return self.process.wait(timeout)

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


# --------------------------------------------------------------------------- what the project holds


@dataclass(frozen=True)
class PredictionCounts:
    """Predictions a project holds for ``expected`` target annotations.

    ``present``: targets with at least one prediction; ``duplicated``: predictions beyond the
    first on a target (the same target predicted twice); ``missing``: targets with none.
    """

    expected: int
    present: int
    duplicated: int

    @property
    def missing(self) -> int:
        return self.expected - self.present

    @property
    def exactly_once(self) -> bool:
        return self.present == self.expected and self.duplicated == 0


Query = Callable[[str, Sequence[Any]], list[dict[str, Any]]]


def sqlite_query(database: str | os.PathLike) -> Query:
    """Read-only queries on a server's database file (safe while the server runs)."""

    def query(sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
        connection.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in connection.execute(sql, tuple(params)).fetchall()]
        finally:
            connection.close()

    return query


def store_query(server: Any) -> Query:
    """Read-only queries on an in-process ``LocalCytomine``'s database."""
    return lambda sql, params=(): server.store.db.all(sql, tuple(params))


def count_predictions(query: Query, targets: Iterable[int], mode: str) -> PredictionCounts:
    """What the project holds for the annotations ``targets`` (the server's own tables, not its API).

    ``term`` mode: the suggested (algo) terms on each target; ``annotation`` mode: the algo
    annotations on the target's image with the same bounding box.
    """
    targets = sorted(set(targets))
    if not targets:
        return PredictionCounts(0, 0, 0)
    marks = ",".join("?" * len(targets))
    if mode == "term":
        sql = f"SELECT annotation_id AS target FROM algo_annotation_term WHERE annotation_id IN ({marks})"
        rows = query(sql, targets)
    elif mode == "annotation":
        rows = query(
            "SELECT t.id AS target FROM annotation t JOIN annotation a ON a.kind = 'algo' AND a.image_id = t.image_id"
            " AND round(a.minx, 3) = round(t.minx, 3) AND round(a.miny, 3) = round(t.miny, 3)"
            " AND round(a.maxx, 3) = round(t.maxx, 3) AND round(a.maxy, 3) = round(t.maxy, 3)"
            f" WHERE t.id IN ({marks})",
            targets,
        )
    else:
        raise ValueError(f"unknown push mode {mode!r}")
    per_target = Counter(r["target"] for r in rows)
    return PredictionCounts(len(targets), len(per_target), sum(n - 1 for n in per_target.values()))


@contextlib.contextmanager
def proxied(upstream: str, faults: Sequence[Fault] = (), seed: int = 0) -> Iterator[FaultProxy]:
    with FaultProxy(upstream, faults, seed=seed) as proxy:
        yield proxy
