"""The local server as an object: start it, use it, stop it.

``LocalCytomine`` runs the Flask application in a threaded WSGI server on 127.0.0.1 in a
background thread, so that tests, the demo and apps can start one in a line::

    with LocalCytomine() as server:                 # in-memory database, free port
        client = server.connect()                   # the official client, admin keys
        ...

    LocalCytomine("mtdp-data", port=8080).serve_forever()   # what `mtdp server serve` does

With a data folder, the database (``cytomine.sqlite3``), attached files, job data and job
logs live in it, so everything survives a restart; the admin keys are written to
``admin-keys.json`` and, while a server runs, its URL to ``server.json``. The folder is made
readable by its owner only (0700, files 0600), also when it existed before.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from mtdp_core.errors import ConfigurationError
from mtdp_core.server import descriptors
from mtdp_core.server.api import Services, create_app
from mtdp_core.server.backends import CytomineStore
from mtdp_core.server.backends.database import private_folder, write_private
from mtdp_core.server.config import ServerConfig
from mtdp_core.server.domain import Row
from mtdp_core.server.errors import Forbidden, NotFound
from mtdp_core.server.launcher import JobLauncher, typed_parameters
from mtdp_core.server.sources import ImageCache

logger = logging.getLogger(__name__)

DATABASE_NAME = "cytomine.sqlite3"
KEYS_FILE = "admin-keys.json"
SERVER_FILE = "server.json"


class _RequestHandler(WSGIRequestHandler):
    """Werkzeug's handler without its own access log (the app logs each request, without keys)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


def write_private_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON readable by its owner only (it holds keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, json.dumps(data, indent=2).encode("utf-8"))


