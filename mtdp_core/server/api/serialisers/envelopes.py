"""The envelopes the client reads, and the fields every object has.

Shapes follow the cores' ``getDataFromDomain`` methods (Grails names and ``class`` values):
every object has ``class``, ``id``, ``created`` and ``updated`` (epoch milliseconds **as
strings**) and ``deleted``. Envelopes:

- a model GET answers the bare object;
- POST/PUT/DELETE answer ``{"<callback>": obj, "message": ..., "printMessage": true,
  "callback": {...}}`` (the client reads ``resp[callback_identifier]``);
- a collection is ``{"collection": [...], "offset": o, "perPage": n, "size": total,
  "totalPages": p}`` (``max=0`` means everything);
- errors are ``{"success": false, "errors": message, "message": message, "status": code}``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from mtdp_core.server.domain import CLASS_NAMES, Row

JSON = dict[str, Any]


def timestamp(value: int | None) -> str | None:
    return None if value is None else str(value)


def base(kind: str, row: Row) -> JSON:
    """The fields every object has; ``kind`` is a key of :data:`CLASS_NAMES`."""
    return {
        "class": CLASS_NAMES[kind],
        "id": row["id"],
        "created": timestamp(row.get("created")),
        "updated": timestamp(row.get("updated")),
        "deleted": None,
    }


def collection(
    items: Sequence[JSON], *, total: int | None = None, offset: int = 0, max_: int = 0, paginated: bool = False
) -> JSON:
    """The collection envelope. Pass ``paginated`` when ``items`` is already the requested page."""
    total = len(items) if total is None else total
    if paginated:
        page = list(items)
    else:
        page = list(items)[offset : offset + max_] if max_ > 0 else list(items)[offset:]
    return {
        "collection": page,
        "offset": offset,
        "perPage": max_ if max_ > 0 else total,
        "size": total,
        "totalPages": math.ceil(total / max_) if max_ > 0 else 1,
    }


def command(keys: str | Sequence[str], obj: JSON, message: str, command_name: str) -> JSON:
    """The answer to a create/update/delete: the object under each callback key the client
    tries, and the core's command (``AddProjectCommand`` -> ``be.cytomine.AddProjectCommand``)."""
    body: JSON = {key: obj for key in ([keys] if isinstance(keys, str) else keys)}
    body.update(
        {
            "message": message,
            "printMessage": True,
            "callback": {"method": f"be.cytomine.{command_name}", "id": obj.get("id")},
            "status": 200,
        }
    )
    return body


def error(message: str, status: int) -> JSON:
    return {"success": False, "errors": message, "message": message, "status": status}
