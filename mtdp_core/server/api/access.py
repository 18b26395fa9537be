"""Who may do what: every authorisation decision of the API, in one place.

A handler states what it needs before it acts (``require_admin(ctx)``,
``require_project_access(ctx, project_id, write=True)``, ...); the rules live here only.
Authentication (a valid signature) happened before any handler runs, and made the caller.

Today's model (see docs/local_server.md, "Differences from a real core"): every authenticated
user may read and edit every project (a core's CLASSIC mode with everyone a member);
administrators alone manage users and list every attached file; a job user may change only
the annotations it created and only its own job, and launches no job.
"""

from __future__ import annotations

from mtdp_core.server.api.context import Caller, RequestContext
from mtdp_core.server.domain import Check, Row
from mtdp_core.server.errors import BadRequest, Forbidden, Unauthorized


def caller(ctx: RequestContext) -> Caller:
    """Who calls; 401 on a request that was not authenticated."""
    if ctx.caller is None:
        raise Unauthorized("Authentication required: sign the request with your API keys")
    return ctx.caller


def require_admin(ctx: RequestContext) -> None:
    who = caller(ctx)
    if not who.is_admin:
        raise Forbidden(f"User {who.username!r} is not an administrator: use the admin keys")


def require_self_or_admin(ctx: RequestContext, user_id: int, *, also: int | None = None) -> None:
    """The user itself (or ``also``, e.g. the person who launched a job user's job), else an administrator."""
    if caller(ctx).id not in (user_id, also):
        require_admin(ctx)


def require_person(ctx: RequestContext, action: str, *, error: type[Exception] = Forbidden) -> None:
    """Refuse a job user: ``"A job user cannot {action}"``."""
    if caller(ctx).is_job:
        raise error(f"A job user cannot {action}")


def require_project_access(ctx: RequestContext, project_id: int | None, *, write: bool = False) -> None:
    """Read (or, with ``write``, change) what belongs to a project. Every authenticated user is a
    member of every project of the local server, so this checks authentication only."""
    caller(ctx)


def require_domain_access(ctx: RequestContext, class_name: str, ident: int, *, write: bool = False) -> None:
    """Read (or change) what is attached to a domain object (properties, files, description):
    the access its project gives, as :func:`require_project_access`."""
    caller(ctx)


def project_write_check(ctx: RequestContext) -> Check:
    """For a backend to run on each object it is about to change (e.g. every item of a bulk
    creation): :func:`require_project_access` with ``write`` on the object's ``project_id``."""

    def check(row: Row) -> None:
        require_project_access(ctx, row["project_id"], write=True)

    return check


def require_annotation_write(ctx: RequestContext, annotation: Row) -> None:
    """Change or delete an annotation: people may change any (CLASSIC mode); a job user only
    those it created, so that an app cannot alter the annotations it learns from."""
    require_project_access(ctx, annotation["project_id"], write=True)
    who = caller(ctx)
    if who.is_job and annotation["user_id"] != who.id:
        raise Forbidden(
            f"Job user {who.username!r} cannot modify annotation {annotation['id']}: a job can "
            "only modify the annotations it created (add algo annotation terms instead)"
        )


def require_term_owner(ctx: RequestContext, user_id: int) -> None:
    """Remove a person's term from an annotation: one's own, or anyone's for an administrator;
    never a job user (its suggestions are algo terms)."""
    require_person(ctx, "delete a user's term on an annotation", error=BadRequest)
    who = caller(ctx)
    if user_id != who.id and not who.is_admin:
        raise Forbidden("Only an administrator can delete another user's term")


def require_job_write(ctx: RequestContext, job: Row, action: str = "update job") -> None:
    """Change a job (status, progress, parameters): a job user only its own job."""
    require_project_access(ctx, job["project_id"], write=True)
    who = caller(ctx)
    if who.is_job and who.user["job_id"] != job["id"]:
        raise Forbidden(f"Job user {who.username!r} cannot {action} {job['id']}")
