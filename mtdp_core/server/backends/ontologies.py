"""Ontologies and their terms (a term's name is unique in its ontology)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mtdp_core.server.backends.database import Database, marks
from mtdp_core.server.domain import Row, as_int, now_ms, require_name
from mtdp_core.server.errors import BadRequest, Conflict

#: A readable palette for terms created without a colour (Cytomine wants "#RRGGBB").
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


@dataclass(eq=False)
class OntologiesBackend:
    db: Database

    # ------------------------------------------------------------------ ontologies
    def create(self, name: object, user_id: int | None = None) -> Row:
        name = require_name(name, "ontology")
        with self.db.transaction() as db:
            oid = self.db.allocate_ids()
            db.execute(
                "INSERT INTO ontology (id, name, user_id, created) VALUES (?, ?, ?, ?)", (oid, name, user_id, now_ms())
            )
        return self.get(oid)

    def get(self, ontology_id: int) -> Row:
        return self.db.get("ontology", ontology_id, "Ontology")

    def list(self) -> list[Row]:
        return self.db.all("SELECT * FROM ontology ORDER BY id")

    def rename(self, ontology_id: int, name: object) -> Row:
        self.get(ontology_id)
        name = require_name(name, "ontology")
        with self.db.transaction() as db:
            db.execute("UPDATE ontology SET name = ?, updated = ? WHERE id = ?", (name, now_ms(), ontology_id))
        return self.get(ontology_id)

    def delete(self, ontology_id: int) -> Row:
        """Delete an ontology and its terms; refused while a project uses it."""
        row = self.get(ontology_id)
        with self.db.transaction() as db:
            used = db.execute("SELECT name FROM project WHERE ontology_id = ?", (ontology_id,)).fetchone()
            if used:
                raise BadRequest(
                    f"Ontology {ontology_id} is still used by project {used[0]!r}: delete the project first"
                )
            self.db.delete("ontology", ontology_id, ("term", "ontology_id"))
        return row

    # ------------------------------------------------------------------ terms
    def create_term(
        self, name: object, ontology_id: object, color: object = None, comment: object = None, parent: object = None
    ) -> Row:
        name = require_name(name, "term")
        oid = as_int(ontology_id, "ontology")
        if oid is None:
            raise BadRequest("A term needs an ontology: give 'ontology' (its id)")
        self.get(oid)
        color = color if isinstance(color, str) and color.startswith("#") else None
        with self.db.transaction() as db:
            if db.execute("SELECT 1 FROM term WHERE ontology_id = ? AND name = ?", (oid, name)).fetchone():
                raise Conflict(f"Term {name!r} already exists in ontology {oid}")
            if color is None:
                count = db.execute("SELECT count(*) FROM term WHERE ontology_id = ?", (oid,)).fetchone()[0]
                color = TERM_COLORS[count % len(TERM_COLORS)]
            tid = self.db.allocate_ids()
            db.execute(
                "INSERT INTO term (id, name, ontology_id, color, comment, parent_id, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    tid,
                    name,
                    oid,
                    color,
                    comment if isinstance(comment, str) else None,
                    as_int(parent, "parent"),
                    now_ms(),
                ),
            )
        return self.get_term(tid)

    def get_term(self, term_id: int) -> Row:
        return self.db.get("term", term_id, "Term")

    def list_terms(self, ontology: int | None = None) -> list[Row]:
        """The terms of ``ontology`` (all terms when None)."""
        if ontology is not None:
            self.get(ontology)
            return self.db.all("SELECT * FROM term WHERE ontology_id = ? ORDER BY id", (ontology,))
        return self.db.all("SELECT * FROM term ORDER BY id")

    def term_ontologies(self, term_ids: list[int]) -> dict[int, int]:
        """term id -> its ontology id, for the terms that exist."""
        rows = self.db.all(f"SELECT id, ontology_id FROM term WHERE id IN ({marks(len(term_ids))})", term_ids)
        return {r["id"]: r["ontology_id"] for r in rows}

    def update_term(self, term_id: int, data: dict[str, Any]) -> Row:
        term = self.get_term(term_id)
        name = require_name(data.get("name", term["name"]), "term")
        with self.db.transaction() as db:
            clash = db.execute(
                "SELECT 1 FROM term WHERE ontology_id = ? AND name = ? AND id <> ?",
                (term["ontology_id"], name, term_id),
            ).fetchone()
            if clash:
                raise Conflict(f"Term {name!r} already exists in ontology {term['ontology_id']}")
            db.execute(
                "UPDATE term SET name = ?, color = ?, comment = ?, updated = ? WHERE id = ?",
                (name, data.get("color", term["color"]), data.get("comment", term["comment"]), now_ms(), term_id),
            )
        return self.get_term(term_id)

    def delete_term(self, term_id: int) -> Row:
        """Delete a term and every annotation's use of it."""
        term = self.get_term(term_id)
        self.db.delete("term", term_id, ("annotation_term", "term_id"), ("algo_annotation_term", "term_id"))
        return term
