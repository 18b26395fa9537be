"""Properties, attached files and descriptions."""

from __future__ import annotations

from mtdp_core.server.api.serialisers.envelopes import JSON, base
from mtdp_core.server.domain import Row


def _on(row: Row) -> JSON:
    return {"domainClassName": row["domain_class"], "domainIdent": row["domain_ident"]}


def property_(row: Row) -> JSON:
    return base("property", row) | {**_on(row), "key": row["key"], "value": row["value"]}


def attached_file(row: Row, base_url: str) -> JSON:
    return base("attachedfile", row) | {
        **_on(row),
        "filename": row["filename"],
        "key": row["key"],
        "size": row["size"],
        "url": f"{base_url}/api/attachedfile/{row['id']}/download",
    }


def description(row: Row) -> JSON:
    return base("description", row) | {**_on(row), "data": row["data"]}
