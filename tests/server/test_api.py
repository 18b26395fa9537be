"""The API's request context and access rules, below the HTTP routes the client tests drive."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from mtdp_core.server.api import Services, access, create_app
from mtdp_core.server.api.app import authenticated_caller
from mtdp_core.server.api.context import Caller, RequestContext
from mtdp_core.server.auth import authorization_header, legacy_token
from mtdp_core.server.errors import BadRequest, Forbidden, Unauthorized


def _signed_context(server, user, path="/api/user/current.json"):
    app = create_app(Services(server.store, server.config, None))  # type: ignore[arg-type]
    date = formatdate(usegmt=True)
    header = authorization_header(user["public_key"], user["private_key"], legacy_token("GET", "", "", date, path))
    return app.test_request_context(path, headers={"date": date, "authorization": header})


def test_the_caller_of_a_job_users_request_knows_the_jobs_project(server, seeded):
    software = server.store.software.create({"name": "predictor"})
    job, job_user = server.store.jobs.create(seeded.project_id, software["id"], server.admin)
    with _signed_context(server, job_user):
        caller = authenticated_caller(server.store)
    assert caller.kind == "job" and caller.is_job and caller.job_project_id == job["project_id"]
    with _signed_context(server, server.admin):
        admin = authenticated_caller(server.store)
    assert admin.kind == "admin" and admin.job_project_id is None
    alice = server.store.users.create("alice")
    with _signed_context(server, alice):
        assert authenticated_caller(server.store).kind == "user"


def test_a_bad_signature_makes_no_caller(server):
    wrong = {**server.admin, "private_key": "not the key"}
    with _signed_context(server, wrong), pytest.raises(Unauthorized, match="Bad request signature"):
        authenticated_caller(server.store)


def _context(server, user=None):
    caller = None
    if user is not None:
        project = server.store.jobs.get(user["job_id"])["project_id"] if user["algo"] else None
        caller = Caller(user, job_project_id=project)
    return RequestContext(Services(server.store, server.config, None), None, caller)  # type: ignore[arg-type]


def test_access_rules(server, seeded):
    store = server.store
    alice = store.users.create("alice")
    software = store.software.create({"name": "predictor"})
    job, job_user = store.jobs.create(seeded.project_id, software["id"], server.admin)
    other_job, _ = store.jobs.create(seeded.project_id, software["id"], server.admin)
    annotation = store.annotations.get(seeded.annotations[0].id)
    with pytest.raises(Unauthorized):
        access.require_project_access(_context(server), seeded.project_id)
    with pytest.raises(Forbidden, match="not a member of project"):
        access.require_project_access(_context(server, alice), seeded.project_id)
    store.projects.add_member(seeded.project_id, alice["id"])
    access.require_project_access(_context(server, alice), seeded.project_id, write=True)  # CLASSIC: members write
    with pytest.raises(Forbidden, match="not a manager"):
        access.require_project_manager(_context(server, alice), seeded.project_id)
    access.require_project_manager(_context(server, server.admin), seeded.project_id)
    assert access.visible_projects(_context(server, alice)) == [seeded.project_id]
    assert access.visible_projects(_context(server, server.admin)) is None
    with pytest.raises(Forbidden, match="not an administrator"):
        access.require_admin(_context(server, alice))
    access.require_self_or_admin(_context(server, alice), alice["id"])
    access.require_self_or_admin(_context(server, server.admin), job_user["id"], also=job_user["launcher_id"])
    access.require_annotation_write(_context(server, alice), annotation)
    with pytest.raises(Forbidden, match="only modify the annotations it created"):
        access.require_annotation_write(_context(server, job_user), annotation)
    access.require_job_write(_context(server, job_user), job)
    with pytest.raises(Forbidden, match=f"cannot update job {other_job['id']}"):
        access.require_job_write(_context(server, job_user), other_job)
    with pytest.raises(BadRequest, match="A job user cannot delete"):
        access.require_term_owner(_context(server, job_user), job_user["id"])
    with pytest.raises(Forbidden, match="Only an administrator"):
        access.require_term_owner(_context(server, alice), server.admin["id"])
