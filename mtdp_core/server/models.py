"""Storage and domain logic of the local Cytomine-compatible server (moto's "models").

One SQLite database (a file, so data survives a restart, or ``:memory:`` for tests) holds the
Cytomine domain: users and their API keys, ontologies and terms, projects, images (abstract
images and their instances in projects), annotations (user, algo and reviewed, one table),
annotation terms, algo annotation terms with their rate, properties, attached files,
descriptions, software and software parameters, jobs, job parameters and job data. Files
(attachments, job data) live next to the database, image files where they were imported from
(or copied into the data folder).

Rules follow the real core where the apps and the client can see them: identifiers come from
one sequence shared by every domain (as Cytomine's ``hibernate_sequence``), geometries are
validated and clipped to the image, terms must belong to the project's ontology, a job
gets its own user with its own keys, job progress is 0-100 and status 0-8.

Thread safety: one connection guarded by a re-entrant lock (SQLite's Python binding must not
be used by two threads at once); writes run in ``BEGIN IMMEDIATE`` transactions so another
process (e.g. ``mtdp server import`` while a server runs) can share a database file.
Pixel work (crops) happens outside the lock, in :mod:`mtdp_core.server.imaging`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry.base import BaseGeometry

from mtdp_core.server import geometry as geo
from mtdp_core.server.auth import generate_keys
from mtdp_core.server.errors import BadRequest, Conflict, Forbidden, NotFound
from mtdp_core.server.imaging import image_info, max_zoom_level

logger = logging.getLogger(__name__)

Row = dict[str, Any]

SCHEMA_VERSION = "1"

#: Fully qualified class names, as the Grails core writes them in ``class`` fields.
CLASS_NAMES: dict[str, str] = {
    "user": "be.cytomine.security.User",
    "userjob": "be.cytomine.security.UserJob",
    "project": "be.cytomine.project.Project",
    "ontology": "be.cytomine.ontology.Ontology",
    "term": "be.cytomine.ontology.Term",
    "abstractimage": "be.cytomine.image.AbstractImage",
    "imageinstance": "be.cytomine.image.ImageInstance",
    "sliceinstance": "be.cytomine.image.SliceInstance",
    "userannotation": "be.cytomine.ontology.UserAnnotation",
    "algoannotation": "be.cytomine.ontology.AlgoAnnotation",
    "reviewedannotation": "be.cytomine.ontology.ReviewedAnnotation",
    "annotationterm": "be.cytomine.ontology.AnnotationTerm",
    "algoannotationterm": "be.cytomine.ontology.AlgoAnnotationTerm",
    "property": "be.cytomine.meta.Property",
    "attachedfile": "be.cytomine.meta.AttachedFile",
    "description": "be.cytomine.meta.Description",
    "software": "be.cytomine.processing.Software",
    "softwareparameter": "be.cytomine.processing.SoftwareParameter",
    "softwareproject": "be.cytomine.processing.SoftwareProject",
    "job": "be.cytomine.processing.Job",
    "jobparameter": "be.cytomine.processing.JobParameter",
    "jobdata": "be.cytomine.processing.JobData",
}
#: Annotation kinds stored in the ``annotation`` table and their domain names.
ANNOTATION_KINDS = {"user": "userannotation", "algo": "algoannotation", "reviewed": "reviewedannotation"}

#: Job status codes (Job.groovy).
NOT_LAUNCH, INQUEUE, RUNNING, SUCCESS, FAILED, INDETERMINATE, WAIT, PREVIEWED, KILLED = range(9)
TERMINAL_STATUSES = (SUCCESS, FAILED, INDETERMINATE, KILLED)
PARAMETER_TYPES = ("String", "Number", "Boolean", "Date", "Domain", "ListDomain", "List")

#: A readable palette for terms created by importers (Cytomine wants "#RRGGBB").
TERM_COLORS = (
    "#e6194b",
    "#3cb44b",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#46f0f0",
    "#f032e6",
    "#bcf60c",
    "#fabebe",
    "#008080",
    "#e6beff",
    "#9a6324",
    "#800000",
    "#aaffc3",
    "#808000",
    "#000075",
)

_SCHEMA = """
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
"""


_INSERT_ANNOTATION = (
    "INSERT INTO annotation (id, kind, image_id, slice_id, project_id, user_id, location, geometry_compression, area,"
    " perimeter, cx, cy, minx, miny, maxx, maxy, created) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_ANNOTATION_TERM = (
    "INSERT INTO annotation_term (id, annotation_id, term_id, user_id, created) VALUES (?, ?, ?, ?, ?)"
)


def now_ms() -> int:
    return int(time.time() * 1000)


def parse_id_list(value: object) -> list[int] | None:
    """``"1,2"``, ``"1_2"``, ``[1, 2]`` or ``5`` -> ``[1, 2]``/``[5]``; empty or None -> None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadRequest(f"Invalid identifier list {value!r}")
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        items = [str(v) for v in value]
    else:
        text = str(value).strip()
        if not text or text.lower() == "null":
            return None
        items = text.replace("_", ",").split(",")
    try:
        ids = [int(item) for item in items if str(item).strip()]
    except ValueError:
        raise BadRequest(f"Invalid identifier list {value!r}: use comma-separated integers") from None
    return ids or None


def as_int(value: object, name: str, *, default: int | None = None) -> int | None:
    if value is None or value == "" or (isinstance(value, str) and value.lower() == "null"):
        return default
    if isinstance(value, bool):
        raise BadRequest(f"Invalid {name} {value!r}: an integer is expected")
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        try:
            as_float = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise BadRequest(f"Invalid {name} {value!r}: an integer is expected") from None
        if not as_float.is_integer():
            raise BadRequest(f"Invalid {name} {value!r}: an integer is expected") from None
        return int(as_float)


