"""Annotations: listings, creation (one or many), read, update, delete."""

from __future__ import annotations

from mtdp_core.server.api import access
from mtdp_core.server.api.context import RequestContext
from mtdp_core.server.api.serialisers import annotations as S
from mtdp_core.server.api.serialisers.envelopes import JSON, collection, command
from mtdp_core.server.backends.annotation_query import show_groups
from mtdp_core.server.domain import ANNOTATION_DOMAINS, ANNOTATION_KINDS, Row, as_int, id_union
from mtdp_core.server.errors import BadRequest


def keys(row: Row) -> list[str]:
    """The callback keys of an annotation: the generic one and its kind's."""
    return ["annotation", ANNOTATION_KINDS[row["kind"]]]


def annotation_json(ctx: RequestContext, row: Row) -> JSON:
    return S.annotation(row, ctx.base_url)


def listing(ctx: RequestContext, rows: list[Row], groups: set[str]) -> list[JSON]:
    """Listing rows with the show-groups asked (image and user names fetched for their groups)."""
    images = ctx.store.images.get_many({r["image_id"] for r in rows}) if "image" in groups else []
    users = ctx.store.users.get_many({r["user_id"] for r in rows}) if "user" in groups else []
    extras = S.listing_extras(images, users)
    return [S.listing_item(r, groups, ctx.base_url, extras) for r in rows]


def search(ctx: RequestContext) -> JSON:
    """``GET /api/annotation.json`` and ``/api/annotation/search.json`` (filters in the query or body):
    a project or image filter the caller may not read is a 403; otherwise only the annotations
    of the caller's projects are listed."""
    params = ctx.listing_params()
    groups = show_groups(params)
    offset, max_ = ctx.paging()
    project = as_int(params.get("project"), "project")
    if project is not None:
        access.require_project_access(ctx, project)
    for image_id in id_union(params, "image", "images"):
        access.require_project_access(ctx, ctx.store.images.get(image_id)["project_id"])
    _require_annotation_read(ctx, params.get("bboxAnnotation"), "bboxAnnotation")
    rows, total = ctx.store.annotations.search(params, offset, max_, projects=access.visible_projects(ctx))
    return collection(listing(ctx, rows, groups), total=total, offset=offset, max_=max_, paginated=True)


def _require_annotation_read(ctx: RequestContext, value: object, name: str) -> None:
    """An annotation named by a filter (its geometry is used) must be one the caller may read."""
    annotation_id = as_int(value, name)
    if annotation_id is not None:
        access.require_project_access(ctx, ctx.store.annotations.get(annotation_id)["project_id"])


def included(ctx: RequestContext, image_id: int) -> JSON:
    """The annotations of an image inside a geometry or another annotation."""
    params = ctx.listing_params()
    access.require_project_access(ctx, ctx.store.images.get(image_id)["project_id"])
    _require_annotation_read(ctx, params.get("annotation"), "annotation")
    rows = ctx.store.annotations.included(image_id, params)
    return ctx.page(listing(ctx, rows, show_groups(params)))


def add(ctx: RequestContext, domain: str) -> JSON:
    """One annotation (a JSON object) or several (an array); a job user makes algo annotations."""
    data = ctx.body()
    user = ctx.user
    if domain == "userannotation" and user["algo"]:
        raise BadRequest(
            f"User {user['username']!r} is a job user: it creates algo annotations (POST /api/annotation.json)"
        )
    if domain == "algoannotation" and not user["algo"]:
        raise BadRequest(f"User {user['username']!r} is not a job user: it creates user annotations")
    check = access.project_write_check(ctx)
    if isinstance(data, list):
        created, errors = ctx.store.annotations.create_many(data, user, check=check)
        return _bulk_answer(created, errors, "algoannotations" if user["algo"] else "userannotations")
    if not isinstance(data, dict):
        raise BadRequest("A JSON object (one annotation) or array (several) is expected")
    row = ctx.store.annotations.create(data, user, check=check)
    message = f"{ANNOTATION_KINDS[row['kind']]} {row['id']} added"
    return command(keys(row), annotation_json(ctx, row), message, "AddAnnotationCommand")


def _bulk_answer(created: list[int], errors: list[str], domain: str) -> JSON:
    """As the core: HTTP 200 whatever happened, the outcome in the body's ``status``."""
    status = 200 if not errors else (206 if created else 400)
    message = f"{domain} {','.join(map(str, created))} added" if created else f"no {domain} added"
    if errors:
        message += "; refused: " + " | ".join(errors)[:2000]
    return {"data": {"message": message, "created": created, "errors": errors}, "status": status, "message": message}


def get(ctx: RequestContext, domain: str, annotation_id: int) -> JSON:
    row = ctx.store.annotations.get(annotation_id, ANNOTATION_DOMAINS[domain])
    access.require_project_access(ctx, row["project_id"])
    return annotation_json(ctx, row)


def update(ctx: RequestContext, domain: str, annotation_id: int) -> JSON:
    access.require_annotation_write(ctx, ctx.store.annotations.get(annotation_id, ANNOTATION_DOMAINS[domain]))
    row = ctx.store.annotations.update(annotation_id, ctx.json_object())
    message = f"{ANNOTATION_KINDS[row['kind']]} {annotation_id} updated"
    return command(keys(row), annotation_json(ctx, row), message, "EditAnnotationCommand")


def delete(ctx: RequestContext, domain: str, annotation_id: int) -> JSON:
    access.require_annotation_write(ctx, ctx.store.annotations.get(annotation_id, ANNOTATION_DOMAINS[domain]))
    row = ctx.store.annotations.delete(annotation_id)
    message = f"{ANNOTATION_KINDS[row['kind']]} {annotation_id} deleted"
    return command(keys(row), annotation_json(ctx, row), message, "DeleteAnnotationCommand")