def read_admin_keys(data_dir: str | Path) -> dict[str, str] | None:
    path = Path(data_dir) / KEYS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_server_file(data_dir: str | Path) -> dict[str, Any] | None:
    """The URL of a server running on ``data_dir``, when one is (its process is alive)."""
    try:
        info = json.loads((Path(data_dir) / SERVER_FILE).read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info


class LocalCytomine:
    """A local Cytomine-compatible server (see the module docstring).

    Args:
        data_dir: folder for the database and files; None: an in-memory database and a
            temporary folder, both gone at ``stop()``.
        host: interface to bind; keep 127.0.0.1 unless a container needs another one.
        port: TCP port; 0 picks a free one.
        public_key, private_key: the admin's keys (created at random on first start otherwise).
        config: behaviour switches (crop default size, public URL, request logs).
        database: database path (default ``data_dir/cytomine.sqlite3``); ``":memory:"`` allowed.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        public_key: str | None = None,
        private_key: str | None = None,
        config: ServerConfig | None = None,
        database: str | os.PathLike | None = None,
    ) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.host = host
        self.port = port
        self.config = config or ServerConfig()
        self._admin_keys = (public_key, private_key)
        if (public_key is None) != (private_key is None):
            raise ConfigurationError("Give both the admin public and private key, or neither")
        if database is None:
            database = self.data_dir / DATABASE_NAME if self.data_dir is not None else ":memory:"
        self.database = str(database)
        self.store: CytomineStore | None = None
        self.launcher: JobLauncher | None = None
        self.admin: Row | None = None
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LocalCytomine:
        if self._server is not None:
            return self
        if self.host not in ("127.0.0.1", "localhost", "::1"):
            logger.warning(
                "binding %s: the server is reachable from other machines (keys are the only protection)", self.host
            )
        if self.data_dir is not None:
            private_folder(self.data_dir)  # it holds the database, keys and files: its owner's only
        files_dir = self.data_dir / "files" if self.data_dir is not None else None
        self.store = CytomineStore(self.database, files_dir)
        self.admin = self.store.users.ensure_admin(*self._admin_keys)
        jobs_dir = (
            private_folder(self.data_dir / "jobs") if self.data_dir is not None else self.store.files.folder("jobs")
        )
        self.launcher = JobLauncher(self.store, jobs_dir)
        services = Services(self.store, self.config, ImageCache(self.config.image_cache_bytes), self.launcher)
        app = create_app(services)
        try:
            self._server = make_server(self.host, self.port, app, threaded=True, request_handler=_RequestHandler)
        except OSError as exc:
            self.store.close()
            raise ConfigurationError(
                f"Cannot listen on {self.host}:{self.port}: {exc}. Choose another --port (0 picks a free one)."
            ) from None
        self.port = self._server.server_port
        # A short poll interval makes stop() return at once instead of after up to half a second.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="mtdp-local-cytomine", daemon=True
        )
        self._thread.start()
        if self.data_dir is not None:
            write_private_json(
                self.data_dir / KEYS_FILE,
                {"username": "admin", "public_key": self.public_key, "private_key": self.private_key},
            )
            write_private_json(self.data_dir / SERVER_FILE, {"url": self.url, "pid": os.getpid()})
        logger.info("local Cytomine server listening on %s (database %s)", self.url, self.database)
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        if self.launcher is not None:
            self.launcher.shutdown()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)
        if self.store is not None:
            self.store.close()
        if self.data_dir is not None:
            (self.data_dir / SERVER_FILE).unlink(missing_ok=True)
        self._server = None
        logger.info("local Cytomine server on port %d stopped", self.port)

    def serve_forever(self) -> None:
        """Block until interrupted (Ctrl-C), then stop."""
        self.start()
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(0.5)
        finally:
            self.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ access
    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (what to give the client as host)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return self.config.public_url or f"http://{host}:{self.port}"

    @property
    def public_key(self) -> str:
        return self._require_started()["public_key"]

    @property
    def private_key(self) -> str:
        return self._require_started()["private_key"]

    def _require_started(self) -> Row:
        if self.admin is None or self.store is None:
            raise ConfigurationError("The local server is not started: call start() or use it as a context manager")
        return self.admin

    def connect(self, public_key: str | None = None, private_key: str | None = None, **kwargs: Any):
        """The official client (``cytomine.Cytomine``), connected as admin unless keys are given."""
        from cytomine import Cytomine

        kwargs.setdefault("configure_logging", False)
        return Cytomine(self.url, public_key or self.public_key, private_key or self.private_key, **kwargs)

    # ------------------------------------------------------------------ software and jobs
    def register_app(
        self,
        descriptor_path: str | os.PathLike,
        *,
        local_command: str | list[str] | None = None,
        version: str | None = None,
    ) -> Row:
        """Register ``descriptors/<app>.json`` (see :func:`descriptors.register_software`)."""
        store = self._store()
        spec = descriptors.load_descriptor(descriptor_path)
        command = (
            descriptors.parse_local_command(local_command)
            if local_command is not None
            else descriptors.default_local_command(descriptor_path)
        )
        data = json.loads(Path(descriptor_path).read_text(encoding="utf-8"))
        return descriptors.register_software(store, spec, version=version, local_command=command, descriptor=data)

    def find_software(self, software: int | str) -> Row:
        """A software by id, name or descriptor stem (``svm_train``)."""
        backend = self._store().software
        if isinstance(software, int) or str(software).isdigit():
            return backend.get(int(software))
        row = backend.find(str(software))
        if row is None:
            names = ", ".join(sorted({s["name"] for s in backend.list()})) or "none"
            hint = "register it with 'mtdp server register-app'"
            raise NotFound(f"Software {software!r} is not registered: {hint} (registered: {names})")
        return row

    def find_project(self, project: int | str) -> Row:
        """A project by id or name."""
        backend = self._store().projects
        row = backend.get(int(project)) if str(project).isdigit() else backend.find_by_name(str(project))
        if row is None:
            names = ", ".join(p["name"] for p in backend.list()) or "none"
            raise NotFound(f"Project {project!r} does not exist (projects: {names})")
        return row

    def launch(
        self,
        software: int | str,
        project: int | str,
        parameters: Mapping[str, object] | None = None,
        *,
        wait: bool = True,
        runner: str | None = None,
        image: str | None = None,
        engine: str | None = None,
        timeout: float | None = None,
        user: str = "admin",
    ) -> Row:
        """Launch a job as the Cytomine web UI does: a Job with its own user and its parameters,
        the command line built by the core's rules, run by the local processing server.

        ``user`` launches it (an administrator, or a member of the project); the job user acts in
        the project until the job ends. Returns the job (its final state when ``wait``).
        """
        store = self._store()
        software_row = self.find_software(software)
        project_row = self.find_project(project)
        launcher_user = store.users.find_by_username(user)
        if launcher_user is None:
            raise NotFound(f"User {user!r} does not exist")
        if not launcher_user["is_admin"] and store.projects.role(project_row["id"], launcher_user["id"]) is None:
            raise Forbidden(
                f"User {user!r} is not a member of project {project_row['name']!r}: add it with "
                f"'mtdp server user add {user} --project {project_row['name']}'"
            )
        store.software.ensure_in_project(software_row["id"], project_row["id"])
        checked = typed_parameters(store.software.list_parameters(software_row["id"]), parameters or {})
        job, _ = store.jobs.create(project_row["id"], software_row["id"], launcher_user, checked)
        assert self.launcher is not None
        return self.launcher.execute(
            job["id"], self.url, wait=wait, runner=runner, image=image, engine=engine, timeout=timeout
        )

    def _store(self) -> CytomineStore:
        self._require_started()
        assert self.store is not None
        return self.store