def as_bool(value: object, default: bool = False) -> bool:
    """Case-insensitive booleans, as the client sends ``True``/``False``."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("true", "1", "yes", "on")


def _domain_key(class_name: str) -> str:
    """``be.cytomine.domain.processing.Job`` / ``be.cytomine.processing.Job`` / ``job`` -> ``job``."""
    return class_name.rsplit(".", 1)[-1].lower().replace("_", "")


@dataclass
class AnnotationQuery:
    """Filters of an annotation listing (the query parameters of ``GET /api/annotation.json``)."""

    kind: str = "user"
    project: int | None = None
    images: list[int] | None = None
    slices: list[int] | None = None
    users: list[int] | None = None
    terms: list[int] | None = None
    no_term: bool = False
    multiple_term: bool = False
    no_algo_term: bool = False
    suggested_terms: list[int] | None = None
    users_for_term_algo: list[int] | None = None
    review_users: list[int] | None = None
    not_reviewed_only: bool = False
    parents: list[int] | None = None
    bbox: BaseGeometry | None = None
    after: int | None = None
    before: int | None = None
    excluded: int | None = None
    with_algo_terms: bool = False  # "showAlgo": one row per algo term on each annotation


@dataclass
class StoreFiles:
    """Where the store keeps files: attachments, job data, copied images, job folders."""

    root: Path

    def folder(self, *parts: str | int) -> Path:
        path = self.root.joinpath(*(str(p) for p in parts))
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass
class ImportedImage:
    """One image to add to a project with its annotations, for :meth:`CytomineStore.bulk_import`."""

    path: Path
    annotations: list[tuple[str, BaseGeometry]] = field(default_factory=list)  # (label, geometry in image coords)


class CytomineStore:
    """The Cytomine domain in SQLite. See the module docstring."""

    def __init__(self, database: str | os.PathLike = ":memory:", files_dir: str | os.PathLike | None = None) -> None:
        self.database = str(database)
        self._lock = threading.RLock()
        self._depth = 0
        if self.database != ":memory:":
            Path(self.database).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.database, check_same_thread=False, isolation_level=None, timeout=30.0)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA foreign_keys = OFF")
        if self.database != ":memory:":
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
        self._owns_files = files_dir is None
        if files_dir is None:
            import tempfile

            files_dir = tempfile.mkdtemp(prefix="mtdp-server-files-")
        self.files = StoreFiles(Path(files_dir))
        with self._lock:
            self._conn.executescript(_SCHEMA)  # idempotent (IF NOT EXISTS); commits by itself
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('next_id', '1')")

    # ------------------------------------------------------------------ plumbing
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

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._conn

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        with self.reading() as db:
            return [dict(r) for r in db.execute(sql, params).fetchall()]

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        with self.reading() as db:
            row = db.execute(sql, params).fetchone()
        return dict(row) if row is not None else None

    def _get(self, table: str, ident: int, what: str) -> Row:
        """Row ``ident`` of ``table`` (a constant of this module, never user input), or NotFound."""
        row = self._one(f"SELECT * FROM {table} WHERE id = ?", (ident,))
        if row is None:
            raise NotFound(f"{what} {ident} not found")
        return row

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self.reading() as db:
            row = db.execute(sql, params).fetchone()
        return row[0] if row is not None else None

    def allocate_ids(self, count: int = 1) -> int:
        """Reserve ``count`` identifiers from the shared sequence; returns the first."""
        with self.transaction() as db:
            first = int(db.execute("SELECT value FROM meta WHERE key = 'next_id'").fetchone()[0])
            db.execute("UPDATE meta SET value = ? WHERE key = 'next_id'", (str(first + count),))
        return first

    def close(self) -> None:
        with self._lock:
            self._conn.close()
        if self._owns_files:
            shutil.rmtree(self.files.root, ignore_errors=True)

    # ------------------------------------------------------------------ users
    def create_user(
        self,
        username: str,
        *,
        firstname: str | None = None,
        lastname: str | None = None,
        email: str | None = None,
        admin: bool = False,
        public_key: str | None = None,
        private_key: str | None = None,
    ) -> Row:
        username = (username or "").strip()
        if not username or any(c.isspace() for c in username):
            raise BadRequest(f"Invalid username {username!r}: use a non-empty name without spaces")
        if (public_key is None) != (private_key is None):
            raise BadRequest("Give both the public and the private key, or neither (new keys are generated)")
        if public_key is None:
            public_key, private_key = generate_keys()
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM sec_user WHERE username = ?", (username,)).fetchone():
                raise Conflict(f"User {username!r} already exists: choose another username")
            if db.execute("SELECT 1 FROM sec_user WHERE public_key = ?", (public_key,)).fetchone():
                raise Conflict("This public key is already used by another user: generate new keys")
            uid = self.allocate_ids()
            db.execute(
                "INSERT INTO sec_user (id, username, firstname, lastname, email, public_key, private_key, is_admin,"
                " algo, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
                (
                    uid,
                    username,
                    firstname or username,
                    lastname or username,
                    email or f"{username}@localhost",
                    public_key,
                    private_key,
                    int(admin),
                    now_ms(),
                ),
            )
        return self.get_user(uid)

    def get_user(self, user_id: int) -> Row:
        return self._get("sec_user", user_id, "User")

    def get_users(self, user_ids: Iterable[int]) -> list[Row]:
        ids = list(user_ids)
        if not ids:
            return []
        return self._all(f"SELECT * FROM sec_user WHERE id IN ({','.join('?' * len(ids))})", ids)

    def find_user_by_public_key(self, public_key: str) -> Row | None:
        return self._one("SELECT * FROM sec_user WHERE public_key = ?", (public_key,))

    def find_user_by_username(self, username: str) -> Row | None:
        return self._one("SELECT * FROM sec_user WHERE username = ?", (username,))

    def list_users(self, *, include_jobs: bool = False, project: int | None = None) -> list[Row]:
        if project is not None:
            self.get_project(project)
            if include_jobs:
                return self._all(
                    "SELECT u.* FROM sec_user u WHERE u.algo = 0"
                    " OR u.job_id IN (SELECT id FROM job WHERE project_id = ?) ORDER BY u.id",
                    (project,),
                )
        sql = "SELECT * FROM sec_user" + ("" if include_jobs else " WHERE algo = 0") + " ORDER BY id"
        return self._all(sql)

    def list_job_users(self, project: int) -> list[Row]:
        self.get_project(project)
        return self._all(
            "SELECT u.* FROM sec_user u JOIN job j ON j.id = u.job_id WHERE j.project_id = ? ORDER BY u.id DESC",
            (project,),
        )

    def set_keys(self, user_id: int, public_key: str, private_key: str) -> Row:
        with self.transaction() as db:
            other = db.execute(
                "SELECT id FROM sec_user WHERE public_key = ? AND id <> ?", (public_key, user_id)
            ).fetchone()
            if other:
                raise Conflict("This public key is already used by another user")
            db.execute(
                "UPDATE sec_user SET public_key = ?, private_key = ?, updated = ? WHERE id = ?",
                (public_key, private_key, now_ms(), user_id),
            )
        return self.get_user(user_id)

    def ensure_admin(self, public_key: str | None = None, private_key: str | None = None) -> Row:
        """The ``admin`` user, created on first start; its keys set when given."""
        with self.transaction():
            admin = self.find_user_by_username("admin")
            if admin is None:
                admin = self.create_user(
                    "admin",
                    firstname="Admin",
                    lastname="Local",
                    admin=True,
                    public_key=public_key,
                    private_key=private_key,
                )
            elif (
                public_key and private_key and (admin["public_key"], admin["private_key"]) != (public_key, private_key)
            ):
                admin = self.set_keys(admin["id"], public_key, private_key)
        return admin

    def create_job_user(self, job: Row, launcher: Row) -> Row:
        public_key, private_key = generate_keys()
        with self.transaction() as db:
            uid = self.allocate_ids()
            username = f"JOB[{launcher['username']}]-{job['id']}"
            db.execute(
                "INSERT INTO sec_user (id, username, firstname, lastname, email, public_key, private_key, is_admin,"
                " algo, job_id, launcher_id, created) VALUES (?, ?, ?, ?, ?, ?, ?, 0, 1, ?, ?, ?)",
                (
                    uid,
                    username,
                    "Job",
                    str(job["id"]),
                    None,
                    public_key,
                    private_key,
                    job["id"],
                    launcher["id"],
                    now_ms(),
                ),
            )
        return self.get_user(uid)

    # ------------------------------------------------------------------ ontologies and terms
    def create_ontology(self, name: str, user_id: int | None = None) -> Row:
        if not isinstance(name, str) or not name.strip():
            raise BadRequest(f"Invalid ontology name {name!r}: give a non-empty name")
        with self.transaction() as db:
            oid = self.allocate_ids()
            db.execute(
                "INSERT INTO ontology (id, name, user_id, created) VALUES (?, ?, ?, ?)",
                (oid, name.strip(), user_id, now_ms()),
            )
        return self.get_ontology(oid)

    def get_ontology(self, ontology_id: int) -> Row:
        return self._get("ontology", ontology_id, "Ontology")

    def list_ontologies(self) -> list[Row]:
        return self._all("SELECT * FROM ontology ORDER BY id")

    def update_ontology(self, ontology_id: int, name: object) -> Row:
        self.get_ontology(ontology_id)
        if not isinstance(name, str) or not name.strip():
            raise BadRequest(f"Invalid ontology name {name!r}: give a non-empty name")
        with self.transaction() as db:
            db.execute("UPDATE ontology SET name = ?, updated = ? WHERE id = ?", (name.strip(), now_ms(), ontology_id))
        return self.get_ontology(ontology_id)

    def delete_ontology(self, ontology_id: int) -> Row:
        row = self.get_ontology(ontology_id)
        with self.transaction() as db:
            used = db.execute("SELECT name FROM project WHERE ontology_id = ?", (ontology_id,)).fetchone()
            if used:
                raise BadRequest(
                    f"Ontology {ontology_id} is still used by project {used[0]!r}: delete the project first"
                )
            db.execute("DELETE FROM term WHERE ontology_id = ?", (ontology_id,))
            db.execute("DELETE FROM ontology WHERE id = ?", (ontology_id,))
        return row

    def create_term(
        self, name: object, ontology_id: object, color: object = None, comment: object = None, parent: object = None
    ) -> Row:
        if not isinstance(name, str) or not name.strip():
            raise BadRequest(f"Invalid term name {name!r}: give a non-empty name")
        oid = as_int(ontology_id, "ontology")
        if oid is None:
            raise BadRequest("A term needs an ontology: give 'ontology' (its id)")
        self.get_ontology(oid)
        color = color if isinstance(color, str) and color.startswith("#") else None
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM term WHERE ontology_id = ? AND name = ?", (oid, name.strip())).fetchone():
                raise Conflict(f"Term {name.strip()!r} already exists in ontology {oid}")
            if color is None:
                count = db.execute("SELECT count(*) FROM term WHERE ontology_id = ?", (oid,)).fetchone()[0]
                color = TERM_COLORS[count % len(TERM_COLORS)]
            tid = self.allocate_ids()
            db.execute(
                "INSERT INTO term (id, name, ontology_id, color, comment, parent_id, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    tid,
                    name.strip(),
                    oid,
                    color,
                    comment if isinstance(comment, str) else None,
                    as_int(parent, "parent"),
                    now_ms(),
                ),
            )
        return self.get_term(tid)

    def get_term(self, term_id: int) -> Row:
        return self._get("term", term_id, "Term")

    def list_terms(self, *, ontology: int | None = None, project: int | None = None) -> list[Row]:
        if project is not None:
            ontology_id = self.get_project(project)["ontology_id"]
            if ontology_id is None:
                return []
            ontology = ontology_id
        if ontology is not None:
            self.get_ontology(ontology)
            return self._all("SELECT * FROM term WHERE ontology_id = ? ORDER BY id", (ontology,))
        return self._all("SELECT * FROM term ORDER BY id")

    def update_term(self, term_id: int, data: dict[str, Any]) -> Row:
        term = self.get_term(term_id)
        name = data.get("name", term["name"])
        if not isinstance(name, str) or not name.strip():
            raise BadRequest(f"Invalid term name {name!r}: give a non-empty name")
        color = data.get("color", term["color"])
        with self.transaction() as db:
            clash = db.execute(
                "SELECT 1 FROM term WHERE ontology_id = ? AND name = ? AND id <> ?",
                (term["ontology_id"], name.strip(), term_id),
            ).fetchone()
            if clash:
                raise Conflict(f"Term {name.strip()!r} already exists in ontology {term['ontology_id']}")
            db.execute(
                "UPDATE term SET name = ?, color = ?, comment = ?, updated = ? WHERE id = ?",
                (name.strip(), color, data.get("comment", term["comment"]), now_ms(), term_id),
            )
        return self.get_term(term_id)

    def delete_term(self, term_id: int) -> Row:
        term = self.get_term(term_id)
        with self.transaction() as db:
            db.execute("DELETE FROM annotation_term WHERE term_id = ?", (term_id,))
            db.execute("DELETE FROM algo_annotation_term WHERE term_id = ?", (term_id,))
            db.execute("DELETE FROM term WHERE id = ?", (term_id,))
        return term

    def check_terms_in_project(self, term_ids: Iterable[int], project_id: int) -> None:
        """400 unless every term is in the project's ontology (as the core's AnnotationTerm check)."""
        term_ids = list(term_ids)
        if not term_ids:
            return
        ontology_id = self.get_project(project_id)["ontology_id"]
        marks = ",".join("?" * len(term_ids))
        found = {
            r["id"]: r["ontology_id"]
            for r in self._all(f"SELECT id, ontology_id FROM term WHERE id IN ({marks})", term_ids)
        }
        for tid in term_ids:
            if tid not in found:
                raise NotFound(f"Term {tid} not found")
            if found[tid] != ontology_id:
                raise BadRequest(
                    f"Term {tid} is not in the ontology of project {project_id}: use a term of ontology {ontology_id}"
                )

    # ------------------------------------------------------------------ projects
    def create_project(self, name: object, ontology_id: object = None, user_id: int | None = None) -> Row:
        if not isinstance(name, str) or not name.strip():
            raise BadRequest(f"Invalid project name {name!r}: give a non-empty name")
        oid = as_int(ontology_id, "ontology")
        if oid is not None:
            self.get_ontology(oid)
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM project WHERE name = ?", (name.strip(),)).fetchone():
                raise Conflict(f"Project {name.strip()!r} already exists: choose another name")
            pid = self.allocate_ids()
            db.execute(
                "INSERT INTO project (id, name, ontology_id, user_id, created) VALUES (?, ?, ?, ?, ?)",
                (pid, name.strip(), oid, user_id, now_ms()),
            )
        return self.get_project(pid)

    def get_project(self, project_id: int) -> Row:
        return self._get("project", project_id, "Project")

    def find_project_by_name(self, name: str) -> Row | None:
        return self._one("SELECT * FROM project WHERE name = ?", (name,))

    def list_projects(self, *, ontology: int | None = None, software: int | None = None) -> list[Row]:
        if ontology is not None:
            return self._all("SELECT * FROM project WHERE ontology_id = ? ORDER BY id", (ontology,))
        if software is not None:
            return self._all(
                "SELECT p.* FROM project p JOIN software_project sp ON sp.project_id = p.id"
                " WHERE sp.software_id = ? ORDER BY p.id",
                (software,),
            )
        return self._all("SELECT * FROM project ORDER BY id")

    def project_counts(self, project_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        """numberOfImages / numberOfAnnotations / numberOfJobAnnotations / numberOfReviewedAnnotations."""
        counts = {pid: {"images": 0, "user": 0, "algo": 0, "reviewed": 0} for pid in project_ids}
        if not project_ids:
            return counts
        marks = ",".join("?" * len(project_ids))
        for r in self._all(
            f"SELECT project_id, count(*) AS n FROM image_instance WHERE project_id IN ({marks}) GROUP BY project_id",
            project_ids,
        ):
            counts[r["project_id"]]["images"] = r["n"]
        for r in self._all(
            f"SELECT project_id, kind, count(*) AS n FROM annotation WHERE project_id IN ({marks})"
            " GROUP BY project_id, kind",
            project_ids,
        ):
            counts[r["project_id"]][r["kind"]] = r["n"]
        return counts

    def update_project(self, project_id: int, data: dict[str, Any]) -> Row:
        project = self.get_project(project_id)
        name = data.get("name", project["name"])
        if not isinstance(name, str) or not name.strip():
            raise BadRequest(f"Invalid project name {name!r}: give a non-empty name")
        oid = as_int(data.get("ontology", project["ontology_id"]), "ontology")
        if oid is not None:
            self.get_ontology(oid)
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM project WHERE name = ? AND id <> ?", (name.strip(), project_id)).fetchone():
                raise Conflict(f"Project {name.strip()!r} already exists: choose another name")
            db.execute(
                "UPDATE project SET name = ?, ontology_id = ?, updated = ? WHERE id = ?",
                (name.strip(), oid, now_ms(), project_id),
            )
        return self.get_project(project_id)

    def delete_project(self, project_id: int) -> Row:
        project = self.get_project(project_id)
        with self.transaction() as db:
            for (image_id,) in db.execute(
                "SELECT id FROM image_instance WHERE project_id = ?", (project_id,)
            ).fetchall():
                self.delete_image(image_id)
            db.execute("DELETE FROM software_project WHERE project_id = ?", (project_id,))
            db.execute(
                "DELETE FROM property WHERE domain_class = ? AND domain_ident = ?", (CLASS_NAMES["project"], project_id)
            )
            db.execute("DELETE FROM project WHERE id = ?", (project_id,))
        return project

    # ------------------------------------------------------------------ images
    _IMAGE_SELECT = (
        "SELECT ii.id, ii.base_image_id, ii.project_id, ii.user_id, ii.instance_filename, ii.slice_id, ii.created,"
        " ii.updated, ai.path, ai.original_filename, ai.width, ai.height, ai.samples, ai.mime"
        " FROM image_instance ii JOIN abstract_image ai ON ai.id = ii.base_image_id"
    )

    def add_abstract_image(
        self, path: str | os.PathLike, *, user_id: int | None = None, original_filename: str | None = None
    ) -> Row:
        """The abstract image of a file (created on first use, by resolved path)."""
        path = Path(path).resolve()
        if not path.is_file():
            raise NotFound(f"Image file {path} does not exist")
        existing = self._one("SELECT * FROM abstract_image WHERE path = ?", (str(path),))
        if existing:
            return existing
        width, height, samples, mime = image_info(path)
        with self.transaction() as db:
            aid = self.allocate_ids()
            db.execute(
                "INSERT INTO abstract_image (id, path, original_filename, width, height, samples, mime, user_id,"
                " created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (aid, str(path), original_filename or path.name, width, height, samples, mime, user_id, now_ms()),
            )
        return self.get_abstract_image(aid)

    def get_abstract_image(self, abstract_id: int) -> Row:
        return self._get("abstract_image", abstract_id, "AbstractImage")

    def list_abstract_images(self) -> list[Row]:
        return self._all("SELECT * FROM abstract_image ORDER BY id")

    def add_image_instance(
        self, abstract_id: int, project_id: int, user_id: int | None = None, instance_filename: str | None = None
    ) -> Row:
        abstract = self.get_abstract_image(abstract_id)
        self.get_project(project_id)
        with self.transaction() as db:
            if db.execute(
                "SELECT 1 FROM image_instance WHERE base_image_id = ? AND project_id = ?", (abstract_id, project_id)
            ).fetchone():
                raise Conflict(f"Image {abstract['original_filename']!r} is already in project {project_id}")
            iid = self.allocate_ids(2)
            db.execute(
                "INSERT INTO image_instance (id, base_image_id, project_id, user_id, instance_filename, slice_id,"
                " created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    iid,
                    abstract_id,
                    project_id,
                    user_id,
                    instance_filename or abstract["original_filename"],
                    iid + 1,
                    now_ms(),
                ),
            )
        return self.get_image(iid)

    def add_image(self, path: str | os.PathLike, project_id: int, user_id: int | None = None) -> Row:
        """Add an image file to a project (its abstract image is created when new)."""
        abstract = self.add_abstract_image(path, user_id=user_id)
        return self.add_image_instance(abstract["id"], project_id, user_id)

    def get_image(self, image_id: int) -> Row:
        row = self._one(self._IMAGE_SELECT + " WHERE ii.id = ?", (image_id,))
        if row is None:
            raise NotFound(f"ImageInstance {image_id} not found")
        return row

    def get_images(self, image_ids: Iterable[int]) -> list[Row]:
        ids = list(image_ids)
        rows: list[Row] = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows += self._all(self._IMAGE_SELECT + f" WHERE ii.id IN ({','.join('?' * len(chunk))})", chunk)
        return rows

    def get_image_by_slice(self, slice_id: int) -> Row:
        row = self._one(self._IMAGE_SELECT + " WHERE ii.slice_id = ?", (slice_id,))
        if row is None:
            raise NotFound(f"SliceInstance {slice_id} not found")
        return row

    def list_images(self, project_id: int) -> list[Row]:
        self.get_project(project_id)
        return self._all(
            self._IMAGE_SELECT + " WHERE ii.project_id = ? ORDER BY ii.created DESC, ii.id DESC", (project_id,)
        )

    def image_counts(self, image_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        counts = {iid: {"user": 0, "algo": 0, "reviewed": 0} for iid in image_ids}
        if image_ids:
            marks = ",".join("?" * len(image_ids))
            for r in self._all(
                f"SELECT image_id, kind, count(*) AS n FROM annotation WHERE image_id IN ({marks})"
                " GROUP BY image_id, kind",
                image_ids,
            ):
                counts[r["image_id"]][r["kind"]] = r["n"]
        return counts

    def delete_image(self, image_id: int) -> Row:
        image = self.get_image(image_id)
        with self.transaction() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM annotation WHERE image_id = ?", (image_id,)).fetchall()]
            self._delete_annotation_rows(db, ids)
            db.execute("DELETE FROM image_instance WHERE id = ?", (image_id,))
        return image

    @staticmethod
    def image_zoom(image: Row) -> int:
        return max_zoom_level(image["width"], image["height"])

    # ------------------------------------------------------------------ annotations
    def _geometry_for_image(self, location: object, image: Row) -> geo.GeometryStats:
        geometry = geo.parse_wkt(location)
        geometry = geo.clip_to_image(geometry, image["width"], image["height"])
        return geo.stats(geometry)

    def create_annotation(self, data: dict[str, Any], user: Row) -> Row:
        """One annotation from a client body; algo when the caller is a job user (as the core)."""
        with self.transaction():
            aid = self._insert_annotation(data, user)
        return self.get_annotation(aid)

    def create_annotations(self, items: Sequence[Any], user: Row) -> tuple[list[int], list[str]]:
        """Bulk create (a JSON array): (created ids, one message per refused item)."""
        created: list[int] = []
        errors: list[str] = []
        with self.transaction():
            for position, item in enumerate(items):
                if not isinstance(item, dict):
                    errors.append(f"item {position}: an annotation object is expected")
                    continue
                try:
                    created.append(self._insert_annotation(item, user))
                except (BadRequest, NotFound, Forbidden, Conflict) as exc:
                    errors.append(f"item {position}: {exc.message}")
        return created, errors

    def _insert_annotation(self, data: dict[str, Any], user: Row) -> int:
        kind = "algo" if user["algo"] else "user"
        slice_id = as_int(data.get("slice"), "slice")
        image_id = as_int(data.get("image"), "image")
        if slice_id is not None:
            image = self.get_image_by_slice(slice_id)
        elif image_id is not None:
            image = self.get_image(image_id)
        else:
            raise BadRequest("Cannot retrieve slice or image: give 'image' (an image instance id)")
        owner = user["id"]
        if data.get("user") not in (None, "") and as_int(data.get("user"), "user") != user["id"]:
            if not user["is_admin"]:
                raise Forbidden("Only an administrator can create an annotation for another user")
            owner = self.get_user(as_int(data["user"], "user"))["id"]  # type: ignore[arg-type]
        shape = self._geometry_for_image(data.get("location"), image)
        term_ids = (parse_id_list(data.get("term")) or []) + (parse_id_list(data.get("terms")) or [])
        term_ids = list(dict.fromkeys(term_ids))
        self.check_terms_in_project(term_ids, image["project_id"])
        rate = data.get("rate")
        rate = float(rate) if isinstance(rate, (int, float)) and not isinstance(rate, bool) else None
        with self.transaction() as db:
            aid = self.allocate_ids(1 + len(term_ids))
            created = now_ms()
            db.execute(_INSERT_ANNOTATION, _annotation_values(aid, kind, image, owner, shape, created))
            for offset, tid in enumerate(term_ids, start=1):
                if kind == "algo":
                    db.execute(
                        "INSERT INTO algo_annotation_term (id, annotation_id, term_id, user_id, rate, created)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (aid + offset, aid, tid, owner, rate if rate is not None else 1.0, created),
                    )
                else:
                    db.execute(_INSERT_ANNOTATION_TERM, (aid + offset, aid, tid, owner, created))
            properties = {}
            for key in ("property", "properties"):
                if isinstance(data.get(key), dict):
                    properties.update(data[key])
            for key, value in properties.items():
                self.add_property(CLASS_NAMES[ANNOTATION_KINDS[kind]], aid, str(key), value)
        return aid

    def get_annotation(self, annotation_id: int, kind: str | None = None) -> Row:
        row = self._one(
            "SELECT a.*, (SELECT count(*) FROM annotation r WHERE r.parent_id = a.id AND r.kind = 'reviewed')"
            " AS count_reviewed FROM annotation a WHERE a.id = ?",
            (annotation_id,),
        )
        if row is None or (kind is not None and row["kind"] != kind):
            name = {"user": "UserAnnotation", "algo": "AlgoAnnotation", "reviewed": "ReviewedAnnotation"}.get(
                kind or "", "Annotation"
            )
            raise NotFound(f"{name} {annotation_id} not found")
        row["terms"] = self.annotation_terms(row)
        return row

    def annotation_terms(self, annotation: Row) -> list[Row]:
        """The terms of an annotation: [{id, term_id, user_id, rate?}] from the table of its kind."""
        if annotation["kind"] == "algo":
            return self._all(
                "SELECT id, term_id, user_id, rate, expected_term_id FROM algo_annotation_term"
                " WHERE annotation_id = ? ORDER BY term_id",
                (annotation["id"],),
            )
        return self._all(
            "SELECT id, term_id, user_id FROM annotation_term WHERE annotation_id = ? ORDER BY term_id",
            (annotation["id"],),
        )

    @staticmethod
    def _check_can_edit(annotation: Row, user: Row) -> None:
        """People may edit any annotation (a core's CLASSIC project mode); a job user only its own, so
        that an app cannot alter the annotations it learns from."""
        if user["algo"] and annotation["user_id"] != user["id"]:
            raise Forbidden(
                f"Job user {user['username']!r} cannot modify annotation {annotation['id']}: a job can "
                "only modify the annotations it created (add algo annotation terms instead)"
            )

    def update_annotation(self, annotation_id: int, data: dict[str, Any], user: Row) -> Row:
        """PUT: the location changes (clipped and validated again); terms are not touched (as the core)."""
        annotation = self.get_annotation(annotation_id)
        self._check_can_edit(annotation, user)
        location = data.get("location", annotation["location"])
        image = self.get_image(annotation["image_id"])
        shape = self._geometry_for_image(location, image)
        with self.transaction() as db:
            db.execute(
                "UPDATE annotation SET location = ?, area = ?, perimeter = ?, cx = ?, cy = ?, minx = ?, miny = ?,"
                " maxx = ?, maxy = ?, updated = ? WHERE id = ?",
                (
                    shape.wkt,
                    shape.area,
                    shape.perimeter,
                    shape.centroid_x,
                    shape.centroid_y,
                    shape.minx,
                    shape.miny,
                    shape.maxx,
                    shape.maxy,
                    now_ms(),
                    annotation_id,
                ),
            )
        return self.get_annotation(annotation_id)

    def delete_annotation(self, annotation_id: int, user: Row, kind: str | None = None) -> Row:
        annotation = self.get_annotation(annotation_id, kind)
        self._check_can_edit(annotation, user)
        with self.transaction() as db:
            self._delete_annotation_rows(db, [annotation_id])
        return annotation

    def _delete_annotation_rows(self, db: sqlite3.Connection, ids: list[int]) -> None:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            db.execute(f"DELETE FROM annotation_term WHERE annotation_id IN ({marks})", chunk)
            db.execute(f"DELETE FROM algo_annotation_term WHERE annotation_id IN ({marks})", chunk)
            db.execute(
                f"DELETE FROM property WHERE domain_ident IN ({marks}) AND domain_class LIKE '%Annotation'", chunk
            )
            db.execute(f"UPDATE annotation SET parent_id = NULL WHERE parent_id IN ({marks})", chunk)
            db.execute(f"DELETE FROM annotation WHERE id IN ({marks})", chunk)

    def list_annotations(self, query: AnnotationQuery, offset: int = 0, max_: int = 0) -> tuple[list[Row], int]:
        """Annotations matching ``query``, newest first (``ORDER BY id DESC`` as the core), with
        their term ids; one SQL query (plus a count when paginated), whatever the number of rows."""
        where, params = self._annotation_where(query)
        term_table = "algo_annotation_term" if query.kind == "algo" else "annotation_term"
        select = (
            "SELECT a.*, (SELECT group_concat(t.term_id || ':' || t.id || ':' || t.user_id, ',') FROM"
            f" (SELECT * FROM {term_table} t WHERE t.annotation_id = a.id ORDER BY t.term_id) t) AS term_rows,"
            " (SELECT count(*) FROM annotation r WHERE r.parent_id = a.id AND r.kind = 'reviewed') AS count_reviewed"
        )
        sql = f"{select} FROM annotation a WHERE {where} ORDER BY a.id DESC"
        paginate_in_sql = max_ > 0 and query.bbox is None and not query.with_algo_terms
        if paginate_in_sql:
            total = int(self._scalar(f"SELECT count(*) FROM annotation a WHERE {where}", params))
            rows = self._all(sql + " LIMIT ? OFFSET ?", [*params, max_, offset])
        else:
            rows = self._all(sql, params)
        if query.bbox is not None:
            prepared = query.bbox
            shapely.prepare(prepared)
            rows = [r for r in rows if prepared.intersects(shapely.from_wkt(r["location"]))]
        for row in rows:
            row["terms"] = [
                {"term_id": int(t), "id": int(i), "user_id": int(u)}
                for t, i, u in (part.split(":") for part in (row.pop("term_rows") or "").split(",") if part)
            ]
        if query.with_algo_terms:
            rows = self._expand_algo_terms(rows, query)
        if not paginate_in_sql:
            total = len(rows)
            rows = rows[offset : offset + max_] if max_ > 0 else rows[offset:]
        return rows, total

    def _expand_algo_terms(self, rows: list[Row], query: AnnotationQuery) -> list[Row]:
        """The core's ``showAlgo`` group: one row per algo term suggested on each annotation."""
        if not rows:
            return rows
        ids = [r["id"] for r in rows]
        suggestions: dict[int, list[Row]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT * FROM algo_annotation_term WHERE annotation_id IN ({marks})"
            params: list[Any] = list(chunk)
            if query.users_for_term_algo:
                sql += f" AND user_id IN ({','.join('?' * len(query.users_for_term_algo))})"
                params += query.users_for_term_algo
            if query.suggested_terms:
                sql += f" AND term_id IN ({','.join('?' * len(query.suggested_terms))})"
                params += query.suggested_terms
            for s in self._all(sql, params):
                suggestions.setdefault(s["annotation_id"], []).append(s)
        expanded = []
        for row in rows:
            for s in suggestions.get(row["id"], []):
                expanded.append({**row, "algo_term": s})
        expanded.sort(key=lambda r: -(r["algo_term"]["rate"] or 0.0))  # "ORDER BY aat.rate desc"
        return expanded

    def _annotation_where(self, q: AnnotationQuery) -> tuple[str, list[Any]]:
        clauses = ["a.kind = ?"]
        params: list[Any] = [q.kind]

        def ids_clause(column: str, ids: list[int] | None) -> None:
            if ids:
                clauses.append(f"{column} IN ({','.join('?' * len(ids))})")
                params.extend(ids)

        if q.project is not None:
            clauses.append("a.project_id = ?")
            params.append(q.project)
        ids_clause("a.image_id", q.images)
        ids_clause("a.slice_id", q.slices)
        ids_clause("a.user_id", q.users)
        ids_clause("a.review_user_id", q.review_users)
        ids_clause("a.parent_id", q.parents)
        term_table = "algo_annotation_term" if q.kind == "algo" else "annotation_term"
        if q.terms:
            marks = ",".join("?" * len(q.terms))
            clause = f"EXISTS (SELECT 1 FROM {term_table} t WHERE t.annotation_id = a.id AND t.term_id IN ({marks}))"
            if q.no_term:
                clause = f"({clause} OR NOT EXISTS (SELECT 1 FROM {term_table} t WHERE t.annotation_id = a.id))"
            clauses.append(clause)
            params.extend(q.terms)
        elif q.no_term:
            clauses.append(f"NOT EXISTS (SELECT 1 FROM {term_table} t WHERE t.annotation_id = a.id)")
        if q.multiple_term:
            clauses.append(f"(SELECT count(DISTINCT t.term_id) FROM {term_table} t WHERE t.annotation_id = a.id) > 1")
        if q.no_algo_term:
            clauses.append("NOT EXISTS (SELECT 1 FROM algo_annotation_term s WHERE s.annotation_id = a.id)")
        if q.suggested_terms or q.users_for_term_algo:
            sub = "SELECT 1 FROM algo_annotation_term s WHERE s.annotation_id = a.id"
            if q.suggested_terms:
                sub += f" AND s.term_id IN ({','.join('?' * len(q.suggested_terms))})"
                params.extend(q.suggested_terms)
            if q.users_for_term_algo:
                sub += f" AND s.user_id IN ({','.join('?' * len(q.users_for_term_algo))})"
                params.extend(q.users_for_term_algo)
            clauses.append(f"EXISTS ({sub})")
        if q.not_reviewed_only:
            clauses.append("NOT EXISTS (SELECT 1 FROM annotation r WHERE r.parent_id = a.id AND r.kind = 'reviewed')")
        if q.bbox is not None:
            minx, miny, maxx, maxy = q.bbox.bounds
            clauses.append("a.maxx >= ? AND a.minx <= ? AND a.maxy >= ? AND a.miny <= ?")
            params.extend([minx, maxx, miny, maxy])
        if q.after is not None:
            clauses.append("a.created > ?")
            params.append(q.after)
        if q.before is not None:
            clauses.append("a.created < ?")
            params.append(q.before)
        if q.excluded is not None:
            clauses.append("a.id <> ?")
            params.append(q.excluded)
        return " AND ".join(clauses), params

    # ---- annotation terms
    def add_annotation_term(
        self, annotation_id: int, term_id: int, user: Row, *, clear_before: bool = False, clear_for_all: bool = False
    ) -> Row:
        """A user's term on an annotation (``clearBefore`` removes that user's, or everyone's, first)."""
        annotation = self.get_annotation(annotation_id)
        if annotation["kind"] == "algo":
            raise BadRequest(
                f"Annotation {annotation_id} is an algo annotation: its terms are algo annotation terms "
                "added by a job user"
            )
        self.get_term(term_id)
        self.check_terms_in_project([term_id], annotation["project_id"])
        with self.transaction() as db:
            if clear_before:
                if clear_for_all:
                    db.execute("DELETE FROM annotation_term WHERE annotation_id = ?", (annotation_id,))
                else:
                    db.execute(
                        "DELETE FROM annotation_term WHERE annotation_id = ? AND user_id = ?",
                        (annotation_id, user["id"]),
                    )
            exists = db.execute(
                "SELECT 1 FROM annotation_term WHERE annotation_id = ? AND term_id = ? AND user_id = ?",
                (annotation_id, term_id, user["id"]),
            ).fetchone()
            if exists:
                raise Conflict(f"Annotation {annotation_id} already has term {term_id} from user {user['username']!r}")
            at_id = self.allocate_ids()
            db.execute(
                _INSERT_ANNOTATION_TERM,
                (at_id, annotation_id, term_id, user["id"], now_ms()),
            )
            db.execute("UPDATE annotation SET updated = ? WHERE id = ?", (now_ms(), annotation_id))
        return self._one("SELECT * FROM annotation_term WHERE id = ?", (at_id,))  # type: ignore[return-value]

    def get_annotation_term(self, annotation_id: int, term_id: int, user_id: int | None = None) -> Row:
        sql = "SELECT * FROM annotation_term WHERE annotation_id = ? AND term_id = ?"
        params: list[Any] = [annotation_id, term_id]
        if user_id is not None:
            sql += " AND user_id = ?"
            params.append(user_id)
        row = self._one(sql + " ORDER BY id LIMIT 1", params)
        if row is None:
            algo = self._one(
                "SELECT * FROM algo_annotation_term WHERE annotation_id = ? AND term_id = ?"
                + (" AND user_id = ?" if user_id is not None else "")
                + " ORDER BY id LIMIT 1",
                params,
            )
            if algo is not None:
                algo["algo"] = True
                return algo
            raise NotFound(f"AnnotationTerm for annotation {annotation_id} and term {term_id} not found")
        return row

    def delete_annotation_term(self, annotation_id: int, term_id: int, user: Row, user_id: int | None = None) -> Row:
        if user["algo"]:
            raise BadRequest("A job user cannot delete a user's term on an annotation")
        target = user_id if user_id is not None else user["id"]
        if target != user["id"] and not user["is_admin"]:
            raise Forbidden("Only an administrator can delete another user's term")
        row = self._one(
            "SELECT * FROM annotation_term WHERE annotation_id = ? AND term_id = ? AND user_id = ?",
            (annotation_id, term_id, target),
        )
        if row is None:
            raise NotFound(
                f"AnnotationTerm with annotation {annotation_id}, term {term_id} and user {target} not found"
            )
        with self.transaction() as db:
            db.execute("DELETE FROM annotation_term WHERE id = ?", (row["id"],))
        return row

    def add_algo_annotation_term(
        self, annotation_id: int, term_id: int, user: Row, *, expected_term: object = None, rate: object = None
    ) -> Row:
        """A job's suggested term (with its confidence ``rate``) on a user or algo annotation."""
        if not user["algo"]:
            raise BadRequest("Only a job user can add an algo annotation term")
        annotation = self.get_annotation(annotation_id)
        self.get_term(term_id)
        self.check_terms_in_project([term_id], annotation["project_id"])
        expected = as_int(expected_term, "expectedTerm")
        if expected is not None:
            self.check_terms_in_project([expected], annotation["project_id"])
        if rate is not None:
            try:
                rate = float(rate)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise BadRequest(f"Invalid rate {rate!r}: a number between 0 and 1 is expected") from None
            if not 0.0 <= rate <= 1.0:
                raise BadRequest(f"Invalid rate {rate}: a number between 0 and 1 is expected")
        with self.transaction() as db:
            exists = db.execute(
                "SELECT 1 FROM algo_annotation_term WHERE annotation_id = ? AND term_id = ? AND user_id = ?",
                (annotation_id, term_id, user["id"]),
            ).fetchone()
            if exists:
                raise Conflict(f"Annotation {annotation_id} already has algo term {term_id} from this job")
            aat = self.allocate_ids()
            db.execute(
                "INSERT INTO algo_annotation_term (id, annotation_id, term_id, expected_term_id, user_id, rate,"
                " created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (aat, annotation_id, term_id, expected, user["id"], 1.0 if rate is None else rate, now_ms()),
            )
        row = self._one("SELECT * FROM algo_annotation_term WHERE id = ?", (aat,))
        assert row is not None
        row["annotation_kind"] = annotation["kind"]
        return row

    def list_annotation_term_rows(self, annotation_id: int, user_id: int | None = None) -> list[Row]:
        annotation = self.get_annotation(annotation_id)
        table = "algo_annotation_term" if annotation["kind"] == "algo" else "annotation_term"
        sql = f"SELECT * FROM {table} WHERE annotation_id = ?"
        params: list[Any] = [annotation_id]
        if user_id is not None:
            sql += " AND user_id = ?"
            params.append(user_id)
        return self._all(sql + " ORDER BY term_id", params)

    # ---- review
    def review_annotation(self, annotation_id: int, user: Row, terms: object = None) -> Row:
        """Validate an annotation: a reviewed copy with the given terms (or the annotation's)."""
        annotation = self.get_annotation(annotation_id)
        if annotation["kind"] == "reviewed":
            raise BadRequest(f"Annotation {annotation_id} is itself a reviewed annotation")
        if self._scalar("SELECT 1 FROM annotation WHERE parent_id = ? AND kind = 'reviewed'", (annotation_id,)):
            raise Conflict(f"Annotation {annotation_id} is already reviewed")
        term_ids = parse_id_list(terms) or [t["term_id"] for t in annotation["terms"]]
        term_ids = list(dict.fromkeys(term_ids))
        self.check_terms_in_project(term_ids, annotation["project_id"])
        with self.transaction() as db:
            rid = self.allocate_ids(1 + len(term_ids))
            created = now_ms()
            db.execute(
                "INSERT INTO annotation (id, kind, image_id, slice_id, project_id, user_id, location,"
                " geometry_compression, area, perimeter, cx, cy, minx, miny, maxx, maxy, parent_id, review_user_id,"
                " created)"
                " SELECT ?, 'reviewed', image_id, slice_id, project_id, user_id, location, geometry_compression, area,"
                " perimeter, cx, cy, minx, miny, maxx, maxy, id, ?, ? FROM annotation WHERE id = ?",
                (rid, user["id"], created, annotation_id),
            )
            for offset, tid in enumerate(term_ids, start=1):
                db.execute(
                    _INSERT_ANNOTATION_TERM,
                    (rid + offset, rid, tid, user["id"], created),
                )
        return self.get_annotation(rid)

    def unreview_annotation(self, annotation_id: int, user: Row) -> Row:
        reviewed = self._one("SELECT id FROM annotation WHERE parent_id = ? AND kind = 'reviewed'", (annotation_id,))
        if reviewed is None:
            raise NotFound(f"Annotation {annotation_id} is not reviewed")
        return self.delete_annotation(reviewed["id"], user)

    # ------------------------------------------------------------------ domain objects (property, files)
    def resolve_domain(self, class_name: str, ident: int) -> str:
        """The canonical class name of an existing domain object; 404 when it does not exist."""
        key = _domain_key(class_name)
        checks = {
            "project": "SELECT 1 FROM project WHERE id = ?",
            "ontology": "SELECT 1 FROM ontology WHERE id = ?",
            "term": "SELECT 1 FROM term WHERE id = ?",
            "imageinstance": "SELECT 1 FROM image_instance WHERE id = ?",
            "abstractimage": "SELECT 1 FROM abstract_image WHERE id = ?",
            "software": "SELECT 1 FROM software WHERE id = ?",
            "softwareparameter": "SELECT 1 FROM software_parameter WHERE id = ?",
            "job": "SELECT 1 FROM job WHERE id = ?",
            "jobdata": "SELECT 1 FROM job_data WHERE id = ?",
        }
        if key in ("annotation", "annotationdomain", "userannotation", "algoannotation", "reviewedannotation"):
            row = self._one("SELECT kind FROM annotation WHERE id = ?", (ident,))
            if row is None:
                raise NotFound(f"Annotation {ident} not found")
            return CLASS_NAMES[ANNOTATION_KINDS[row["kind"]]]
        if key in ("user", "secuser", "userjob"):
            user = self.get_user(ident)
            return CLASS_NAMES["userjob" if user["algo"] else "user"]
        if key not in checks:
            raise BadRequest(
                f"Unsupported domain class {class_name!r}: use a project, image, annotation, job, software, "
                "term, ontology or user"
            )
        if self._scalar(checks[key], (ident,)) is None:
            raise NotFound(f"{class_name.rsplit('.', 1)[-1]} {ident} not found")
        return CLASS_NAMES[key]

    def add_property(self, class_name: str, ident: int, key: object, value: object) -> Row:
        canonical = self.resolve_domain(class_name, ident)
        if not isinstance(key, str) or not key.strip():
            raise BadRequest(f"Invalid property key {key!r}: give a non-empty key")
        value = (
            value
            if value is None or isinstance(value, str)
            else json.dumps(value)
            if isinstance(value, (dict, list))
            else str(value)
        )
        with self.transaction() as db:
            if db.execute(
                "SELECT 1 FROM property WHERE domain_class = ? AND domain_ident = ? AND key = ?",
                (canonical, ident, key),
            ).fetchone():
                raise Conflict(f"Property {key!r} already exists on {canonical.rsplit('.', 1)[-1]} {ident}: update it")
            pid = self.allocate_ids()
            db.execute(
                "INSERT INTO property (id, domain_class, domain_ident, key, value, created) VALUES (?, ?, ?, ?, ?, ?)",
                (pid, canonical, ident, key, value, now_ms()),
            )
        return self.get_property(pid)

    def get_property(self, property_id: int) -> Row:
        return self._get("property", property_id, "Property")

    def find_property(self, class_name: str, ident: int, key: str) -> Row:
        canonical = self.resolve_domain(class_name, ident)
        row = self._one(
            "SELECT * FROM property WHERE domain_class = ? AND domain_ident = ? AND key = ?", (canonical, ident, key)
        )
        if row is None:
            raise NotFound(f"Property {key!r} not found on {canonical.rsplit('.', 1)[-1]} {ident}")
        return row

    def list_properties(self, class_name: str, ident: int) -> list[Row]:
        canonical = self.resolve_domain(class_name, ident)
        return self._all(
            "SELECT * FROM property WHERE domain_class = ? AND domain_ident = ? ORDER BY id", (canonical, ident)
        )

    def update_property(self, property_id: int, data: dict[str, Any]) -> Row:
        prop = self.get_property(property_id)
        key = data.get("key", prop["key"])
        value = data.get("value", prop["value"])
        if not isinstance(key, str) or not key.strip():
            raise BadRequest(f"Invalid property key {key!r}")
        with self.transaction() as db:
            clash = db.execute(
                "SELECT 1 FROM property WHERE domain_class = ? AND domain_ident = ? AND key = ? AND id <> ?",
                (prop["domain_class"], prop["domain_ident"], key, property_id),
            ).fetchone()
            if clash:
                raise Conflict(f"Property {key!r} already exists on this object")
            db.execute(
                "UPDATE property SET key = ?, value = ?, updated = ? WHERE id = ?",
                (key, None if value is None else str(value), now_ms(), property_id),
            )
        return self.get_property(property_id)

    def delete_property(self, property_id: int) -> Row:
        prop = self.get_property(property_id)
        with self.transaction() as db:
            db.execute("DELETE FROM property WHERE id = ?", (property_id,))
        return prop

    def add_attached_file(self, class_name: str, ident: int, filename: str, data: bytes, key: str | None = None) -> Row:
        canonical = self.resolve_domain(class_name, ident)
        name = os.path.basename(filename.replace("\\", "/")) or "file"
        fid = self.allocate_ids()
        folder = self.files.folder("attachedfiles", fid)
        (folder / name).write_bytes(data)
        with self.transaction() as db:
            db.execute(
                "INSERT INTO attached_file (id, domain_class, domain_ident, filename, storage, size, key, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (fid, canonical, ident, name, str(folder / name), len(data), key, now_ms()),
            )
        return self.get_attached_file(fid)

    def get_attached_file(self, file_id: int) -> Row:
        return self._get("attached_file", file_id, "AttachedFile")

    def list_attached_files(self, class_name: str | None = None, ident: int | None = None) -> list[Row]:
        if class_name is None:
            return self._all("SELECT * FROM attached_file ORDER BY id")
        canonical = self.resolve_domain(class_name, ident)  # type: ignore[arg-type]
        return self._all(
            "SELECT * FROM attached_file WHERE domain_class = ? AND domain_ident = ? ORDER BY id", (canonical, ident)
        )

    def delete_attached_file(self, file_id: int) -> Row:
        row = self.get_attached_file(file_id)
        with self.transaction() as db:
            db.execute("DELETE FROM attached_file WHERE id = ?", (file_id,))
        shutil.rmtree(Path(row["storage"]).parent, ignore_errors=True)
        return row

    def get_description(self, class_name: str, ident: int) -> Row:
        canonical = self.resolve_domain(class_name, ident)
        row = self._one("SELECT * FROM description WHERE domain_class = ? AND domain_ident = ?", (canonical, ident))
        if row is None:
            raise NotFound(f"Description of {canonical.rsplit('.', 1)[-1]} {ident} not found")
        return row

    def set_description(self, class_name: str, ident: int, data: object) -> Row:
        canonical = self.resolve_domain(class_name, ident)
        text = "" if data is None else str(data)
        with self.transaction() as db:
            row = db.execute(
                "SELECT id FROM description WHERE domain_class = ? AND domain_ident = ?", (canonical, ident)
            ).fetchone()
            if row:
                db.execute("UPDATE description SET data = ?, updated = ? WHERE id = ?", (text, now_ms(), row[0]))
            else:
                db.execute(
                    "INSERT INTO description (id, domain_class, domain_ident, data, created) VALUES (?, ?, ?, ?, ?)",
                    (self.allocate_ids(), canonical, ident, text, now_ms()),
                )
        return self.get_description(canonical, ident)

    def delete_description(self, class_name: str, ident: int) -> Row:
        row = self.get_description(class_name, ident)
        with self.transaction() as db:
            db.execute("DELETE FROM description WHERE id = ?", (row["id"],))
        return row

    # ------------------------------------------------------------------ software
    def create_software(self, data: dict[str, Any]) -> Row:
        name = data.get("name")
        if not isinstance(name, str) or not name.strip():
            raise BadRequest(f"Invalid software name {name!r}: give a non-empty name")
        with self.transaction() as db:
            sid = self.allocate_ids()
            db.execute(
                "INSERT INTO software (id, name, app, software_version, execute_command, pulling_command, command_line,"
                " container_image, image_type, local_command, descriptor, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    sid,
                    name.strip(),
                    data.get("app"),
                    data.get("softwareVersion"),
                    data.get("executeCommand"),
                    data.get("pullingCommand"),
                    data.get("commandLine"),
                    data.get("containerImage"),
                    data.get("imageType"),
                    _json_or_none(data.get("localCommand")),
                    _json_or_none(data.get("descriptor")),
                    now_ms(),
                ),
            )
        return self.get_software(sid)

    def get_software(self, software_id: int) -> Row:
        row = self._one("SELECT * FROM software WHERE id = ?", (software_id,))
        if row is None:
            raise NotFound(f"Software {software_id} not found")
        return _decode_software(row)

    def find_software(self, name: str, version: str | None = None) -> Row | None:
        """By name (or by the descriptor's file stem, e.g. ``svm_train``), newest non-deprecated first."""
        if version is None:
            row = self._one(
                "SELECT * FROM software WHERE (name = ? OR app = ?) ORDER BY deprecated, id DESC LIMIT 1", (name, name)
            )
        else:
            row = self._one(
                "SELECT * FROM software WHERE name = ? AND software_version = ? ORDER BY id DESC LIMIT 1",
                (name, version),
            )
        return _decode_software(row) if row else None

    def list_software(self, project: int | None = None) -> list[Row]:
        if project is not None:
            self.get_project(project)
            rows = self._all(
                "SELECT s.* FROM software s JOIN software_project sp ON sp.software_id = s.id"
                " WHERE sp.project_id = ? ORDER BY s.id",
                (project,),
            )
        else:
            rows = self._all("SELECT * FROM software ORDER BY id")
        return [_decode_software(r) for r in rows]

    def update_software(self, software_id: int, data: dict[str, Any]) -> Row:
        software = self.get_software(software_id)
        columns = {
            "name": "name",
            "app": "app",
            "softwareVersion": "software_version",
            "executeCommand": "execute_command",
            "pullingCommand": "pulling_command",
            "deprecated": "deprecated",
            "commandLine": "command_line",
            "containerImage": "container_image",
            "imageType": "image_type",
            "localCommand": "local_command",
            "descriptor": "descriptor",
        }
        updates = {}
        for key, column in columns.items():
            if key in data:
                value = data[key]
                if key == "deprecated":
                    value = int(as_bool(value))
                elif key in ("localCommand", "descriptor"):
                    value = _json_or_none(value)
                updates[column] = value
        if "name" in updates and (not isinstance(updates["name"], str) or not updates["name"].strip()):
            raise BadRequest(f"Invalid software name {updates['name']!r}")
        if updates:
            sets = ", ".join(f"{c} = ?" for c in updates)
            with self.transaction() as db:
                db.execute(
                    f"UPDATE software SET {sets}, updated = ? WHERE id = ?", [*updates.values(), now_ms(), software_id]
                )
        return self.get_software(software["id"])

    def delete_software(self, software_id: int) -> Row:
        software = self.get_software(software_id)
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM job WHERE software_id = ?", (software_id,)).fetchone():
                raise BadRequest(f"Software {software_id} has jobs: deprecate it instead of deleting it")
            db.execute("DELETE FROM software_parameter WHERE software_id = ?", (software_id,))
            db.execute("DELETE FROM software_project WHERE software_id = ?", (software_id,))
            db.execute("DELETE FROM software WHERE id = ?", (software_id,))
        return software

    def software_job_counts(self, software_id: int) -> dict[int, int]:
        return {
            r["status"]: r["n"]
            for r in self._all(
                "SELECT status, count(*) AS n FROM job WHERE software_id = ? GROUP BY status", (software_id,)
            )
        }

    def add_software_parameter(self, data: dict[str, Any]) -> Row:
        sid = as_int(data.get("software"), "software")
        if sid is None:
            raise BadRequest("A software parameter needs 'software' (its id)")
        self.get_software(sid)
        name = data.get("name")
        if not isinstance(name, str) or not name.strip():
            raise BadRequest(f"Invalid parameter name {name!r}")
        ptype = _normalise_type(data.get("type"))
        with self.transaction() as db:
            if db.execute(
                "SELECT 1 FROM software_parameter WHERE software_id = ? AND name = ?", (sid, name)
            ).fetchone():
                raise Conflict(f"Software {sid} already has a parameter {name!r}")
            pid = self.allocate_ids()
            db.execute(
                "INSERT INTO software_parameter (id, software_id, name, type, default_value, required, idx,"
                " set_by_server, server_parameter, human_name, value_key, command_line_flag, uri, uri_print, uri_sort,"
                " created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    pid,
                    sid,
                    name,
                    ptype,
                    _default_to_text(data.get("defaultValue", data.get("defaultParamValue"))),
                    int(as_bool(data.get("required"))),
                    as_int(data.get("index"), "index", default=0),
                    int(as_bool(data.get("setByServer"))),
                    int(as_bool(data.get("serverParameter"))),
                    data.get("humanName") or name,
                    data.get("valueKey") or f"[{name.upper()}]",
                    data.get("commandLineFlag") or "",
                    data.get("uri"),
                    data.get("uriPrintAttribut"),
                    data.get("uriSortAttribut"),
                    now_ms(),
                ),
            )
        return self.get_software_parameter(pid)

    def get_software_parameter(self, parameter_id: int) -> Row:
        return self._get("software_parameter", parameter_id, "SoftwareParameter")

    def list_software_parameters(
        self, software_id: int, *, with_set_by_server: bool = True, server_parameters: bool | None = None
    ) -> list[Row]:
        self.get_software(software_id)
        sql = "SELECT * FROM software_parameter WHERE software_id = ?"
        if not with_set_by_server:
            sql += " AND set_by_server = 0"
        if server_parameters is not None:
            sql += f" AND server_parameter = {int(server_parameters)}"
        return self._all(sql + " ORDER BY idx, id", (software_id,))

    def update_software_parameter(self, parameter_id: int, data: dict[str, Any]) -> Row:
        param = self.get_software_parameter(parameter_id)
        merged = {
            "name": data.get("name", param["name"]),
            "type": _normalise_type(data.get("type", param["type"])),
            "default_value": _default_to_text(
                data.get("defaultValue", data.get("defaultParamValue", param["default_value"]))
            ),
            "required": int(as_bool(data.get("required", param["required"]))),
            "idx": as_int(data.get("index", param["idx"]), "index", default=0),
            "set_by_server": int(as_bool(data.get("setByServer", param["set_by_server"]))),
            "server_parameter": int(as_bool(data.get("serverParameter", param["server_parameter"]))),
            "human_name": data.get("humanName", param["human_name"]),
            "value_key": data.get("valueKey", param["value_key"]),
            "command_line_flag": data.get("commandLineFlag", param["command_line_flag"]) or "",
            "uri": data.get("uri", param["uri"]),
            "uri_print": data.get("uriPrintAttribut", param["uri_print"]),
            "uri_sort": data.get("uriSortAttribut", param["uri_sort"]),
        }
        sets = ", ".join(f"{c} = ?" for c in merged)
        with self.transaction() as db:
            db.execute(
                f"UPDATE software_parameter SET {sets}, updated = ? WHERE id = ?",
                [*merged.values(), now_ms(), parameter_id],
            )
        return self.get_software_parameter(parameter_id)

    def delete_software_parameter(self, parameter_id: int) -> Row:
        param = self.get_software_parameter(parameter_id)
        with self.transaction() as db:
            db.execute("DELETE FROM software_parameter WHERE id = ?", (parameter_id,))
        return param

    def add_software_project(self, software_id: int, project_id: int) -> Row:
        self.get_software(software_id)
        self.get_project(project_id)
        with self.transaction() as db:
            row = db.execute(
                "SELECT id FROM software_project WHERE software_id = ? AND project_id = ?", (software_id, project_id)
            ).fetchone()
            if row:
                raise Conflict(f"Software {software_id} is already in project {project_id}")
            spid = self.allocate_ids()
            db.execute(
                "INSERT INTO software_project (id, software_id, project_id, created) VALUES (?, ?, ?, ?)",
                (spid, software_id, project_id, now_ms()),
            )
        return self.get_software_project(spid)

    def ensure_software_project(self, software_id: int, project_id: int) -> None:
        if not self._scalar(
            "SELECT 1 FROM software_project WHERE software_id = ? AND project_id = ?", (software_id, project_id)
        ):
            self.add_software_project(software_id, project_id)

    def get_software_project(self, sp_id: int) -> Row:
        return self._get("software_project", sp_id, "SoftwareProject")

    def list_software_projects(self, project_id: int) -> list[Row]:
        self.get_project(project_id)
        return self._all("SELECT * FROM software_project WHERE project_id = ? ORDER BY id", (project_id,))

    def delete_software_project(self, sp_id: int) -> Row:
        row = self.get_software_project(sp_id)
        with self.transaction() as db:
            db.execute("DELETE FROM software_project WHERE id = ?", (sp_id,))
        return row

    # ------------------------------------------------------------------ jobs
    def create_job(
        self, project_id: object, software_id: object, launcher: Row, parameters: Iterable[tuple[int, object]] = ()
    ) -> tuple[Row, Row]:
        """A job, its own user (with its own keys) and its parameters, as the core's JobService.add."""
        pid = as_int(project_id, "project")
        sid = as_int(software_id, "software")
        if pid is None or sid is None:
            raise BadRequest("A job needs 'project' and 'software' (their ids)")
        self.get_project(pid)
        software = self.get_software(sid)
        if launcher["algo"]:
            raise Forbidden("A job user cannot launch another job")
        with self.transaction() as db:
            number = 1 + int(
                db.execute(
                    "SELECT coalesce(max(number), 0) FROM job WHERE software_id = ? AND project_id = ?", (sid, pid)
                ).fetchone()[0]
            )
            jid = self.allocate_ids()
            db.execute(
                "INSERT INTO job (id, software_id, project_id, number, status, progress, created)"
                " VALUES (?, ?, ?, ?, 0, 0, ?)",
                (jid, sid, pid, number, now_ms()),
            )
            job = self.get_job(jid)
            user_job = self.create_job_user(job, launcher)
            for parameter_id, value in parameters:
                self.add_job_parameter(jid, parameter_id, value)
        logger.info("job %d created (software %s, project %d, job user %d)", jid, software["name"], pid, user_job["id"])
        return self.get_job(jid), user_job

    def get_job(self, job_id: int) -> Row:
        return self._get("job", job_id, "Job")

    def job_user(self, job_id: int) -> Row | None:
        return self._one("SELECT * FROM sec_user WHERE job_id = ?", (job_id,))

    def list_jobs(self, *, project: int | None = None, software: int | None = None) -> list[Row]:
        sql = "SELECT * FROM job WHERE 1 = 1"
        params: list[Any] = []
        if project is not None:
            sql += " AND project_id = ?"
            params.append(project)
        if software is not None:
            sql += " AND software_id = ?"
            params.append(software)
        return self._all(sql + " ORDER BY id DESC", params)

    def update_job(self, job_id: int, data: dict[str, Any], user: Row | None = None) -> Row:
        """PUT job: status (0-8), progress (0-100), statusComment, rate, dataDeleted, favorite."""
        job = self.get_job(job_id)
        if user is not None and user["algo"] and user["job_id"] != job_id:
            raise Forbidden(f"Job user {user['username']!r} cannot update job {job_id}")
        status = as_int(data.get("status", job["status"]), "status")
        if status is None or not 0 <= status <= 8:
            raise BadRequest(f"Invalid job status {data.get('status')!r}: use 0 to 8 (2 running, 3 success, 4 failed)")
        raw_progress = data.get("progress", job["progress"])
        try:
            progress = int(float(raw_progress)) if raw_progress is not None else 0
        except (TypeError, ValueError):
            raise BadRequest(f"Invalid job progress {raw_progress!r}: use a number from 0 to 100") from None
        if not 0 <= progress <= 100:
            raise BadRequest(f"Invalid job progress {raw_progress!r}: use a number from 0 to 100")
        comment = data.get("statusComment", job["status_comment"])
        rate = data.get("rate", job["rate"])
        try:
            rate = None if rate is None or rate == -1 else float(rate)
        except (TypeError, ValueError):
            raise BadRequest(f"Invalid job rate {rate!r}: a number is expected") from None
        with self.transaction() as db:
            db.execute(
                "UPDATE job SET status = ?, progress = ?, status_comment = ?, rate = ?, data_deleted = ?, favorite = ?,"
                " updated = ? WHERE id = ?",
                (
                    status,
                    progress,
                    None if comment is None else str(comment),
                    rate,
                    int(as_bool(data.get("dataDeleted", job["data_deleted"]))),
                    int(as_bool(data.get("favorite", job["favorite"]))),
                    now_ms(),
                    job_id,
                ),
            )
        return self.get_job(job_id)

    def set_job_status(self, job_id: int, status: int, comment: str | None = None, progress: int | None = None) -> Row:
        data: dict[str, Any] = {"status": status}
        if comment is not None:
            data["statusComment"] = comment
        if progress is not None:
            data["progress"] = progress
        return self.update_job(job_id, data)

    def delete_job(self, job_id: int) -> Row:
        job = self.get_job(job_id)
        with self.transaction() as db:
            db.execute("DELETE FROM job_parameter WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM job_data WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM job WHERE id = ?", (job_id,))
        return job

    def add_job_parameter(self, job_id: object, software_parameter_id: object, value: object) -> Row:
        jid = as_int(job_id, "job")
        spid = as_int(software_parameter_id, "softwareParameter")
        if jid is None or spid is None:
            raise BadRequest("A job parameter needs 'job' and 'softwareParameter' (their ids)")
        job = self.get_job(jid)
        param = self.get_software_parameter(spid)
        if param["software_id"] != job["software_id"]:
            raise BadRequest(f"Software parameter {spid} does not belong to the software of job {jid}")
        text = _value_to_text(value)
        with self.transaction() as db:
            row = db.execute(
                "SELECT id FROM job_parameter WHERE job_id = ? AND software_parameter_id = ?", (jid, spid)
            ).fetchone()
            if row:
                raise Conflict(f"Job {jid} already has a value for parameter {param['name']!r}")
            jpid = self.allocate_ids()
            db.execute(
                "INSERT INTO job_parameter (id, job_id, software_parameter_id, value, created) VALUES (?, ?, ?, ?, ?)",
                (jpid, jid, spid, text, now_ms()),
            )
        return self.get_job_parameter(jpid)

    def get_job_parameter(self, jp_id: int) -> Row:
        row = self._one(
            "SELECT jp.*, sp.name, sp.human_name, sp.type, sp.idx, sp.uri, sp.uri_print, sp.uri_sort"
            " FROM job_parameter jp JOIN software_parameter sp ON sp.id = jp.software_parameter_id WHERE jp.id = ?",
            (jp_id,),
        )
        if row is None:
            raise NotFound(f"JobParameter {jp_id} not found")
        return row

    def list_job_parameters(self, job_id: int) -> list[Row]:
        self.get_job(job_id)
        return self._all(
            "SELECT jp.*, sp.name, sp.human_name, sp.type, sp.idx, sp.uri, sp.uri_print, sp.uri_sort"
            " FROM job_parameter jp JOIN software_parameter sp ON sp.id = jp.software_parameter_id"
            " WHERE jp.job_id = ? ORDER BY jp.created, jp.id",
            (job_id,),
        )

    def set_job_parameter(self, job_id: int, software_parameter_id: int, value: object) -> None:
        """Insert or replace a job parameter (used when the server fills set-by-server values)."""
        with self.transaction() as db:
            db.execute(
                "DELETE FROM job_parameter WHERE job_id = ? AND software_parameter_id = ?",
                (job_id, software_parameter_id),
            )
            db.execute(
                "INSERT INTO job_parameter (id, job_id, software_parameter_id, value, created) VALUES (?, ?, ?, ?, ?)",
                (self.allocate_ids(), job_id, software_parameter_id, _value_to_text(value), now_ms()),
            )

    def create_job_data(self, job_id: object, key: object, filename: object) -> Row:
        jid = as_int(job_id, "job")
        if jid is None:
            raise BadRequest("Job data needs 'job' (its id)")
        self.get_job(jid)
        with self.transaction() as db:
            did = self.allocate_ids()
            db.execute(
                "INSERT INTO job_data (id, job_id, key, filename, size, created) VALUES (?, ?, ?, ?, 0, ?)",
                (
                    did,
                    jid,
                    None if key is None else str(key),
                    None if filename is None else os.path.basename(str(filename)),
                    now_ms(),
                ),
            )
        return self.get_job_data(did)

    def get_job_data(self, data_id: int) -> Row:
        return self._get("job_data", data_id, "JobData")

    def list_job_data(self, job_id: int) -> list[Row]:
        self.get_job(job_id)
        return self._all("SELECT * FROM job_data WHERE job_id = ? ORDER BY id", (job_id,))

    def upload_job_data(self, data_id: int, filename: str, data: bytes) -> Row:
        row = self.get_job_data(data_id)
        name = row["filename"] or os.path.basename(filename.replace("\\", "/")) or "data"
        folder = self.files.folder("jobdata", data_id)
        (folder / name).write_bytes(data)
        with self.transaction() as db:
            db.execute(
                "UPDATE job_data SET storage = ?, size = ?, filename = ?, updated = ? WHERE id = ?",
                (str(folder / name), len(data), name, now_ms(), data_id),
            )
        return self.get_job_data(data_id)

    def delete_job_data(self, data_id: int) -> Row:
        row = self.get_job_data(data_id)
        with self.transaction() as db:
            db.execute("DELETE FROM job_data WHERE id = ?", (data_id,))
        if row["storage"]:
            shutil.rmtree(Path(row["storage"]).parent, ignore_errors=True)
        return row

    # ------------------------------------------------------------------ bulk import
    def bulk_import(
        self, project_id: int, images: Sequence[ImportedImage], user: Row, *, skip_existing: bool = True
    ) -> dict[str, int]:
        """Add images and their annotations to a project in one transaction (importers).

        Labels become terms of the project's ontology (created when missing). Geometries are in
        image coordinates (top-left origin) and are converted to Cytomine's. Images already in the
        project are skipped (so an import can be re-run) unless ``skip_existing`` is false.
        """
        project = self.get_project(project_id)
        if project["ontology_id"] is None:
            raise BadRequest(f"Project {project['name']!r} has no ontology: give it one before importing annotations")
        summary = {"images": 0, "skipped_images": 0, "annotations": 0, "refused_annotations": 0, "terms": 0}
        with self.transaction() as db:
            terms = {r["name"]: r["id"] for r in self.list_terms(ontology=project["ontology_id"])}
            for item in images:
                abstract = self.add_abstract_image(item.path, user_id=user["id"])
                present = db.execute(
                    "SELECT id FROM image_instance WHERE base_image_id = ? AND project_id = ?",
                    (abstract["id"], project_id),
                ).fetchone()
                if present and skip_existing:
                    summary["skipped_images"] += 1
                    continue
                image = self.add_image_instance(abstract["id"], project_id, user["id"])
                summary["images"] += 1
                rows = []
                for label, geometry in item.annotations:
                    if label not in terms:
                        terms[label] = self.create_term(label, project["ontology_id"])["id"]
                        summary["terms"] += 1
                    try:
                        shape = geo.stats(
                            geo.clip_to_image(
                                geo.image_to_cytomine(geometry, image["height"]), image["width"], image["height"]
                            )
                        )
                    except BadRequest as exc:
                        logger.warning("%s: annotation %r refused: %s", item.path.name, label, exc.message)
                        summary["refused_annotations"] += 1
                        continue
                    rows.append((shape, terms[label]))
                if not rows:
                    continue
                first = self.allocate_ids(2 * len(rows))
                created = now_ms()
                db.executemany(
                    _INSERT_ANNOTATION,
                    [
                        _annotation_values(first + 2 * k, "user", image, user["id"], s, created)
                        for k, (s, _) in enumerate(rows)
                    ],
                )
                db.executemany(
                    _INSERT_ANNOTATION_TERM,
                    [(first + 2 * k + 1, first + 2 * k, tid, user["id"], created) for k, (_, tid) in enumerate(rows)],
                )
                summary["annotations"] += len(rows)
        return summary


