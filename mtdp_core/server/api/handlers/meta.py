"""Properties, attached files and descriptions of any domain object.

Property routes exist under ``/api/domain/{class}/{id}/`` and under the shortcuts
``/api/annotation/{id}/``, ``/api/project/{id}/`` and ``/api/imageinstance/{id}/`` (the URL
table's ``OwnerConverter`` gives the handlers the class name either way).
"""

from __future__ import annotations

from flask import Response

from mtdp_core.server.api import access
from mtdp_core.server.api.context import RequestContext
from mtdp_core.server.api.handlers.pixels import file_response
from mtdp_core.server.api.serialisers.envelopes import JSON, command
from mtdp_core.server.api.serialisers.meta import attached_file, description, property_
from mtdp_core.server.domain import as_int
from mtdp_core.server.errors import BadRequest


def _checked(ctx: RequestContext, cls: str, ident: int, *, write: bool = False) -> str:
    access.require_domain_access(ctx, cls, ident, write=write)
    return cls


# ---------------------------------------------------------------------- properties
def list_properties(ctx: RequestContext, cls: str, ident: int) -> JSON:
    return ctx.page([property_(p) for p in ctx.store.meta.list_properties(_checked(ctx, cls, ident), ident)])


def add_property(ctx: RequestContext, cls: str, ident: int) -> JSON:
    data = ctx.json_object()
    row = ctx.store.meta.add_property(_checked(ctx, cls, ident, write=True), ident, data.get("key"), data.get("value"))
    return command("property", property_(row), f"Property {row['key']} added", "AddPropertyCommand")


def get_property(ctx: RequestContext, cls: str, ident: int, property_id: int) -> JSON:
    return property_(ctx.store.meta.get_property_of(_checked(ctx, cls, ident), ident, property_id))


def update_property(ctx: RequestContext, cls: str, ident: int, property_id: int) -> JSON:
    ctx.store.meta.get_property_of(_checked(ctx, cls, ident, write=True), ident, property_id)
    row = ctx.store.meta.update_property(property_id, ctx.json_object())
    return command("property", property_(row), f"Property {row['key']} updated", "EditPropertyCommand")


def delete_property(ctx: RequestContext, cls: str, ident: int, property_id: int) -> JSON:
    ctx.store.meta.get_property_of(_checked(ctx, cls, ident, write=True), ident, property_id)
    row = ctx.store.meta.delete_property(property_id)
    return command("property", property_(row), f"Property {row['key']} deleted", "DeletePropertyCommand")


def property_by_key(ctx: RequestContext, cls: str, ident: int, key: str) -> JSON:
    return property_(ctx.store.meta.find_property(_checked(ctx, cls, ident), ident, key))


def get_property_by_id(ctx: RequestContext, property_id: int) -> JSON:
    row = ctx.store.meta.get_property(property_id)
    access.require_domain_access(ctx, row["domain_class"], row["domain_ident"])
    return property_(row)


# ---------------------------------------------------------------------- attached files
def add_attached_file(ctx: RequestContext) -> JSON:
    cls = ctx.form_or_arg("domainClassName")
    ident = as_int(ctx.form_or_arg("domainIdent"), "domainIdent")
    if not cls or ident is None:
        raise BadRequest("An attached file needs 'domainClassName' and 'domainIdent' (query parameters)")
    access.require_domain_access(ctx, cls, ident, write=True)
    filename, data = ctx.uploaded_file()
    name = ctx.form_or_arg("filename") or filename or "file"
    row = ctx.store.meta.add_attached_file(cls, ident, name, data, key=ctx.arg("key"))
    return attached_file(row, ctx.base_url)  # the client's upload_file reads the bare object


def list_all_attached_files(ctx: RequestContext) -> JSON:
    access.require_admin(ctx)
    return ctx.page([attached_file(r, ctx.base_url) for r in ctx.store.meta.list_attached_files()])


def list_attached_files(ctx: RequestContext, cls: str, ident: int) -> JSON:
    access.require_domain_access(ctx, cls, ident)
    return ctx.page([attached_file(r, ctx.base_url) for r in ctx.store.meta.list_attached_files(cls, ident)])


def _file(ctx: RequestContext, file_id: int, *, write: bool = False) -> dict:
    row = ctx.store.meta.get_attached_file(file_id)
    access.require_domain_access(ctx, row["domain_class"], row["domain_ident"], write=write)
    return row


def get_attached_file(ctx: RequestContext, file_id: int) -> JSON:
    return attached_file(_file(ctx, file_id), ctx.base_url)


def delete_attached_file(ctx: RequestContext, file_id: int) -> JSON:
    _file(ctx, file_id, write=True)
    row = ctx.store.meta.delete_attached_file(file_id)
    body = attached_file(row, ctx.base_url)
    return command("attachedfile", body, f"Attached file {file_id} deleted", "DeleteAttachedFileCommand")


def download_attached_file(ctx: RequestContext, file_id: int) -> Response:
    row = _file(ctx, file_id)
    return file_response(row["storage"], row["filename"])


# ---------------------------------------------------------------------- descriptions
def get_description(ctx: RequestContext, cls: str, ident: int) -> JSON:
    access.require_domain_access(ctx, cls, ident)
    return description(ctx.store.meta.get_description(cls, ident))


def set_description(ctx: RequestContext, cls: str, ident: int) -> JSON:
    access.require_domain_access(ctx, cls, ident, write=True)
    row = ctx.store.meta.set_description(cls, ident, ctx.json_object().get("data"))
    return command("description", description(row), "Description saved", "AddDescriptionCommand")


def delete_description(ctx: RequestContext, cls: str, ident: int) -> JSON:
    access.require_domain_access(ctx, cls, ident, write=True)
    row = ctx.store.meta.delete_description(cls, ident)
    return command("description", description(row), "Description deleted", "DeleteDescriptionCommand")
