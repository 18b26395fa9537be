"""Software (Cytomine apps), their parameters, and the projects they are added to.

A software row keeps, besides what the core keeps, what the local processing server needs to
run it: the descriptor's command line, its container image, and the local command that
replaces the container's executable (see :mod:`mtdp_core.server.launcher`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mtdp_core.server.backends.database import Database
from mtdp_core.server.domain import (
    PARAMETER_TYPES,
    Row,
    as_bool,
    as_int,
    now_ms,
    parameter_text,
    parameter_type,
    require_name,
)
from mtdp_core.server.errors import BadRequest, Conflict

if TYPE_CHECKING:
    from mtdp_core.server.backends.projects import ProjectsBackend

#: Body keys of a software and their columns.
SOFTWARE_FIELDS = {
    "name": "name",
    "app": "app",
    "softwareVersion": "software_version",
    "executeCommand": "execute_command",
    "pullingCommand": "pulling_command",
    "commandLine": "command_line",
    "containerImage": "container_image",
    "imageType": "image_type",
    "localCommand": "local_command",
    "descriptor": "descriptor",
    "deprecated": "deprecated",
}
JSON_FIELDS = ("local_command", "descriptor")
#: Body keys of a software parameter (first choice, then the other name clients use) and their columns.
PARAMETER_FIELDS = {
    "default_value": ("defaultValue", "defaultParamValue"),
    "required": ("required",),
    "idx": ("index",),
    "set_by_server": ("setByServer",),
    "server_parameter": ("serverParameter",),
    "human_name": ("humanName",),
    "value_key": ("valueKey",),
    "command_line_flag": ("commandLineFlag",),
    "uri": ("uri",),
    "uri_print": ("uriPrintAttribut",),
    "uri_sort": ("uriSortAttribut",),
}


@dataclass(eq=False)
class SoftwareBackend:
    db: Database
    projects: ProjectsBackend

    # ------------------------------------------------------------------ software
    def create(self, data: dict[str, Any]) -> Row:
        values = _software_columns({k: v for k, v in data.items() if k != "deprecated"})
        values["name"] = require_name(data.get("name"), "software")
        with self.db.transaction() as db:
            sid = self.db.allocate_ids()
            columns = ["id", *values, "created"]
            db.execute(
                f"INSERT INTO software ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                [sid, *values.values(), now_ms()],
            )
        return self.get(sid)

    def get(self, software_id: int) -> Row:
        return _decode(self.db.get("software", software_id, "Software"))

    def find(self, name: str, version: str | None = None) -> Row | None:
        """By name (or by the descriptor's file stem, e.g. ``svm_train``), newest non-deprecated first;
        with ``version``, that version of the name."""
        if version is None:
            row = self.db.one(
                "SELECT * FROM software WHERE (name = ? OR app = ?) ORDER BY deprecated, id DESC LIMIT 1", (name, name)
            )
        else:
            row = self.db.one(
                "SELECT * FROM software WHERE name = ? AND software_version = ? ORDER BY id DESC LIMIT 1",
                (name, version),
            )
        return _decode(row) if row else None

    def list(self, project: int | None = None) -> list[Row]:
        """Every software, or those added to a project."""
        if project is None:
            rows = self.db.all("SELECT * FROM software ORDER BY id")
        else:
            self.projects.get(project)
            rows = self.db.all(
                "SELECT s.* FROM software s JOIN software_project sp ON sp.software_id = s.id"
                " WHERE sp.project_id = ? ORDER BY s.id",
                (project,),
            )
        return [_decode(r) for r in rows]

    def update(self, software_id: int, data: dict[str, Any]) -> Row:
        self.get(software_id)
        values = _software_columns(data)
        if "name" in values:
            values["name"] = require_name(values["name"], "software")
        if values:
            sets = ", ".join(f"{c} = ?" for c in values)
            with self.db.transaction() as db:
                db.execute(
                    f"UPDATE software SET {sets}, updated = ? WHERE id = ?", [*values.values(), now_ms(), software_id]
                )
        return self.get(software_id)

    def delete(self, software_id: int) -> Row:
        """Delete a software without jobs, with its parameters and project links."""
        software = self.get(software_id)
        with self.db.transaction() as db:
            if db.execute("SELECT 1 FROM job WHERE software_id = ?", (software_id,)).fetchone():
                raise BadRequest(f"Software {software_id} has jobs: deprecate it instead of deleting it")
            self.db.delete(
                "software", software_id, ("software_parameter", "software_id"), ("software_project", "software_id")
            )
        return software

    def job_counts(self, software_id: int) -> dict[int, int]:
        """Jobs of the software by status."""
        rows = self.db.all(
            "SELECT status, count(*) AS n FROM job WHERE software_id = ? GROUP BY status", (software_id,)
        )
        return {r["status"]: r["n"] for r in rows}

    # ------------------------------------------------------------------ parameters
    def add_parameter(self, data: dict[str, Any]) -> Row:
        sid = as_int(data.get("software"), "software")
        if sid is None:
            raise BadRequest("A software parameter needs 'software' (its id)")
        self.get(sid)
        name = require_name(data.get("name"), "parameter")
        values = _parameter_columns(data, {"name": name, "type": data.get("type")}, defaults={})
        values["human_name"] = values["human_name"] or name
        values["value_key"] = values["value_key"] or f"[{name.upper()}]"
        with self.db.transaction() as db:
            if db.execute(
                "SELECT 1 FROM software_parameter WHERE software_id = ? AND name = ?", (sid, name)
            ).fetchone():
                raise Conflict(f"Software {sid} already has a parameter {name!r}")
            pid = self.db.allocate_ids()
            columns = ["id", "software_id", *values, "created"]
            db.execute(
                f"INSERT INTO software_parameter ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                [pid, sid, *values.values(), now_ms()],
            )
        return self.get_parameter(pid)

    def get_parameter(self, parameter_id: int) -> Row:
        return self.db.get("software_parameter", parameter_id, "SoftwareParameter")

    def list_parameters(
        self, software_id: int, *, with_set_by_server: bool = True, server_parameters: bool | None = None
    ) -> list[Row]:
        """The parameters in index order; without those the server sets, or only (not) server parameters."""
        self.get(software_id)
        sql = "SELECT * FROM software_parameter WHERE software_id = ?"
        if not with_set_by_server:
            sql += " AND set_by_server = 0"
        if server_parameters is not None:
            sql += f" AND server_parameter = {int(server_parameters)}"
        return self.db.all(sql + " ORDER BY idx, id", (software_id,))

    def update_parameter(self, parameter_id: int, data: dict[str, Any]) -> Row:
        param = self.get_parameter(parameter_id)
        named = {"name": data.get("name", param["name"]), "type": data.get("type", param["type"])}
        values = _parameter_columns(data, named, defaults=param)
        sets = ", ".join(f"{c} = ?" for c in values)
        with self.db.transaction() as db:
            db.execute(
                f"UPDATE software_parameter SET {sets}, updated = ? WHERE id = ?",
                [*values.values(), now_ms(), parameter_id],
            )
        return self.get_parameter(parameter_id)

    def delete_parameter(self, parameter_id: int) -> Row:
        param = self.get_parameter(parameter_id)
        self.db.delete("software_parameter", parameter_id)
        return param

    # ------------------------------------------------------------------ software in projects
    def add_to_project(self, software_id: int, project_id: int) -> Row:
        self.get(software_id)
        self.projects.get(project_id)
        with self.db.transaction() as db:
            if self._link_id(software_id, project_id) is not None:
                raise Conflict(f"Software {software_id} is already in project {project_id}")
            spid = self.db.allocate_ids()
            db.execute(
                "INSERT INTO software_project (id, software_id, project_id, created) VALUES (?, ?, ?, ?)",
                (spid, software_id, project_id, now_ms()),
            )
        return self.get_project_link(spid)

    def ensure_in_project(self, software_id: int, project_id: int) -> None:
        if self._link_id(software_id, project_id) is None:
            self.add_to_project(software_id, project_id)

    def get_project_link(self, link_id: int) -> Row:
        return self.db.get("software_project", link_id, "SoftwareProject")

    def list_project_links(self, project_id: int) -> list[Row]:
        self.projects.get(project_id)
        return self.db.all("SELECT * FROM software_project WHERE project_id = ? ORDER BY id", (project_id,))

    def remove_project_link(self, link_id: int) -> Row:
        row = self.get_project_link(link_id)
        self.db.delete("software_project", link_id)
        return row

    def _link_id(self, software_id: int, project_id: int) -> int | None:
        return self.db.scalar(
            "SELECT id FROM software_project WHERE software_id = ? AND project_id = ?", (software_id, project_id)
        )


def _software_columns(data: dict[str, Any]) -> dict[str, Any]:
    """Column values of the software fields present in ``data`` (JSON columns encoded)."""
    values: dict[str, Any] = {}
    for key, column in SOFTWARE_FIELDS.items():
        if key in data:
            value = data[key]
            if column == "deprecated":
                value = int(as_bool(value))
            elif column in JSON_FIELDS and value is not None and not isinstance(value, str):
                value = json.dumps(value)
            values[column] = value
    return values


def _parameter_columns(data: dict[str, Any], named: dict[str, Any], defaults: Row | dict) -> dict[str, Any]:
    """Column values of a software parameter: ``data``'s fields, else ``defaults``' columns."""
    ptype = parameter_type(named["type"])
    if ptype is None:
        raise BadRequest(f"Invalid parameter type {named['type']!r}: use one of {', '.join(PARAMETER_TYPES)}")
    raw = {}
    for column, keys in PARAMETER_FIELDS.items():
        present = next((k for k in keys if k in data), None)
        raw[column] = data[present] if present is not None else defaults.get(column)
    return {
        "name": named["name"],
        "type": ptype,
        **raw,
        "default_value": parameter_text(raw["default_value"]),
        "required": int(as_bool(raw["required"])),
        "idx": as_int(raw["idx"], "index", default=0),
        "set_by_server": int(as_bool(raw["set_by_server"])),
        "server_parameter": int(as_bool(raw["server_parameter"])),
        "command_line_flag": raw["command_line_flag"] or "",
    }


def _decode(row: Row) -> Row:
    for key in JSON_FIELDS:
        if row.get(key):
            try:
                row[key] = json.loads(row[key])
            except (TypeError, ValueError):
                pass
    return row
