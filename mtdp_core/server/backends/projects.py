"""Projects: a name, an ontology, members, and everything attached to them (images,
annotations, jobs).

Rules of the core kept here: project names are unique; the terms an annotation of a project
may carry are those of the project's ontology; deleting a project deletes its images (and so
their annotations), its software links, its properties and its memberships. Members are people
(not job users); some are managers, the creator first; a project keeps at least one manager
once it has one. Who may do what with that is ``api/access.py``'s business.
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
            if user_id is not None:
                self.add_member(pid, user_id, manager=True)  # the creator manages the project
        return self.get(pid)

    def get(self, project_id: int) -> Row:
        return self.db.get("project", project_id, "Project")

    def find_by_name(self, name: str) -> Row | None:
        return self.db.one("SELECT * FROM project WHERE name = ?", (name,))

    def list(
        self,
        *,
        ontology: int | None = None,
        software: int | None = None,
        member: int | None = None,
        among: Sequence[int] | None = None,
    ) -> list[Row]:
        """Every project, or those of an ontology, those a software is added to, those a user is a
        member of; only those ``among`` the given ids when given (None: no restriction)."""
        sql, params = "SELECT p.* FROM project p WHERE 1 = 1", []
        if ontology is not None:
            sql += " AND p.ontology_id = ?"
            params.append(ontology)
        if software is not None:
            sql += " AND p.id IN (SELECT project_id FROM software_project WHERE software_id = ?)"
            params.append(software)
        if member is not None:
            sql += " AND p.id IN (SELECT project_id FROM project_member WHERE user_id = ?)"
            params.append(member)
        rows = self.db.all(sql + " ORDER BY p.id", params)
        if among is not None:
            allowed = set(among)
            rows = [r for r in rows if r["id"] in allowed]
        return rows

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
            self.db.delete("project", project_id, ("software_project", "project_id"), ("project_member", "project_id"))
        return project

    # ------------------------------------------------------------------ members and managers
    def add_member(self, project_id: int, user_id: int, *, manager: bool = False) -> Row:
        """Make a person a member (a manager with ``manager``; an existing manager stays one)."""
        project = self.get(project_id)
        user = self.db.get("sec_user", user_id, "User")
        if user["algo"]:
            raise BadRequest(
                f"User {user['username']!r} is a job user: it acts in its job's project only and cannot be a member"
            )
        with self.db.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO project_member (project_id, user_id, manager, created) VALUES (?, ?, 0, ?)",
                (project["id"], user_id, now_ms()),
            )
            if manager:
                db.execute(
                    "UPDATE project_member SET manager = 1 WHERE project_id = ? AND user_id = ?", (project_id, user_id)
                )
        return self._member(project_id, user_id)

    def remove_manager(self, project_id: int, user_id: int) -> Row:
        """A manager becomes a plain member (refused for the last manager)."""
        member = self._member(project_id, user_id)
        if member["manager"]:
            with self.db.transaction() as db:
                self._check_not_last_manager(project_id, member)
                db.execute(
                    "UPDATE project_member SET manager = 0 WHERE project_id = ? AND user_id = ?", (project_id, user_id)
                )
        return self._member(project_id, user_id)

    def remove_member(self, project_id: int, user_id: int) -> Row:
        """The user leaves the project (refused for its last manager)."""
        member = self._member(project_id, user_id)
        with self.db.transaction() as db:
            if member["manager"]:
                self._check_not_last_manager(project_id, member)
            db.execute("DELETE FROM project_member WHERE project_id = ? AND user_id = ?", (project_id, user_id))
        return member

    def role(self, project_id: int, user_id: int) -> str | None:
        """``"manager"``, ``"member"``, or None for a user who is not a member."""
        manager = self.db.scalar(
            "SELECT manager FROM project_member WHERE project_id = ? AND user_id = ?", (project_id, user_id)
        )
        return None if manager is None else "manager" if manager else "member"

    def members(self, project_id: int, *, managers_only: bool = False) -> list[Row]:
        """The members (user rows with ``manager``: bool), by user id."""
        self.get(project_id)
        rows = self.db.all(
            "SELECT u.*, m.manager FROM project_member m JOIN sec_user u ON u.id = m.user_id"
            " WHERE m.project_id = ?" + (" AND m.manager = 1" if managers_only else "") + " ORDER BY u.id",
            (project_id,),
        )
        for row in rows:
            row["manager"] = bool(row["manager"])
        return rows

    def member_projects(self, user_id: int) -> list[int]:
        """The ids of the projects a user is a member of."""
        return [
            r["project_id"] for r in self.db.all("SELECT project_id FROM project_member WHERE user_id = ?", (user_id,))
        ]

    def _member(self, project_id: int, user_id: int) -> Row:
        self.get(project_id)
        member = self.db.one(
            "SELECT u.username, m.* FROM project_member m JOIN sec_user u ON u.id = m.user_id"
            " WHERE m.project_id = ? AND m.user_id = ?",
            (project_id, user_id),
        )
        if member is None:
            raise NotFound(f"User {user_id} is not a member of project {project_id}")
        member["manager"] = bool(member["manager"])
        return member

    def _check_not_last_manager(self, project_id: int, member: Row) -> None:
        managers = self.db.scalar(
            "SELECT count(*) FROM project_member WHERE project_id = ? AND manager = 1", (project_id,)
        )
        if managers <= 1:
            raise BadRequest(
                f"User {member['username']!r} is the last manager of project {project_id}: make another member "
                "a manager first"
            )

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
