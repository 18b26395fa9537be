"""Ontologies and terms."""

from __future__ import annotations

from collections.abc import Sequence

from mtdp_core.server.api.serialisers.envelopes import JSON, base
from mtdp_core.server.domain import CLASS_NAMES, Row


def term(row: Row) -> JSON:
    """A term of an ontology (``parent``: its parent term, if any)."""
    return base("term", row) | {
        "name": row["name"],
        "comment": row["comment"],
        "ontology": row["ontology_id"],
        "color": row["color"],
        "parent": row["parent_id"],
    }


def ontology(row: Row, terms: Sequence[Row], project_ids: Sequence[int] = ()) -> JSON:
    """An ontology with its terms as a tree of ``children`` (as the web UI reads it)."""
    leaf = {"isFolder": False, "hidden": False, "checked": False, "children": []}
    return base("ontology", row) | {
        "name": row["name"],
        "title": row["name"],
        "attr": {"id": row["id"], "type": CLASS_NAMES["ontology"]},
        "data": row["name"],
        "isFolder": True,
        "key": row["id"],
        "hideCheckbox": True,
        "state": "open",
        "projects": [{"id": p} for p in project_ids],
        "user": row["user_id"],
        "children": [{**term(t), "title": t["name"], "key": t["id"], **leaf} for t in terms],
    }
