"""The one SQLite connection every backend shares: schema, transactions, identifiers, files.

One database (a file, so data survive a restart, or ``:memory:`` for tests) holds the whole
Cytomine domain. Identifiers come from one sequence shared by every domain (as Cytomine's
``hibernate_sequence``).

Secrets: the database holds every private key, so it is readable by its owner only (mode
0600, with its WAL and shared-memory files), as are stored files (0600, in 0700 folders);
:func:`private_folder` makes the data folder 0700. Existing files are tightened when opened.

Thread safety: one connection guarded by a re-entrant lock (SQLite's Python binding must not
be used by two threads at once); writes run in ``BEGIN IMMEDIATE`` transactions so another
process (e.g. ``mtdp server import`` while a server runs) can share a database file. Nested
``transaction()`` calls join the outer one, so a backend method can call another backend's
inside its own transaction and both commit or roll back together.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from mtdp_core.errors import ConfigurationError
from mtdp_core.server.domain import Row
from mtdp_core.server.errors import NotFound

SCHEMA_VERSION = "2"
#: Ids per ``IN (...)`` clause (SQLite allows 999 bound parameters on old builds).
CHUNK = 500
#: Bytes copied at a time when a file is stored (uploads are streamed, never held whole in memory).
CHUNK_BYTES = 1024 * 1024
#: Modes of what holds secrets: the database and stored files, and the folders around them.
PRIVATE_FILE, PRIVATE_FOLDER = 0o600, 0o700

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sec_user (
    id INTEGER PRIMARY KEY, username TEXT NOT NULL UNIQUE, firstname TEXT, lastname TEXT, email TEXT,
    public_key TEXT NOT NULL UNIQUE, private_key TEXT NOT NULL, is_admin INTEGER NOT NULL DEFAULT 0,
    algo INTEGER NOT NULL DEFAULT 0, job_id INTEGER, launcher_id INTEGER,
    created INTEGER NOT NULL, updated INTEGER);
CREATE TABLE IF NOT EXISTS ontology (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, user_id INTEGER, created INTEGER NOT NULL, updated INTEGER);
CREATE TABLE IF NOT EXISTS term (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, ontology_id INTEGER NOT NULL, color TEXT, comment TEXT,
    parent_id INTEGER, created INTEGER NOT NULL, updated INTEGER, UNIQUE (ontology_id, name));
CREATE TABLE IF NOT EXISTS project (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, ontology_id INTEGER, user_id INTEGER,
    created INTEGER NOT NULL, updated INTEGER);
CREATE TABLE IF NOT EXISTS project_member (
    project_id INTEGER NOT NULL, user_id INTEGER NOT NULL, manager INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL, PRIMARY KEY (project_id, user_id));
CREATE INDEX IF NOT EXISTS project_member_user ON project_member (user_id);
CREATE TABLE IF NOT EXISTS abstract_image (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, original_filename TEXT NOT NULL, width INTEGER NOT NULL,
    height INTEGER NOT NULL, samples INTEGER NOT NULL, mime TEXT, user_id INTEGER, created INTEGER NOT NULL,
    updated INTEGER);
CREATE TABLE IF NOT EXISTS image_instance (
    id INTEGER PRIMARY KEY, base_image_id INTEGER NOT NULL, project_id INTEGER NOT NULL, user_id INTEGER,
    instance_filename TEXT, slice_id INTEGER NOT NULL, created INTEGER NOT NULL, updated INTEGER,
    UNIQUE (base_image_id, project_id));
CREATE TABLE IF NOT EXISTS annotation (
    id INTEGER PRIMARY KEY, kind TEXT NOT NULL, image_id INTEGER NOT NULL, slice_id INTEGER NOT NULL,
    project_id INTEGER NOT NULL, user_id INTEGER NOT NULL, location TEXT NOT NULL,
    geometry_compression REAL NOT NULL DEFAULT 0, area REAL, perimeter REAL, cx REAL, cy REAL,
    minx REAL, miny REAL, maxx REAL, maxy REAL, parent_id INTEGER, review_user_id INTEGER,
    created INTEGER NOT NULL, updated INTEGER);
CREATE INDEX IF NOT EXISTS annotation_project ON annotation (project_id, kind);
CREATE INDEX IF NOT EXISTS annotation_image ON annotation (image_id);
CREATE INDEX IF NOT EXISTS annotation_parent ON annotation (parent_id);
CREATE TABLE IF NOT EXISTS annotation_term (
    id INTEGER PRIMARY KEY, annotation_id INTEGER NOT NULL, term_id INTEGER NOT NULL, user_id INTEGER NOT NULL,
    created INTEGER NOT NULL, UNIQUE (annotation_id, term_id, user_id));
CREATE INDEX IF NOT EXISTS annotation_term_term ON annotation_term (term_id);
CREATE TABLE IF NOT EXISTS algo_annotation_term (
    id INTEGER PRIMARY KEY, annotation_id INTEGER NOT NULL, term_id INTEGER NOT NULL, expected_term_id INTEGER,
    user_id INTEGER NOT NULL, rate REAL, created INTEGER NOT NULL, UNIQUE (annotation_id, term_id, user_id));
CREATE TABLE IF NOT EXISTS property (
    id INTEGER PRIMARY KEY, domain_class TEXT NOT NULL, domain_ident INTEGER NOT NULL, key TEXT NOT NULL,
    value TEXT, created INTEGER NOT NULL, updated INTEGER, UNIQUE (domain_class, domain_ident, key));
CREATE TABLE IF NOT EXISTS attached_file (
    id INTEGER PRIMARY KEY, domain_class TEXT NOT NULL, domain_ident INTEGER NOT NULL, filename TEXT NOT NULL,
    storage TEXT NOT NULL, size INTEGER NOT NULL, key TEXT, created INTEGER NOT NULL, updated INTEGER);
CREATE INDEX IF NOT EXISTS attached_file_domain ON attached_file (domain_class, domain_ident);
CREATE TABLE IF NOT EXISTS description (
    id INTEGER PRIMARY KEY, domain_class TEXT NOT NULL, domain_ident INTEGER NOT NULL, data TEXT,
    created INTEGER NOT NULL, updated INTEGER, UNIQUE (domain_class, domain_ident));
CREATE TABLE IF NOT EXISTS software (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, app TEXT, software_version TEXT, execute_command TEXT,
    pulling_command TEXT, command_line TEXT, container_image TEXT, image_type TEXT, local_command TEXT,
    descriptor TEXT, deprecated INTEGER NOT NULL DEFAULT 0, created INTEGER NOT NULL, updated INTEGER);
CREATE TABLE IF NOT EXISTS software_parameter (
    id INTEGER PRIMARY KEY, software_id INTEGER NOT NULL, name TEXT NOT NULL, type TEXT NOT NULL,
    default_value TEXT, required INTEGER NOT NULL DEFAULT 0, idx INTEGER NOT NULL DEFAULT 0,
    set_by_server INTEGER NOT NULL DEFAULT 0, server_parameter INTEGER NOT NULL DEFAULT 0, human_name TEXT,
    value_key TEXT, command_line_flag TEXT, uri TEXT, uri_print TEXT, uri_sort TEXT,
    created INTEGER NOT NULL, updated INTEGER, UNIQUE (software_id, name));
CREATE TABLE IF NOT EXISTS software_project (
    id INTEGER PRIMARY KEY, software_id INTEGER NOT NULL, project_id INTEGER NOT NULL, created INTEGER NOT NULL,
    UNIQUE (software_id, project_id));
CREATE TABLE IF NOT EXISTS job (
    id INTEGER PRIMARY KEY, software_id INTEGER NOT NULL, project_id INTEGER NOT NULL, number INTEGER NOT NULL,
    status INTEGER NOT NULL DEFAULT 0, progress INTEGER NOT NULL DEFAULT 0, status_comment TEXT, rate REAL,
    data_deleted INTEGER NOT NULL DEFAULT 0, favorite INTEGER NOT NULL DEFAULT 0,
    created INTEGER NOT NULL, updated INTEGER);
CREATE TABLE IF NOT EXISTS job_parameter (
    id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL, software_parameter_id INTEGER NOT NULL, value TEXT,
    created INTEGER NOT NULL, UNIQUE (job_id, software_parameter_id));
CREATE TABLE IF NOT EXISTS job_data (
    id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL, key TEXT, filename TEXT, storage TEXT, size INTEGER,
    created INTEGER NOT NULL, updated INTEGER);
-- The physical size of the images whose file records one (whole-slide files): a table of its own, so that
-- databases made before the server read slides need no migration (their images have no row: no resolution).
CREATE TABLE IF NOT EXISTS image_resolution (
    abstract_image_id INTEGER PRIMARY KEY, physical_size_x REAL, physical_size_y REAL, magnification REAL);
"""

