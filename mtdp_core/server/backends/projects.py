"""Projects: a name, an ontology, and everything attached to them (images, annotations, jobs).

Rules of the core kept here: project names are unique; the terms an annotation of a project
may carry are those of the project's ontology; deleting a project deletes its images (and so
their annotations), its software links and its properties.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from mtdp_core.server.backends.database import Database, marks
from mtdp_core.server.backends.images import delete_image_rows
from mtdp_core.server.backends.ontologies import OntologiesBackend
from mtdp_core.server.domain import CLASS_NAMES, Row, as_int, now_ms, require_name
from mtdp_core.server.errors import BadRequest, Conflict, NotFound


@dataclass(eq=False)
class ProjectsBackend:
    db: Database
    ontologies: OntologiesBackend

    def create(self, name: object, ontology_id: object = None, user_id: int | None = None) -> Row:
        name = require_name(name, "project")
        oid = self._ontology(ontology_id)
        with self.db.transaction() as db:
            self._check_unique(name)
            pid = self.db.allocate_ids()
            db.execute(
                "INSERT INTO project (id, name, ontology_id, user_id, created) VALUES (?, ?, ?, ?, ?)",
                (pid, name, oid, user_id, now_ms()),
            )
        return self.get(pid)

    def get(self, project_id: int) -> Row:
        return self.db.get("project", project_id, "Project")

    def find_by_name(self, name: str) -> Row | None:
        return self.db.one("SELECT * FROM project WHERE name = ?", (name,))

    def list(self, *, ontology: int | None = None, software: int | None = None) -> list[Row]:
        """Every project, or those of an ontology, or those a software is added to."""
        if ontology is not None:
            return self.db.all("SELECT * FROM project WHERE ontology_id = ? ORDER BY id", (ontology,))
        if software is not None:
            return self.db.all(
                "SELECT p.* FROM project p JOIN software_project sp ON sp.project_id = p.id"
                " WHERE sp.software_id = ? ORDER BY p.id",
                (software,),
            )
        return self.db.all("SELECT * FROM project ORDER BY id")

    def counts(self, project_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        """Images and annotations (``user``, ``algo``, ``reviewed``) of each project."""
        counts = {pid: {"images": 0, "user": 0, "algo": 0, "reviewed": 0} for pid in project_ids}
        if not project_ids:
            return counts
        where = f"WHERE project_id IN ({marks(len(project_ids))})"
        for r in self.db.all(
            f"SELECT project_id, count(*) AS n FROM image_instance {where} GROUP BY project_id", project_ids
        ):
            counts[r["project_id"]]["images"] = r["n"]
        for r in self.db.all(
            f"SELECT project_id, kind, count(*) AS n FROM annotation {where} GROUP BY project_id, kind", project_ids
        ):
            counts[r["project_id"]][r["kind"]] = r["n"]
        return counts

    def update(self, project_id: int, data: dict[str, Any]) -> Row:
        """PUT: name and ontology."""
        project = self.get(project_id)
        name = require_name(data.get("name", project["name"]), "project")
        oid = self._ontology(data.get("ontology", project["ontology_id"]))
        with self.db.transaction() as db:
            self._check_unique(name, project_id)
            db.execute(
                "UPDATE project SET name = ?, ontology_id = ?, updated = ? WHERE id = ?",
                (name, oid, now_ms(), project_id),
            )
        return self.get(project_id)

    def delete(self, project_id: int) -> Row:
        project = self.get(project_id)
        with self.db.transaction() as db:
            image_ids = [r[0] for r in db.execute("SELECT id FROM image_instance WHERE project_id = ?", (project_id,))]
            delete_image_rows(db, image_ids)
            db.execute(
                "DELETE FROM property WHERE domain_class = ? AND domain_ident = ?", (CLASS_NAMES["project"], project_id)
            )
            self.db.delete("project", project_id, ("software_project", "project_id"))
        return project

    # ------------------------------------------------------------------ the project's ontology
    def terms(self, project_id: int) -> list[Row]:
        """The terms of the project's ontology (none without an ontology)."""
        ontology_id = self.get(project_id)["ontology_id"]
        return [] if ontology_id is None else self.ontologies.list_terms(ontology_id)

    def check_terms(self, project_id: int, term_ids: Iterable[int]) -> None:
        """400 unless every term is in the project's ontology (as the core's AnnotationTerm check)."""
        term_ids = list(term_ids)
        if not term_ids:
            return
        ontology_id = self.get(project_id)["ontology_id"]
        found = self.ontologies.term_ontologies(term_ids)
        for tid in term_ids:
            if tid not in found:
                raise NotFound(f"Term {tid} not found")
            if found[tid] != ontology_id:
                raise BadRequest(
                    f"Term {tid} is not in the ontology of project {project_id}: use a term of ontology {ontology_id}"
                )

    def _ontology(self, ontology_id: object) -> int | None:
        oid = as_int(ontology_id, "ontology")
        if oid is not None:
            self.ontologies.get(oid)
        return oid

    def _check_unique(self, name: str, project_id: int | None = None) -> None:
        if self.db.exists("SELECT 1 FROM project WHERE name = ? AND id IS NOT ?", (name, project_id)):
            raise Conflict(f"Project {name!r} already exists: choose another name")
