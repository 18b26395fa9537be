"""Projects (listings show the caller's projects only: :func:`~..access.visible_projects`)."""

from __future__ import annotations

from mtdp_core.server.api import access
from mtdp_core.server.api.context import RequestContext
from mtdp_core.server.api.serialisers.envelopes import JSON, command
from mtdp_core.server.api.serialisers.projects import project
from mtdp_core.server.domain import Row, as_int


def projects_json(ctx: RequestContext, rows: list[Row]) -> list[JSON]:
    counts = ctx.store.projects.counts([r["id"] for r in rows])
    names = {o["id"]: o["name"] for o in ctx.store.ontologies.list()}
    return [project(r, counts[r["id"]], names.get(r["ontology_id"])) for r in rows]


def list_projects(ctx: RequestContext) -> JSON:
    return ctx.page(projects_json(ctx, ctx.store.projects.list(among=access.visible_projects(ctx))))


def user_projects(ctx: RequestContext, user_id: int) -> JSON:
    """The projects a user is a member of (those of its job, for a job user) that the caller sees."""
    user = ctx.store.users.get(user_id)
    visible = access.visible_projects(ctx)
    if user["algo"]:
        rows = [ctx.store.projects.get(ctx.store.jobs.get(user["job_id"])["project_id"])] if user["job_id"] else []
        rows = [r for r in rows if visible is None or r["id"] in visible]
    else:
        rows = ctx.store.projects.list(member=user_id, among=visible)
    return ctx.page(projects_json(ctx, rows))


def ontology_projects(ctx: RequestContext, ontology_id: int) -> JSON:
    access.require_ontology_access(ctx, ontology_id)
    rows = ctx.store.projects.list(ontology=ontology_id, among=access.visible_projects(ctx))
    return ctx.page(projects_json(ctx, rows))


def software_projects(ctx: RequestContext, software_id: int) -> JSON:
    ctx.store.software.get(software_id)
    rows = ctx.store.projects.list(software=software_id, among=access.visible_projects(ctx))
    return ctx.page(projects_json(ctx, rows))


def add_project(ctx: RequestContext) -> JSON:
    """A project, managed by its creator; its ontology must be one the caller may read."""
    access.require_person(ctx, "create projects")
    data = ctx.json_object()
    ontology = as_int(data.get("ontology"), "ontology")
    if ontology is not None:
        access.require_ontology_access(ctx, ontology)
    row = ctx.store.projects.create(data.get("name"), ontology, ctx.user["id"])
    return command("project", projects_json(ctx, [row])[0], f"Project {row['name']} added", "AddProjectCommand")


def get_project(ctx: RequestContext, project_id: int) -> JSON:
    access.require_project_access(ctx, project_id)
    return projects_json(ctx, [ctx.store.projects.get(project_id)])[0]


def update_project(ctx: RequestContext, project_id: int) -> JSON:
    access.require_project_manager(ctx, project_id)
    data = ctx.json_object()
    ontology = as_int(data.get("ontology"), "ontology")
    if ontology is not None and ontology != ctx.store.projects.get(project_id)["ontology_id"]:
        access.require_ontology_access(ctx, ontology)
    row = ctx.store.projects.update(project_id, data)
    return command("project", projects_json(ctx, [row])[0], f"Project {row['name']} updated", "EditProjectCommand")


def delete_project(ctx: RequestContext, project_id: int) -> JSON:
    access.require_project_manager(ctx, project_id)
    row = ctx.store.projects.delete(project_id)
    return command("project", project(row, {}, None), f"Project {row['name']} deleted", "DeleteProjectCommand")
