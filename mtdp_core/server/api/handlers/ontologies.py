"""Ontologies and terms (read by the members of the projects using them, changed by their
creator and those projects' managers: :func:`~..access.require_ontology_access`)."""

from __future__ import annotations

from mtdp_core.server.api import access
from mtdp_core.server.api.context import RequestContext
from mtdp_core.server.api.serialisers.envelopes import JSON, command
from mtdp_core.server.api.serialisers.ontologies import ontology, term
from mtdp_core.server.domain import Row, as_int
from mtdp_core.server.errors import BadRequest


def ontology_json(ctx: RequestContext, row: Row) -> JSON:
    projects = [p["id"] for p in ctx.store.projects.list(ontology=row["id"], among=access.visible_projects(ctx))]
    return ontology(row, ctx.store.ontologies.list_terms(row["id"]), projects)


def _visible(ctx: RequestContext, rows: list[Row], key: str) -> list[Row]:
    """The rows whose ontology (column ``key``) the caller may read."""
    visible = access.visible_ontologies(ctx)
    return rows if visible is None else [r for r in rows if r[key] in visible]


def list_ontologies(ctx: RequestContext) -> JSON:
    return ctx.page([ontology_json(ctx, r) for r in _visible(ctx, ctx.store.ontologies.list(), "id")])


def add_ontology(ctx: RequestContext) -> JSON:
    access.require_person(ctx, "create ontologies")
    row = ctx.store.ontologies.create(ctx.json_object().get("name"), ctx.user["id"])
    return command("ontology", ontology_json(ctx, row), f"Ontology {row['name']} added", "AddOntologyCommand")


def get_ontology(ctx: RequestContext, ontology_id: int) -> JSON:
    access.require_ontology_access(ctx, ontology_id)
    return ontology_json(ctx, ctx.store.ontologies.get(ontology_id))


def update_ontology(ctx: RequestContext, ontology_id: int) -> JSON:
    access.require_ontology_access(ctx, ontology_id, write=True)
    row = ctx.store.ontologies.rename(ontology_id, ctx.json_object().get("name"))
    return command("ontology", ontology_json(ctx, row), f"Ontology {row['name']} updated", "EditOntologyCommand")


def delete_ontology(ctx: RequestContext, ontology_id: int) -> JSON:
    access.require_ontology_access(ctx, ontology_id, write=True)
    row = ctx.store.ontologies.delete(ontology_id)
    return command("ontology", ontology(row, []), f"Ontology {row['name']} deleted", "DeleteOntologyCommand")


def list_terms(ctx: RequestContext) -> JSON:
    return ctx.page([term(t) for t in _visible(ctx, ctx.store.ontologies.list_terms(), "ontology_id")])


def ontology_terms(ctx: RequestContext, ontology_id: int) -> JSON:
    access.require_ontology_access(ctx, ontology_id)
    return ctx.page([term(t) for t in ctx.store.ontologies.list_terms(ontology_id)])


def project_terms(ctx: RequestContext, project_id: int) -> JSON:
    access.require_project_access(ctx, project_id)
    return ctx.page([term(t) for t in ctx.store.projects.terms(project_id)])


def add_term(ctx: RequestContext) -> JSON:
    data = ctx.json_object()
    ontology_id = as_int(data.get("ontology"), "ontology")
    if ontology_id is None:
        raise BadRequest("A term needs an ontology: give 'ontology' (its id)")
    access.require_ontology_access(ctx, ontology_id, write=True)
    fields = (data.get(key) for key in ("name", "ontology", "color", "comment", "parent"))
    row = ctx.store.ontologies.create_term(*fields)
    return command("term", term(row), f"Term {row['name']} added", "AddTermCommand")


def _term_of(ctx: RequestContext, term_id: int, *, write: bool = False) -> Row:
    row = ctx.store.ontologies.get_term(term_id)
    access.require_ontology_access(ctx, row["ontology_id"], write=write)
    return row


def get_term(ctx: RequestContext, term_id: int) -> JSON:
    return term(_term_of(ctx, term_id))


def update_term(ctx: RequestContext, term_id: int) -> JSON:
    _term_of(ctx, term_id, write=True)
    row = ctx.store.ontologies.update_term(term_id, ctx.json_object())
    return command("term", term(row), f"Term {row['name']} updated", "EditTermCommand")


def delete_term(ctx: RequestContext, term_id: int) -> JSON:
    _term_of(ctx, term_id, write=True)
    row = ctx.store.ontologies.delete_term(term_id)
    return command("term", term(row), f"Term {row['name']} deleted", "DeleteTermCommand")
