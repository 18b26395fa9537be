"""Jobs, job parameters (API keys masked) and job data."""

from __future__ import annotations

from collections.abc import Sequence

from mtdp_core.server.api.serialisers.envelopes import JSON, base
from mtdp_core.server.api.serialisers.software import full_name
from mtdp_core.server.domain import Row

#: Parameter names (upper-cased, without ``_``) whose values are API keys, shown masked.
KEY_PARAMETER_NAMES = ("PUBLICKEY", "CYTOMINEPUBLICKEY", "PRIVATEKEY", "CYTOMINEPRIVATEKEY")


def job_parameter(row: Row, *, mask_keys: bool = False) -> JSON:
    value = row["value"]
    if mask_keys and row["name"].upper().replace("_", "") in KEY_PARAMETER_NAMES:
        value = "*********************"
    return base("jobparameter", row) | {
        "value": value,
        "job": row["job_id"],
        "softwareParameter": row["software_parameter_id"],
        "softwareParameterName": row["name"],
        "name": row["name"],
        "humanName": row["human_name"],
        "type": row["type"],
        "index": row["idx"],
        "uri": row["uri"],
        "uriPrintAttribut": row["uri_print"],
        "uriSortAttribut": row["uri_sort"],
    }


def job(row: Row, software_row: Row, job_user: Row | None, launcher: Row | None, parameters: Sequence[Row]) -> JSON:
    name = full_name(software_row)
    return base("job", row) | {
        "algoType": "job",
        "progress": row["progress"],
        "status": row["status"],
        "number": row["number"],
        "statusComment": row["status_comment"],
        "project": row["project_id"],
        "processingServer": None,
        "software": row["software_id"],
        "softwareName": name,
        "name": f"{name} : {row['number']}",
        "rate": row["rate"],
        "dataDeleted": bool(row["data_deleted"]),
        "favorite": bool(row["favorite"]),
        "username": launcher["username"] if launcher else None,
        "userJob": job_user["id"] if job_user else None,
        "jobParameters": [job_parameter(p, mask_keys=True) for p in parameters],
    }


def job_data(row: Row, base_url: str) -> JSON:
    return base("jobdata", row) | {
        "key": row["key"],
        "job": row["job_id"],
        "filename": row["filename"],
        "size": row["size"] or 0,
        "dir": None,
        "value": None,
        "url": f"{base_url}/api/jobdata/{row['id']}/download",
    }
