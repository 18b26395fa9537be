"""Projects."""

from __future__ import annotations

from mtdp_core.server.api import access
from mtdp_core.server.api.context import RequestContext
from mtdp_core.server.api.serialisers.envelopes import JSON, command
from mtdp_core.server.api.serialisers.projects import project
from mtdp_core.server.domain import Row


def projects_json(ctx: RequestContext, rows: list[Row]) -> list[JSON]:
    counts = ctx.store.projects.counts([r["id"] for r in rows])
    names = {o["id"]: o["name"] for o in ctx.store.ontologies.list()}
    return [project(r, counts[r["id"]], names.get(r["ontology_id"])) for r in rows]


def list_projects(ctx: RequestContext) -> JSON:
    return ctx.page(projects_json(ctx, ctx.store.projects.list()))


def user_projects(ctx: RequestContext, user_id: int) -> JSON:
    ctx.store.users.get(user_id)
    return ctx.page(projects_json(ctx, ctx.store.projects.list()))


def ontology_projects(ctx: RequestContext, ontology_id: int) -> JSON:
    ctx.store.ontologies.get(ontology_id)
    return ctx.page(projects_json(ctx, ctx.store.projects.list(ontology=ontology_id)))


def software_projects(ctx: RequestContext, software_id: int) -> JSON:
    ctx.store.software.get(software_id)
    return ctx.page(projects_json(ctx, ctx.store.projects.list(software=software_id)))


def add_project(ctx: RequestContext) -> JSON:
    data = ctx.json_object()
    row = ctx.store.projects.create(data.get("name"), data.get("ontology"), ctx.user["id"])
    return command("project", projects_json(ctx, [row])[0], f"Project {row['name']} added", "AddProjectCommand")


def get_project(ctx: RequestContext, project_id: int) -> JSON:
    access.require_project_access(ctx, project_id)
    return projects_json(ctx, [ctx.store.projects.get(project_id)])[0]


def update_project(ctx: RequestContext, project_id: int) -> JSON:
    access.require_project_access(ctx, project_id, write=True)
    row = ctx.store.projects.update(project_id, ctx.json_object())
    return command("project", projects_json(ctx, [row])[0], f"Project {row['name']} updated", "EditProjectCommand")


def delete_project(ctx: RequestContext, project_id: int) -> JSON:
    access.require_project_access(ctx, project_id, write=True)
    row = ctx.store.projects.delete(project_id)
    return command("project", project(row, {}, None), f"Project {row['name']} deleted", "DeleteProjectCommand")