#: What turns a database of each older schema version into the next one (run once, in order).
MIGRATIONS: dict[str, tuple[str, ...]] = {
    # 1 -> 2: projects have members; the creator of each existing project becomes its manager.
    "1": (
        "INSERT OR IGNORE INTO project_member (project_id, user_id, manager, created)"
        " SELECT id, user_id, 1, created FROM project WHERE user_id IS NOT NULL",
    ),
}


def marks(count: int) -> str:
    """``?,?,?`` for an ``IN (...)`` clause of ``count`` values."""
    return ",".join("?" * count)


def chunks(ids: Sequence[int]) -> Iterator[list[int]]:
    """``ids`` in slices small enough for one ``IN (...)`` clause."""
    ids = list(ids)
    for start in range(0, len(ids), CHUNK):
        yield ids[start : start + CHUNK]


class Database:
    """The shared connection (see the module docstring). Backends read with :meth:`all`,
    :meth:`one`, :meth:`scalar` and :meth:`get`, and write inside :meth:`transaction`."""

    def __init__(self, path: str | os.PathLike = ":memory:") -> None:
        self.path = str(path)
        self._lock = threading.RLock()
        self._depth = 0
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, PRIVATE_FILE))  # never readable by others
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA foreign_keys = OFF")
        if self.path != ":memory:":
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            # SQLite gives the WAL and shared-memory files the database file's mode: make that 0600 first.
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.chmod(self.path + suffix, PRIVATE_FILE)
        with self._lock:
            self._conn.executescript(SCHEMA)  # idempotent (IF NOT EXISTS); commits by itself
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('next_id', '1')")
            self._migrate(db)

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Bring a database made by an older version of the server to :data:`SCHEMA_VERSION`."""
        version = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0]
        while version != SCHEMA_VERSION:
            if version not in MIGRATIONS:
                raise ConfigurationError(
                    f"Database {self.path} has schema version {version}, unknown to this server (version "
                    f"{SCHEMA_VERSION}): use the mtdp version that wrote it, or a newer one"
                )
            for statement in MIGRATIONS[version]:
                db.execute(statement)
            version = str(int(version) + 1)
            db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (version,))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (nested calls join the outer one)."""
        with self._lock:
            outer = self._depth == 0
            if outer:
                self._conn.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield self._conn
            except BaseException:
                self._depth -= 1
                if outer:
                    self._conn.execute("ROLLBACK")
                raise
            else:
                self._depth -= 1
                if outer:
                    self._conn.execute("COMMIT")

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            return [dict(r) for r in self._conn.execute(sql, params).fetchall()]

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        with self._lock:
            row = self._conn.execute(sql, params).fetchone()
        return dict(row) if row is not None else None

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._lock:
            row = self._conn.execute(sql, params).fetchone()
        return row[0] if row is not None else None

    def exists(self, sql: str, params: Sequence[Any] = ()) -> bool:
        return self.scalar(sql, params) is not None

    def require(self, sql: str, params: Sequence[Any], missing: str) -> Row:
        """The first row of ``sql``; NotFound with the message ``missing`` when there is none."""
        row = self.one(sql, params)
        if row is None:
            raise NotFound(missing)
        return row

    def get(self, table: str, ident: int, what: str) -> Row:
        """Row ``ident`` of ``table`` (a constant of a backend, never user input), or NotFound."""
        return self.require(f"SELECT * FROM {table} WHERE id = ?", (ident,), f"{what} {ident} not found")

    def delete(self, table: str, ident: int, *dependents: tuple[str, str]) -> None:
        """Delete row ``ident`` of ``table`` and, first, the rows of each ``(table, column)`` of
        ``dependents`` whose column holds ``ident`` (all tables are constants of a backend)."""
        with self.transaction() as db:
            for dependent, column in dependents:
                db.execute(f"DELETE FROM {dependent} WHERE {column} = ?", (ident,))
            db.execute(f"DELETE FROM {table} WHERE id = ?", (ident,))

    def allocate_ids(self, count: int = 1) -> int:
        """Reserve ``count`` identifiers from the shared sequence; returns the first."""
        with self.transaction() as db:
            first = int(db.execute("SELECT value FROM meta WHERE key = 'next_id'").fetchone()[0])
            db.execute("UPDATE meta SET value = ? WHERE key = 'next_id'", (str(first + count),))
        return first

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def private_folder(path: str | os.PathLike) -> Path:
    """A folder (created when missing, with its parents) readable by its owner only."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_FOLDER)
    os.chmod(path, PRIVATE_FOLDER)
    return path


def write_private(path: str | os.PathLike, data: bytes | BinaryIO) -> Path:
    """Write ``data`` (bytes, or a binary file read to its end in chunks) to a file readable by
    its owner only (an existing file is replaced and tightened)."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    os.fchmod(fd, PRIVATE_FILE)
    with os.fdopen(fd, "wb") as out:
        if isinstance(data, (bytes, bytearray)):
            out.write(data)
        else:
            shutil.copyfileobj(data, out, CHUNK_BYTES)
    return path


@dataclass
class Files:
    """Where the store keeps files: attachments, job data, job folders (a temporary folder,
    removed at :meth:`close`, when the store was given none)."""

    root: Path
    owned: bool = False

    @classmethod
    def at(cls, folder: str | os.PathLike | None) -> Files:
        if folder is None:
            return cls(Path(tempfile.mkdtemp(prefix="mtdp-server-files-")), owned=True)  # 0700
        return cls(private_folder(folder))

    def folder(self, *parts: str | int) -> Path:
        path = self.root.joinpath(*(str(p) for p in parts))
        path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_FOLDER)
        return path

    def save(self, kind: str, ident: int, name: str, data: bytes | BinaryIO) -> Path:
        """Write ``data`` (bytes, or a binary file read to its end in chunks) as ``kind/ident/name``
        (``name``: a :func:`~mtdp_core.server.domain.file_name`), readable by its owner only."""
        return write_private(self.folder(kind, ident) / name, data)

    @staticmethod
    def remove(path: str | os.PathLike) -> None:
        """Remove a file written by :meth:`save` (with its folder)."""
        shutil.rmtree(Path(path).parent, ignore_errors=True)

    def close(self) -> None:
        if self.owned:
            shutil.rmtree(self.root, ignore_errors=True)
