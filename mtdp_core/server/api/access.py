"""Who may do what: every authorisation decision of the API, in one place.

A handler states what it needs before it acts (``require_admin(ctx)``,
``require_project_access(ctx, project_id, write=True)``, ...) and filters its listings with
:func:`visible_projects`; the rules live here only. Authentication (a valid, recent signature
by a known key whose job, for a job user, has not ended) happened before any handler runs, and
made the caller.

The model (Cytomine's, in its CLASSIC project mode; docs/local_server.md, "Authorisation"):

- **administrators** may do everything and see every project;
- a **project** has members, some of them managers (its creator first). Members read and change
  what belongs to it (images, annotations, terms on annotations, properties, attached files,
  jobs: they launch, kill and delete them); managers also rename or delete the project and
  choose its members. Anyone else gets 403, and listings across projects show only the
  caller's projects;
- an **ontology** is read by its creator and the members of the projects that use it, and
  changed (its terms too) by its creator and the managers of those projects;
- **software** is a catalogue everyone reads; only administrators change it over HTTP, and what
  a job runs is the operator's (``mtdp server register-app``);
- a **job user** (the keys a job runs with) acts in its job's project only, changes only the
  annotations it created and only its own job, launches no job, and its keys stop working when
  its job ends (checked at authentication, ``api.app.authenticated_caller``).
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


# ---------------------------------------------------------------------- projects
def visible_projects(ctx: RequestContext) -> list[int] | None:
    """The ids of the projects the caller may read; None for an administrator (all of them)."""
    who = caller(ctx)
    if who.is_admin:
        return None
    if who.is_job:
        return [] if who.job_project_id is None else [who.job_project_id]
    return ctx.store.projects.member_projects(who.id)


def require_project_access(ctx: RequestContext, project_id: int, *, write: bool = False) -> None:
    """Read (or, with ``write``, change) what belongs to a project: its members (all of them may
    change its data, as in Cytomine's CLASSIC mode), its job users, administrators. 404 for a
    project that does not exist, 403 for anyone else."""
    who = caller(ctx)
    ctx.store.projects.get(project_id)
    if who.is_admin:
        return
    if who.is_job:
        if who.job_project_id != project_id:
            raise Forbidden(
                f"Job user {who.username!r} acts in its job's project {who.job_project_id} only, not in project "
                f"{project_id}"
            )
        return
    if ctx.store.projects.role(project_id, who.id) is None:
        raise Forbidden(
            f"User {who.username!r} is not a member of project {project_id}: ask one of its managers to add you "
            f"(POST /api/project/{project_id}/user/{who.id}.json, or mtdp server user add {who.username} "
            f"--project {project_id})"
        )


def require_project_manager(ctx: RequestContext, project_id: int) -> None:
    """Rename or delete a project, choose its members: its managers and administrators."""
    who = caller(ctx)
    ctx.store.projects.get(project_id)
    if who.is_admin:
        return
    if who.is_job or ctx.store.projects.role(project_id, who.id) != "manager":
        require_project_access(ctx, project_id)  # a non-member hears that first
        raise Forbidden(
            f"User {who.username!r} is not a manager of project {project_id}: ask one of its managers "
            "(GET /api/project/{id}/admin.json lists them) or an administrator"
        )


def project_write_check(ctx: RequestContext) -> Check:
    """For a backend to run on each object it is about to change (e.g. every item of a bulk
    creation): :func:`require_project_access` with ``write`` on the object's ``project_id``
    (checked once per project)."""
    allowed: set[int] = set()

    def check(row: Row) -> None:
        if row["project_id"] not in allowed:
            require_project_access(ctx, row["project_id"], write=True)
            allowed.add(row["project_id"])

    return check


# ---------------------------------------------------------------------- ontologies, images, other objects
def ontology_rights(ctx: RequestContext, ontology_id: int) -> str | None:
    """``"write"``, ``"read"`` or None: what the caller may do with an ontology (404 when missing)."""
    who = caller(ctx)
    ontology = ctx.store.ontologies.get(ontology_id)
    if who.is_admin or (not who.is_job and ontology["user_id"] == who.id):
        return "write"
    projects = ctx.store.projects.list(ontology=ontology_id, among=visible_projects(ctx))
    if not projects:
        return None
    if not who.is_job and any(ctx.store.projects.role(p["id"], who.id) == "manager" for p in projects):
        return "write"
    return "read"


def require_ontology_access(ctx: RequestContext, ontology_id: int, *, write: bool = False) -> None:
    """Read an ontology and its terms (its creator, the members of the projects using it), or
    change them (its creator, the managers of those projects)."""
    rights = ontology_rights(ctx, ontology_id)
    if rights == "write" or (rights == "read" and not write):
        return
    who = caller(ctx)
    what = "change" if rights == "read" else "read"
    raise Forbidden(
        f"User {who.username!r} cannot {what} ontology {ontology_id}: it is its creator's and its projects' "
        f"({'managers' if write else 'members'}); ask one of them or an administrator"
    )


def visible_ontologies(ctx: RequestContext) -> set[int] | None:
    """The ids of the ontologies the caller may read; None for an administrator (all of them)."""
    who = caller(ctx)
    if who.is_admin:
        return None
    own = set() if who.is_job else {o["id"] for o in ctx.store.ontologies.list() if o["user_id"] == who.id}
    used = {p["ontology_id"] for p in ctx.store.projects.list(among=visible_projects(ctx))}
    return own | (used - {None})


def require_abstract_image_access(ctx: RequestContext, abstract_id: int) -> None:
    """An image file (abstract image): whoever may read a project that holds it, or imported it."""
    who = caller(ctx)
    row = ctx.store.images.get_abstract(abstract_id)
    visible = visible_projects(ctx)
    if visible is None or (not who.is_job and row["user_id"] == who.id):
        return
    if not set(ctx.store.images.abstract_projects(abstract_id)) & set(visible):
        raise Forbidden(f"User {who.username!r} cannot read abstract image {abstract_id}: no project of yours holds it")


def require_domain_access(ctx: RequestContext, class_name: str, ident: int, *, write: bool = False) -> None:
    """Read (or change) what is attached to a domain object (properties, files, description):
    the access its project gives (or its ontology, for a term; the user itself, for a user; an
    administrator, to change software)."""
    owner = ctx.store.meta.owner(class_name, ident)
    if owner.scope == "project":
        require_project_access(ctx, owner.ident, write=write)
    elif owner.scope == "ontology":
        require_ontology_access(ctx, owner.ident, write=write)
    elif owner.scope == "abstractimage":
        if write:
            require_admin(ctx)
        require_abstract_image_access(ctx, owner.ident)
    elif owner.scope == "user":
        require_self_or_admin(ctx, owner.ident, also=ctx.store.users.get(owner.ident)["launcher_id"])
    elif write:  # software: a catalogue everyone reads
        require_admin(ctx)


# ---------------------------------------------------------------------- annotations and jobs
def require_annotation_write(ctx: RequestContext, annotation: Row) -> None:
    """Change or delete an annotation: members may change any (CLASSIC mode); a job user only
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
    """Change a job (status, progress, parameters, data): a member of its project, and a job
    user only its own job."""
    require_project_access(ctx, job["project_id"], write=True)
    who = caller(ctx)
    if who.is_job and who.user["job_id"] != job["id"]:
        raise Forbidden(f"Job user {who.username!r} cannot {action} {job['id']}")
