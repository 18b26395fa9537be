"""The Cytomine domain in SQLite (moto's "models"): one backend per domain over one database.

Each backend owns its domain's rules and tables; :class:`CytomineStore` only wires them over
the shared :class:`~.database.Database` (and the folder of stored files)::

    store = CytomineStore("data/cytomine.sqlite3", "data/files")   # or CytomineStore() in memory
    admin = store.users.ensure_admin()
    ontology = store.ontologies.create("cells")
    project = store.projects.create("demo", ontology["id"], admin["id"])
    image = store.images.add("slide.png", project["id"])
    store.annotations.create({"image": image["id"], "location": "POINT (10 10)"}, admin)
    rows, total = store.annotations.list(AnnotationQuery(project=project["id"]))

Backends: ``users`` (and job users, keys), ``ontologies`` (and terms), ``projects``,
``images`` (abstract images, instances, slices), ``annotations`` (and their listings),
``annotation_terms`` (terms, algo terms, reviews), ``meta`` (properties, attached files,
descriptions), ``software`` (and parameters, project links), ``jobs`` (and parameters, job
data), ``imports`` (bulk import). A write that spans backends runs in ``store.transaction()``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator

from mtdp_core.server.backends.annotation_query import AnnotationQuery
from mtdp_core.server.backends.annotation_terms import AnnotationTermsBackend
from mtdp_core.server.backends.annotations import AnnotationsBackend
from mtdp_core.server.backends.database import Database, Files
from mtdp_core.server.backends.images import ImagesBackend
from mtdp_core.server.backends.imports import ImportedImage, ImportsBackend
from mtdp_core.server.backends.jobs import JobsBackend
from mtdp_core.server.backends.meta import MetaBackend
from mtdp_core.server.backends.ontologies import OntologiesBackend
from mtdp_core.server.backends.projects import ProjectsBackend
from mtdp_core.server.backends.software import SoftwareBackend
from mtdp_core.server.backends.users import UsersBackend

__all__ = ["AnnotationQuery", "CytomineStore", "ImportedImage"]


class CytomineStore:
    """The backends of one database (see the module docstring).

    Args:
        database: SQLite file (created when new) or ``":memory:"``.
        files_dir: folder of attached files, job data and (without a data folder) job folders;
            None: a temporary folder removed at :meth:`close`.
    """

    def __init__(self, database: str | os.PathLike = ":memory:", files_dir: str | os.PathLike | None = None) -> None:
        self.db = Database(database)
        self.files = Files.at(files_dir)
        self.ontologies = OntologiesBackend(self.db)
        self.projects = ProjectsBackend(self.db, self.ontologies)
        self.users = UsersBackend(self.db, self.projects)
        self.images = ImagesBackend(self.db, self.projects)
        self.meta = MetaBackend(self.db, self.files)
        self.annotations = AnnotationsBackend(self.db, self.users, self.projects, self.images, self.meta)
        self.annotation_terms = AnnotationTermsBackend(self.db, self.annotations, self.ontologies, self.projects)
        self.software = SoftwareBackend(self.db, self.projects)
        self.jobs = JobsBackend(self.db, self.files, self.users, self.projects, self.software)
        self.imports = ImportsBackend(self.db, self.projects, self.ontologies, self.images)

    @property
    def database(self) -> str:
        return self.db.path

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction around calls to several backends (all or nothing)."""
        with self.db.transaction() as connection:
            yield connection

    def close(self) -> None:
        self.db.close()
        self.files.close()
