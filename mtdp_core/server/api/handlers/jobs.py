"""Jobs (and running them on the local processing server), job parameters and job data."""

from __future__ import annotations

from flask import Response

from mtdp_core.server.api import access
from mtdp_core.server.api.context import Launcher, RequestContext
from mtdp_core.server.api.handlers.pixels import file_response
from mtdp_core.server.api.serialisers.envelopes import JSON, command
from mtdp_core.server.api.serialisers.jobs import job, job_data, job_parameter
from mtdp_core.server.domain import Row, as_int
from mtdp_core.server.errors import BadRequest, NotFound


def job_json(ctx: RequestContext, row: Row) -> JSON:
    store = ctx.store
    job_user = store.users.job_user(row["id"])
    launcher = store.users.get(job_user["launcher_id"]) if job_user and job_user["launcher_id"] else None
    body = job(row, store.software.get(row["software_id"]), job_user, launcher, store.jobs.list_parameters(row["id"]))
    runner = ctx.services.launcher
    state = runner.process_state(row["id"]) if runner is not None else None
    if state is not None:  # an extension: whether the local processing server's process still runs
        body.update(state)
    return body


def job_of(ctx: RequestContext, job_id: int) -> Row:
    """The job, once the caller may read its project."""
    row = ctx.store.jobs.get(job_id)
    access.require_project_access(ctx, row["project_id"])
    return row


def list_jobs(ctx: RequestContext, project_id: int | None = None) -> JSON:
    """Jobs of a project (in the path or ``?project=``) and/or a software (``?software=``), of the
    caller's projects."""
    project_id = project_id if project_id is not None else ctx.arg_int("project")
    if project_id is not None:
        access.require_project_access(ctx, project_id)
    rows = ctx.store.jobs.list(project=project_id, software=ctx.arg_int("software"), among=access.visible_projects(ctx))
    return ctx.page([job_json(ctx, r) for r in rows])


def add_job(ctx: RequestContext) -> JSON:
    """A job and its parameters (``params: [{softwareParameter, value}]``), as the web UI posts it."""
    data = ctx.json_object()
    params = []
    for item in data.get("params") or data.get("jobParameters") or []:
        if isinstance(item, dict) and item.get("softwareParameter") is not None:
            params.append((as_int(item["softwareParameter"], "softwareParameter"), item.get("value")))
    project = as_int(data.get("project"), "project")
    if project is None:
        raise BadRequest("A job needs 'project' and 'software' (their ids)")
    access.require_project_access(ctx, project, write=True)
    row, _ = ctx.store.jobs.create(project, data.get("software"), ctx.user, params)
    return command("job", job_json(ctx, row), f"Job {row['id']} added", "AddJobCommand")


def get_job(ctx: RequestContext, job_id: int) -> JSON:
    return job_json(ctx, job_of(ctx, job_id))


def update_job(ctx: RequestContext, job_id: int) -> JSON:
    access.require_job_write(ctx, ctx.store.jobs.get(job_id))
    row = ctx.store.jobs.update(job_id, ctx.json_object())
    return command("job", job_json(ctx, row), f"Job {job_id} updated", "EditJobCommand")


def delete_job(ctx: RequestContext, job_id: int) -> JSON:
    row = job_of(ctx, job_id)
    access.require_project_access(ctx, row["project_id"], write=True)
    body = job_json(ctx, row)
    ctx.store.jobs.delete(job_id)
    return command("job", body, f"Job {job_id} deleted", "DeleteJobCommand")


def _launcher(ctx: RequestContext) -> Launcher:
    if ctx.services.launcher is None:
        raise BadRequest("This server runs no jobs (started without a launcher)")
    return ctx.services.launcher


