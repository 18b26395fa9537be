"""What people and jobs say about an annotation: its terms (one per user), the terms jobs
suggest (algo annotation terms, with a confidence ``rate``), and reviews (a reviewed copy of
the annotation with the validated terms)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mtdp_core.server.backends.annotations import INSERT_ALGO_TERM, INSERT_ANNOTATION_TERM, AnnotationsBackend
from mtdp_core.server.backends.database import Database
from mtdp_core.server.domain import Check, Row, as_int, now_ms, parse_id_list
from mtdp_core.server.errors import BadRequest, Conflict, NotFound

if TYPE_CHECKING:
    from mtdp_core.server.backends.ontologies import OntologiesBackend
    from mtdp_core.server.backends.projects import ProjectsBackend


@dataclass(eq=False)
class AnnotationTermsBackend:
    db: Database
    annotations: AnnotationsBackend
    ontologies: OntologiesBackend
    projects: ProjectsBackend

    # ------------------------------------------------------------------ people's terms
    def add(self, annotation_id: int, term_id: int, user: Row, *, clear: str | None = None) -> Row:
        """``user``'s term on an annotation; ``clear`` first removes that user's terms (``"user"``)
        or everyone's (``"all"``), as ``clearBefore`` does."""
        annotation = self.annotations.get(annotation_id)
        if annotation["kind"] == "algo":
            raise BadRequest(
                f"Annotation {annotation_id} is an algo annotation: its terms are algo annotation terms "
                "added by a job user"
            )
        self._check_term(annotation, term_id)
        with self.db.transaction() as db:
            if clear == "all":
                db.execute("DELETE FROM annotation_term WHERE annotation_id = ?", (annotation_id,))
            elif clear == "user":
                db.execute(
                    "DELETE FROM annotation_term WHERE annotation_id = ? AND user_id = ?", (annotation_id, user["id"])
                )
            if self._find("annotation_term", annotation_id, term_id, user["id"]):
                raise Conflict(f"Annotation {annotation_id} already has term {term_id} from user {user['username']!r}")
            at_id = self.db.allocate_ids()
            db.execute(INSERT_ANNOTATION_TERM, (at_id, annotation_id, term_id, user["id"], now_ms()))
            db.execute("UPDATE annotation SET updated = ? WHERE id = ?", (now_ms(), annotation_id))
        return self.db.get("annotation_term", at_id, "AnnotationTerm")

    def get(self, annotation_id: int, term_id: int, user_id: int | None = None) -> Row:
        """A user's term on an annotation, else a job's (marked ``algo``, with ``annotation_kind``)."""
        for table in ("annotation_term", "algo_annotation_term"):
            row = self._find(table, annotation_id, term_id, user_id)
            if row is not None:
                if table == "algo_annotation_term":
                    row.update(algo=True, annotation_kind=self.annotations.get(annotation_id)["kind"])
                return row
        raise NotFound(f"AnnotationTerm for annotation {annotation_id} and term {term_id} not found")

    def delete(self, annotation_id: int, term_id: int, user_id: int, *, check: Check | None = None) -> Row:
        """Remove ``user_id``'s term from an annotation (``check`` may refuse the annotation first)."""
        row = self._find("annotation_term", annotation_id, term_id, user_id)
        if row is None:
            raise NotFound(
                f"AnnotationTerm with annotation {annotation_id}, term {term_id} and user {user_id} not found"
            )
        if check is not None:
            check(self.annotations.get(annotation_id))
        self.db.delete("annotation_term", row["id"])
        return row

    def list(self, annotation_id: int, user_id: int | None = None) -> tuple[Row, list[Row]]:
        """The annotation and its terms (algo terms for an algo annotation), optionally one user's."""
        annotation = self.annotations.get(annotation_id)
        table = "algo_annotation_term" if annotation["kind"] == "algo" else "annotation_term"
        sql = f"SELECT * FROM {table} WHERE annotation_id = ?"
        params: list[Any] = [annotation_id]
        if user_id is not None:
            sql += " AND user_id = ?"
            params.append(user_id)
        return annotation, self.db.all(sql + " ORDER BY term_id", params)

    # ------------------------------------------------------------------ jobs' suggestions
    def add_algo(
        self, annotation_id: int, term_id: int, user: Row, *, expected_term: object = None, rate: object = None
    ) -> Row:
        """A job's suggested term (with its confidence ``rate``) on a user or algo annotation."""
        if not user["algo"]:
            raise BadRequest("Only a job user can add an algo annotation term")
        annotation = self.annotations.get(annotation_id)
        self._check_term(annotation, term_id)
        expected = as_int(expected_term, "expectedTerm")
        if expected is not None:
            self.projects.check_terms(annotation["project_id"], [expected])
        rate = 1.0 if rate is None else _rate(rate)
        with self.db.transaction() as db:
            if self._find("algo_annotation_term", annotation_id, term_id, user["id"]):
                raise Conflict(f"Annotation {annotation_id} already has algo term {term_id} from this job")
            aat = self.db.allocate_ids()
            db.execute(INSERT_ALGO_TERM, (aat, annotation_id, term_id, expected, user["id"], rate, now_ms()))
        row = self.db.get("algo_annotation_term", aat, "AlgoAnnotationTerm")
        row["annotation_kind"] = annotation["kind"]
        return row

    def list_algo(self, user_id: int | None = None) -> list[Row]:
        """Every algo annotation term (those of one job user), oldest first."""
        if user_id is None:
            return self.db.all("SELECT * FROM algo_annotation_term ORDER BY id")
        return self.db.all("SELECT * FROM algo_annotation_term WHERE user_id = ? ORDER BY id", (user_id,))

    # ------------------------------------------------------------------ reviews
    def review(self, annotation_id: int, user: Row, terms: object = None) -> Row:
        """Validate an annotation: a reviewed copy with the given terms (or the annotation's)."""
        annotation = self.annotations.get(annotation_id)
        if annotation["kind"] == "reviewed":
            raise BadRequest(f"Annotation {annotation_id} is itself a reviewed annotation")
        if self.reviewed_copy(annotation_id) is not None:
            raise Conflict(f"Annotation {annotation_id} is already reviewed")
        term_ids = list(dict.fromkeys(parse_id_list(terms) or [t["term_id"] for t in annotation["terms"]]))
        self.projects.check_terms(annotation["project_id"], term_ids)
        with self.db.transaction() as db:
            rid = self.db.allocate_ids(1 + len(term_ids))
            created = now_ms()
            columns = "image_id, slice_id, project_id, user_id, location, geometry_compression, area, perimeter, cx, cy"
            columns += ", minx, miny, maxx, maxy"
            db.execute(
                f"INSERT INTO annotation (id, kind, {columns}, parent_id, review_user_id, created)"
                f" SELECT ?, 'reviewed', {columns}, id, ?, ? FROM annotation WHERE id = ?",
                (rid, user["id"], created, annotation_id),
            )
            for offset, tid in enumerate(term_ids, start=1):
                db.execute(INSERT_ANNOTATION_TERM, (rid + offset, rid, tid, user["id"], created))
        return self.annotations.get(rid)

    def reviewed_copy(self, annotation_id: int) -> Row | None:
        """The reviewed copy of an annotation, if it was reviewed."""
        rid = self.db.scalar("SELECT id FROM annotation WHERE parent_id = ? AND kind = 'reviewed'", (annotation_id,))
        return None if rid is None else self.annotations.get(rid)

    def unreview(self, annotation_id: int, *, check: Check | None = None) -> Row:
        """Delete the reviewed copy of an annotation (returned); ``check`` may refuse it first."""
        reviewed = self.reviewed_copy(annotation_id)
        if reviewed is None:
            raise NotFound(f"Annotation {annotation_id} is not reviewed")
        if check is not None:
            check(reviewed)
        return self.annotations.delete(reviewed["id"])

    # ------------------------------------------------------------------ helpers
    def _check_term(self, annotation: Row, term_id: int) -> None:
        self.ontologies.get_term(term_id)
        self.projects.check_terms(annotation["project_id"], [term_id])

    def _find(self, table: str, annotation_id: int, term_id: int, user_id: int | None) -> Row | None:
        sql = f"SELECT * FROM {table} WHERE annotation_id = ? AND term_id = ?"
        params: list[Any] = [annotation_id, term_id]
        if user_id is not None:
            sql += " AND user_id = ?"
            params.append(user_id)
        return self.db.one(sql + " ORDER BY id LIMIT 1", params)


def _rate(value: object) -> float:
    try:
        rate = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BadRequest(f"Invalid rate {value!r}: a number between 0 and 1 is expected") from None
    if not 0.0 <= rate <= 1.0:
        raise BadRequest(f"Invalid rate {rate}: a number between 0 and 1 is expected")
    return rate