def _annotation_values(aid: int, kind: str, image: Row, user_id: int, shape: geo.GeometryStats, created: int) -> tuple:
    """The values of :data:`_INSERT_ANNOTATION` for one annotation."""
    return (
        aid,
        kind,
        image["id"],
        image["slice_id"],
        image["project_id"],
        user_id,
        shape.wkt,
        shape.area,
        shape.perimeter,
        shape.centroid_x,
        shape.centroid_y,
        shape.minx,
        shape.miny,
        shape.maxx,
        shape.maxy,
        created,
    )


def _json_or_none(value: object) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else json.dumps(value)


def _decode_software(row: Row) -> Row:
    for key in ("local_command", "descriptor"):
        if row.get(key):
            try:
                row[key] = json.loads(row[key])
            except (TypeError, ValueError):
                pass
    return row


def _normalise_type(value: object) -> str:
    """The router's normalisation: lower-case, capitalise, ``Listdomain`` -> ``ListDomain``."""
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"Invalid parameter type {value!r}: use one of {', '.join(PARAMETER_TYPES)}")
    normalised = value.strip().lower().capitalize()
    normalised = "ListDomain" if normalised == "Listdomain" else normalised
    if normalised not in PARAMETER_TYPES:
        raise BadRequest(f"Invalid parameter type {value!r}: use one of {', '.join(PARAMETER_TYPES)}")
    return normalised


def _value_to_text(value: object) -> str | None:
    """A parameter value as the core stores it (a string; booleans as Java prints them)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_value_to_text(v) or "" for v in value)
    return str(value)


_default_to_text = _value_to_text
