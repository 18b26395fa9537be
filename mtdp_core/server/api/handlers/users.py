"""Users, their keys, and the members and managers of a project."""

from __future__ import annotations

from mtdp_core.server.api import access
from mtdp_core.server.api.context import RequestContext
from mtdp_core.server.api.serialisers import users as S
from mtdp_core.server.api.serialisers.envelopes import JSON, command
from mtdp_core.server.domain import Row, as_bool
from mtdp_core.server.errors import NotFound


def user_json(ctx: RequestContext, row: Row, *, viewer: Row | None = None, current: bool = False) -> JSON:
    launcher = ctx.store.users.get(row["launcher_id"]) if row["algo"] and row["launcher_id"] else None
    return S.user(row, viewer=viewer or ctx.user, launcher=launcher, current=current)


def current(ctx: RequestContext) -> JSON:
    return user_json(ctx, ctx.user, current=True)


def list_users(ctx: RequestContext) -> JSON:
    rows = ctx.store.users.list(include_jobs=ctx.arg_bool("showJob"))
    public_key = ctx.arg("publicKey")
    if public_key:
        rows = [r for r in rows if r["public_key"] == public_key]
    return ctx.page([user_json(ctx, r) for r in rows])


def add_user(ctx: RequestContext) -> JSON:
    access.require_admin(ctx)
    data = ctx.json_object()
    row = ctx.store.users.create(
        data.get("username", ""),
        firstname=data.get("firstname"),
        lastname=data.get("lastname"),
        email=data.get("email"),
        admin=as_bool(data.get("admin")),
    )
    body = user_json(ctx, row, viewer=row)  # the new user's keys, for whoever creates it
    return command("user", body, f"User {row['username']} added", "AddUserCommand")


def get_user(ctx: RequestContext, user_id: int) -> JSON:
    return user_json(ctx, ctx.store.users.get(user_id))


def update_user(ctx: RequestContext, user_id: int) -> JSON:
    access.require_self_or_admin(ctx, user_id)
    row = ctx.store.users.update_profile(user_id, ctx.json_object())
    return command("user", user_json(ctx, row), f"User {row['username']} updated", "EditUserCommand")


def user_keys(ctx: RequestContext, user_id: int) -> JSON:
    row = ctx.store.users.get(user_id)
    access.require_self_or_admin(ctx, user_id, also=row["launcher_id"])
    return S.user_keys(row)


def user_keys_by_public_key(ctx: RequestContext, public_key: str) -> JSON:
    row = ctx.store.users.find_by_public_key(public_key)
    if row is None:
        raise NotFound(f"No user with public key {public_key[:8]}...")
    access.require_self_or_admin(ctx, row["id"])
    return S.user_keys(row)


def project_users(ctx: RequestContext, project_id: int) -> JSON:
    """The members of a project."""
    access.require_project_access(ctx, project_id)
    return ctx.page([user_json(ctx, r) for r in ctx.store.projects.members(project_id)])


def project_admins(ctx: RequestContext, project_id: int) -> JSON:
    """The managers of a project (Cytomine calls them the project's admins)."""
    access.require_project_access(ctx, project_id)
    return ctx.page([user_json(ctx, r) for r in ctx.store.projects.members(project_id, managers_only=True)])


def project_job_users(ctx: RequestContext, project_id: int) -> JSON:
    access.require_project_access(ctx, project_id)
    return ctx.page([user_json(ctx, r) for r in ctx.store.users.list_job_users(project_id)])


def _membership_answer(member: Row, project_id: int, message: str) -> JSON:
    body = {"project": project_id, "user": member["user_id"], "manager": member["manager"]}
    return {"data": body, "message": message, "printMessage": True, "status": 200}


def project_member(ctx: RequestContext, project_id: int, user_id: int) -> JSON:
    """``POST``: add a member; ``DELETE``: remove one (managers and administrators only)."""
    access.require_project_manager(ctx, project_id)
    if ctx.request.method == "DELETE":
        member = ctx.store.projects.remove_member(project_id, user_id)
        return _membership_answer(
            {**member, "manager": False}, project_id, f"User {user_id} removed from project {project_id}"
        )
    member = ctx.store.projects.add_member(project_id, user_id)
    return _membership_answer(member, project_id, f"User {user_id} added to project {project_id}")


def project_manager(ctx: RequestContext, project_id: int, user_id: int) -> JSON:
    """``POST``: make a user a manager (and a member); ``DELETE``: a manager becomes a plain member."""
    access.require_project_manager(ctx, project_id)
    if ctx.request.method == "DELETE":
        member = ctx.store.projects.remove_manager(project_id, user_id)
        return _membership_answer(member, project_id, f"User {user_id} is no longer a manager of project {project_id}")
    member = ctx.store.projects.add_member(project_id, user_id, manager=True)
    return _membership_answer(member, project_id, f"User {user_id} manages project {project_id}")
