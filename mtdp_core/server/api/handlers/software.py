"""Software, their parameters, and the projects they are added to.

Creating, changing or deleting software and their parameters over HTTP needs an administrator,
and no HTTP request sets what the local processing server runs: the local command, the
descriptor's command line and the container image come from the operator only (``mtdp server
register-app``, :func:`mtdp_core.server.descriptors.register_software`).
"""

from __future__ import annotations

from mtdp_core.server.api import access
from mtdp_core.server.api.context import RequestContext
from mtdp_core.server.api.serialisers.envelopes import JSON, command
from mtdp_core.server.api.serialisers.software import software, software_parameter, software_project
from mtdp_core.server.domain import Row, required_ids
from mtdp_core.server.errors import BadRequest

#: Callback keys of a software parameter (both spellings clients use).
PARAMETER_KEYS = ["software_parameter", "softwareparameter"]
#: Body keys that say what runs: only the operator sets them (``mtdp server register-app``).
OPERATOR_FIELDS = ("localCommand", "commandLine", "containerImage", "imageType", "descriptor")
#: Body keys a client echoes back (``Software.update()`` sends what it fetched) and that are not changed over HTTP.
READ_ONLY_FIELDS = ("app",)


def software_json(ctx: RequestContext, row: Row) -> JSON:
    backend = ctx.store.software
    return software(row, backend.list_parameters(row["id"]), backend.job_counts(row["id"]))


def list_software(ctx: RequestContext, project_id: int | None = None) -> JSON:
    """All software, or those of a project (in the path or as ``?project=``)."""
    project_id = project_id if project_id is not None else ctx.arg_int("project")
    if project_id is not None:
        access.require_project_access(ctx, project_id)
    return ctx.page([software_json(ctx, r) for r in ctx.store.software.list(project_id)])


def _software_body(ctx: RequestContext) -> dict:
    """The body of a software POST/PUT, without what only the operator sets (400 when it is there)."""
    data = ctx.json_object()
    operator = [key for key in OPERATOR_FIELDS if data.get(key) is not None]
    if operator:
        raise BadRequest(
            f"{', '.join(operator)} cannot be set over HTTP: what a job runs is the operator's choice "
            "(mtdp server register-app descriptors/APP.json --local-command CMD)"
        )
    return {key: value for key, value in data.items() if key not in READ_ONLY_FIELDS}


def add_software(ctx: RequestContext) -> JSON:
    access.require_admin(ctx)
    row = ctx.store.software.create(_software_body(ctx))
    return command("software", software_json(ctx, row), f"Software {row['name']} added", "AddSoftwareCommand")


def get_software(ctx: RequestContext, software_id: int) -> JSON:
    return software_json(ctx, ctx.store.software.get(software_id))


def update_software(ctx: RequestContext, software_id: int) -> JSON:
    access.require_admin(ctx)
    row = ctx.store.software.update(software_id, _software_body(ctx))
    return command("software", software_json(ctx, row), f"Software {row['name']} updated", "EditSoftwareCommand")


def delete_software(ctx: RequestContext, software_id: int) -> JSON:
    access.require_admin(ctx)
    row = ctx.store.software.delete(software_id)
    return command("software", software(row, [], {}), f"Software {row['name']} deleted", "DeleteSoftwareCommand")


# ---------------------------------------------------------------------- parameters
def list_parameters(ctx: RequestContext, software_id: int) -> JSON:
    rows = ctx.store.software.list_parameters(software_id, with_set_by_server=ctx.arg_bool("withSetByServer"))
    return ctx.page([software_parameter(r) for r in rows])


def add_parameter(ctx: RequestContext) -> JSON:
    access.require_admin(ctx)
    row = ctx.store.software.add_parameter(ctx.json_object())
    message = f"Parameter {row['name']} added"
    return command(PARAMETER_KEYS, software_parameter(row), message, "AddSoftwareParameterCommand")


def get_parameter(ctx: RequestContext, parameter_id: int) -> JSON:
    return software_parameter(ctx.store.software.get_parameter(parameter_id))


def update_parameter(ctx: RequestContext, parameter_id: int) -> JSON:
    access.require_admin(ctx)
    row = ctx.store.software.update_parameter(parameter_id, ctx.json_object())
    message = f"Parameter {row['name']} updated"
    return command(PARAMETER_KEYS, software_parameter(row), message, "EditSoftwareParameterCommand")


def delete_parameter(ctx: RequestContext, parameter_id: int) -> JSON:
    access.require_admin(ctx)
    row = ctx.store.software.delete_parameter(parameter_id)
    message = f"Parameter {row['name']} deleted"
    return command(PARAMETER_KEYS, software_parameter(row), message, "DeleteSoftwareParameterCommand")


# ---------------------------------------------------------------------- software in projects
def link_json(ctx: RequestContext, row: Row) -> JSON:
    return software_project(row, ctx.store.software.get(row["software_id"]))


def add_to_project(ctx: RequestContext) -> JSON:
    data = ctx.json_object()
    sid, pid = required_ids(
        data, "software", "project", missing="A software-project link needs 'software' and 'project'"
    )
    access.require_project_access(ctx, pid, write=True)
    row = ctx.store.software.add_to_project(sid, pid)
    return command("softwareproject", link_json(ctx, row), "Software added to project", "AddSoftwareProjectCommand")


def project_links(ctx: RequestContext, project_id: int | None = None) -> JSON:
    """The software links of a project (in the path or as ``?project=``)."""
    project_id = project_id if project_id is not None else ctx.arg_int("project")
    if project_id is None:
        raise BadRequest("Give the project: /api/project/{id}/softwareproject.json")
    access.require_project_access(ctx, project_id)
    return ctx.page([link_json(ctx, r) for r in ctx.store.software.list_project_links(project_id)])


def get_link(ctx: RequestContext, link_id: int) -> JSON:
    row = ctx.store.software.get_project_link(link_id)
    access.require_project_access(ctx, row["project_id"])
    return link_json(ctx, row)


def remove_link(ctx: RequestContext, link_id: int) -> JSON:
    access.require_project_access(ctx, ctx.store.software.get_project_link(link_id)["project_id"], write=True)
    row = ctx.store.software.remove_project_link(link_id)
    body = software_project(row, {"name": None, "software_version": None})
    return command("softwareproject", body, "Software removed from project", "DeleteSoftwareProjectCommand")
