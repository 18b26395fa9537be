"""Ontologies and terms."""

from __future__ import annotations

from mtdp_core.server.api import access
from mtdp_core.server.api.context import RequestContext
from mtdp_core.server.api.serialisers.envelopes import JSON, command
from mtdp_core.server.api.serialisers.ontologies import ontology, term
from mtdp_core.server.domain import Row


def ontology_json(ctx: RequestContext, row: Row) -> JSON:
    projects = [p["id"] for p in ctx.store.projects.list(ontology=row["id"])]
    return ontology(row, ctx.store.ontologies.list_terms(row["id"]), projects)


def list_ontologies(ctx: RequestContext) -> JSON:
    return ctx.page([ontology_json(ctx, r) for r in ctx.store.ontologies.list()])


def add_ontology(ctx: RequestContext) -> JSON:
    row = ctx.store.ontologies.create(ctx.json_object().get("name"), ctx.user["id"])
    return command("ontology", ontology_json(ctx, row), f"Ontology {row['name']} added", "AddOntologyCommand")


def get_ontology(ctx: RequestContext, ontology_id: int) -> JSON:
    return ontology_json(ctx, ctx.store.ontologies.get(ontology_id))


def update_ontology(ctx: RequestContext, ontology_id: int) -> JSON:
    row = ctx.store.ontologies.rename(ontology_id, ctx.json_object().get("name"))
    return command("ontology", ontology_json(ctx, row), f"Ontology {row['name']} updated", "EditOntologyCommand")


def delete_ontology(ctx: RequestContext, ontology_id: int) -> JSON:
    row = ctx.store.ontologies.delete(ontology_id)
    return command("ontology", ontology(row, []), f"Ontology {row['name']} deleted", "DeleteOntologyCommand")


def list_terms(ctx: RequestContext) -> JSON:
    return ctx.page([term(t) for t in ctx.store.ontologies.list_terms()])


def ontology_terms(ctx: RequestContext, ontology_id: int) -> JSON:
    return ctx.page([term(t) for t in ctx.store.ontologies.list_terms(ontology_id)])


def project_terms(ctx: RequestContext, project_id: int) -> JSON:
    access.require_project_access(ctx, project_id)
    return ctx.page([term(t) for t in ctx.store.projects.terms(project_id)])


def add_term(ctx: RequestContext) -> JSON:
    data = ctx.json_object()
    fields = (data.get(key) for key in ("name", "ontology", "color", "comment", "parent"))
    row = ctx.store.ontologies.create_term(*fields)
    return command("term", term(row), f"Term {row['name']} added", "AddTermCommand")


def get_term(ctx: RequestContext, term_id: int) -> JSON:
    return term(ctx.store.ontologies.get_term(term_id))


def update_term(ctx: RequestContext, term_id: int) -> JSON:
    row = ctx.store.ontologies.update_term(term_id, ctx.json_object())
    return command("term", term(row), f"Term {row['name']} updated", "EditTermCommand")


def delete_term(ctx: RequestContext, term_id: int) -> JSON:
    row = ctx.store.ontologies.delete_term(term_id)
    return command("term", term(row), f"Term {row['name']} deleted", "DeleteTermCommand")
