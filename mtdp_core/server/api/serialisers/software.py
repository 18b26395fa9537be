"""Software, software parameters and software-project links."""

from __future__ import annotations

from collections.abc import Sequence

from mtdp_core.server.api.serialisers.envelopes import JSON, base
from mtdp_core.server.domain import FAILED, INDETERMINATE, INQUEUE, KILLED, NOT_LAUNCH, RUNNING, SUCCESS, WAIT, Row

#: The job counts of a software, by status.
_JOB_COUNTS = {
    "numberOfNotLaunch": NOT_LAUNCH,
    "numberOfInQueue": INQUEUE,
    "numberOfRunning": RUNNING,
    "numberOfSuccess": SUCCESS,
    "numberOfFailed": FAILED,
    "numberOfIndeterminate": INDETERMINATE,
    "numberOfWait": WAIT,
    "numberOfKilled": KILLED,
}


def software_parameter(row: Row) -> JSON:
    default = row["default_value"]
    if default == "" and row["type"] not in ("String", "List", "ListDomain", "Date"):
        # The client types defaults with int()/bool(): an empty default on a Number/Boolean/Domain
        # parameter would crash CytomineJob.from_cli, so it is sent as null.
        default = None
    return base("softwareparameter", row) | {
        "name": row["name"],
        "type": row["type"],
        "defaultParamValue": default,
        "required": bool(row["required"]),
        "software": row["software_id"],
        "index": row["idx"],
        "uri": row["uri"],
        "uriPrintAttribut": row["uri_print"],
        "uriSortAttribut": row["uri_sort"],
        "setByServer": bool(row["set_by_server"]),
        "serverParameter": bool(row["server_parameter"]),
        "humanName": row["human_name"],
        "valueKey": row["value_key"],
        "commandLineFlag": row["command_line_flag"] or "",
    }


def full_name(row: Row) -> str:
    """``name (version)``, or the name of an unversioned software."""
    return f"{row['name']} ({row['software_version']})" if row.get("software_version") else row["name"]


def software(row: Row, parameters: Sequence[Row], job_counts: dict[int, int]) -> JSON:
    """A software with its (not set-by-server) parameters and its jobs counted by status."""
    return base("software", row) | {
        "name": row["name"],
        "fullName": full_name(row),
        "softwareVersion": row["software_version"],
        "app": row.get("app"),  # extension: the descriptor's file stem (e.g. svm_train), for `mtdp server launch`
        "deprecated": bool(row["deprecated"]),
        "resultName": None,
        "defaultProcessingServer": None,
        "softwareUserRepository": None,
        "executeCommand": row["execute_command"],
        "pullingCommand": row["pulling_command"],
        "executable": bool(row["execute_command"]),
        "parameters": [software_parameter(p) for p in parameters if not p["set_by_server"]],
        "numberOfJob": sum(job_counts.values()),
        **{key: job_counts.get(status, 0) for key, status in _JOB_COUNTS.items()},
    }


def software_project(row: Row, software_row: Row) -> JSON:
    return base("softwareproject", row) | {
        "software": row["software_id"],
        "project": row["project_id"],
        "name": software_row["name"],
        "softwareVersion": software_row["software_version"],
    }
