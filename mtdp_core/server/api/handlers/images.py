"""Images of projects, abstract images and slices (their pixels: :mod:`.pixels`)."""

from __future__ import annotations

from mtdp_core.server.api import access
from mtdp_core.server.api.context import RequestContext
from mtdp_core.server.api.serialisers.envelopes import JSON, command
from mtdp_core.server.api.serialisers.images import abstract_image, image_instance, slice_instance
from mtdp_core.server.domain import Row, required_ids


def images_json(ctx: RequestContext, rows: list[Row]) -> list[JSON]:
    counts = ctx.store.images.counts([r["id"] for r in rows])
    return [image_instance(r, ctx.base_url, ctx.store.images.zoom(r), counts[r["id"]]) for r in rows]


def image_of(ctx: RequestContext, image_id: int) -> Row:
    """The image, once the caller may read its project."""
    image = ctx.store.images.get(image_id)
    access.require_project_access(ctx, image["project_id"])
    return image


def project_images(ctx: RequestContext, project_id: int) -> JSON:
    access.require_project_access(ctx, project_id)
    return ctx.page(images_json(ctx, ctx.store.images.list(project_id)))


def user_images(ctx: RequestContext, user_id: int) -> JSON:
    """The images of the projects a person is a member of, among those the caller sees."""
    ctx.store.users.get(user_id)
    projects = ctx.store.projects.list(member=user_id, among=access.visible_projects(ctx))
    return ctx.page(images_json(ctx, ctx.store.images.list_in([p["id"] for p in projects])))


def get_image(ctx: RequestContext, image_id: int) -> JSON:
    return images_json(ctx, [image_of(ctx, image_id)])[0]


def add_image(ctx: RequestContext) -> JSON:
    data = ctx.json_object()
    missing = "An image instance needs 'baseImage' (an abstract image id) and 'project'"
    base_image, project = required_ids(data, "baseImage", "project", missing=missing)
    access.require_project_access(ctx, project, write=True)
    access.require_abstract_image_access(ctx, base_image)  # no reading another project's image through one's own
    row = ctx.store.images.add_instance(base_image, project, ctx.user["id"], data.get("instanceFilename"))
    body = images_json(ctx, [row])[0]
    return command("imageinstance", body, f"Image {row['instance_filename']} added", "AddImageInstanceCommand")


def delete_image(ctx: RequestContext, image_id: int) -> JSON:
    access.require_project_access(ctx, ctx.store.images.get(image_id)["project_id"], write=True)
    row = ctx.store.images.delete(image_id)
    body = image_instance(row, ctx.base_url, 0)
    return command("imageinstance", body, f"Image {image_id} deleted", "DeleteImageInstanceCommand")


def list_abstract_images(ctx: RequestContext) -> JSON:
    """The image files of the caller's projects (and those it imported); all for an administrator."""
    who = access.caller(ctx)
    rows = ctx.store.images.list_abstract(projects=access.visible_projects(ctx), user_id=None if who.is_job else who.id)
    return ctx.page([abstract_image(r, ctx.base_url, ctx.store.images.zoom(r)) for r in rows])


def get_abstract_image(ctx: RequestContext, abstract_id: int) -> JSON:
    access.require_abstract_image_access(ctx, abstract_id)
    row = ctx.store.images.get_abstract(abstract_id)
    return abstract_image(row, ctx.base_url, ctx.store.images.zoom(row))


def reference_slice(ctx: RequestContext, image_id: int) -> JSON:
    return slice_instance(image_of(ctx, image_id), ctx.base_url)


def image_slices(ctx: RequestContext, image_id: int) -> JSON:
    return ctx.page([slice_instance(image_of(ctx, image_id), ctx.base_url)])


def get_slice(ctx: RequestContext, slice_id: int) -> JSON:
    image = ctx.store.images.get_by_slice(slice_id)
    access.require_project_access(ctx, image["project_id"])
    return slice_instance(image, ctx.base_url)