def execute_job(ctx: RequestContext, job_id: int) -> JSON:
    access.require_person(ctx, "execute jobs")
    access.require_project_access(ctx, job_of(ctx, job_id)["project_id"], write=True)
    row = _launcher(ctx).execute(job_id, ctx.base_url, wait=False)
    return command("job", job_json(ctx, row), f"Job {job_id} launched", "ExecuteJobCommand")


def kill_job(ctx: RequestContext, job_id: int) -> JSON:
    access.require_person(ctx, "kill jobs")
    access.require_project_access(ctx, job_of(ctx, job_id)["project_id"], write=True)
    row = _launcher(ctx).kill(job_id)
    return command("job", job_json(ctx, row), f"Job {job_id} killed", "EditJobCommand")


# ---------------------------------------------------------------------- parameters
def list_parameters(ctx: RequestContext, job_id: int) -> JSON:
    job_of(ctx, job_id)
    return ctx.page([job_parameter(r, mask_keys=True) for r in ctx.store.jobs.list_parameters(job_id)])


def add_parameters(ctx: RequestContext) -> JSON:
    """One job parameter (an object) or several (an array)."""
    data = ctx.body()
    rows = []
    for item in data if isinstance(data, list) else [data]:
        if not isinstance(item, dict):
            raise BadRequest("A job parameter object is expected")
        access.require_job_write(ctx, ctx.store.jobs.get(as_int(item.get("job"), "job") or -1), "set parameters of job")
        rows.append(ctx.store.jobs.add_parameter(item.get("job"), item.get("softwareParameter"), item.get("value")))
    body = job_parameter(rows[-1]) if rows else {}
    return command("jobparameter", body, f"{len(rows)} job parameter(s) added", "AddJobParameterCommand")


def get_parameter(ctx: RequestContext, jp_id: int) -> JSON:
    row = ctx.store.jobs.get_parameter(jp_id)
    job_of(ctx, row["job_id"])
    return job_parameter(row, mask_keys=True)


# ---------------------------------------------------------------------- job data
def add_data(ctx: RequestContext) -> JSON:
    data = ctx.json_object()
    job_id = as_int(data.get("job"), "job")
    if job_id is not None:
        access.require_job_write(ctx, ctx.store.jobs.get(job_id), "add data to job")
    row = ctx.store.jobs.create_data(data.get("job"), data.get("key"), data.get("filename"))
    return command("jobdata", job_data(row, ctx.base_url), f"Job data {row['id']} added", "AddJobDataCommand")


def list_data(ctx: RequestContext, job_id: int) -> JSON:
    job_of(ctx, job_id)
    return ctx.page([job_data(r, ctx.base_url) for r in ctx.store.jobs.list_data(job_id)])


def data_of(ctx: RequestContext, data_id: int, *, write: bool = False) -> Row:
    row = ctx.store.jobs.get_data(data_id)
    if write:
        access.require_job_write(ctx, ctx.store.jobs.get(row["job_id"]), "change the data of job")
    else:
        job_of(ctx, row["job_id"])
    return row


def get_data(ctx: RequestContext, data_id: int) -> JSON:
    return job_data(data_of(ctx, data_id), ctx.base_url)


def delete_data(ctx: RequestContext, data_id: int) -> JSON:
    data_of(ctx, data_id, write=True)
    row = ctx.store.jobs.delete_data(data_id)
    return command("jobdata", job_data(row, ctx.base_url), f"Job data {data_id} deleted", "DeleteJobDataCommand")


def upload_data(ctx: RequestContext, data_id: int) -> JSON:
    data_of(ctx, data_id, write=True)
    filename, content = ctx.uploaded_file()
    return job_data(ctx.store.jobs.upload_data(data_id, filename or "data", content), ctx.base_url)


def download_data(ctx: RequestContext, data_id: int) -> Response:
    row = data_of(ctx, data_id)
    if not row["storage"]:
        raise NotFound(f"JobData {data_id} has no file yet: upload it first (POST /api/jobdata/{data_id}/upload)")
    return file_response(row["storage"], row["filename"])
