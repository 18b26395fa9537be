"""JSON shapes of the local server (moto's "responses"): one function per Cytomine domain class,
plus the envelopes the client reads.

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
from collections.abc import Iterable, Sequence
from typing import Any

from mtdp_core.server.models import ANNOTATION_KINDS, CLASS_NAMES, CytomineStore, Row

JSON = dict[str, Any]

#: List columns of annotation listings by show-group (UserAnnotationListing.getAvailableColumn).
ANNOTATION_GROUPS = ("basic", "meta", "wkt", "gis", "term", "image", "user", "slice", "algo")
DEFAULT_ANNOTATION_GROUPS = ("basic", "meta", "term")
AREA_UNIT, PERIMETER_UNIT = "pixels²", "pixels"
KEY_PARAMETER_NAMES = ("PUBLICKEY", "CYTOMINEPUBLICKEY", "PRIVATEKEY", "CYTOMINEPRIVATEKEY")


def _ts(value: int | None) -> str | None:
    return None if value is None else str(value)


def _base(kind: str, row: Row) -> JSON:
    return {
        "class": CLASS_NAMES[kind],
        "id": row["id"],
        "created": _ts(row.get("created")),
        "updated": _ts(row.get("updated")),
        "deleted": None,
    }


# ---------------------------------------------------------------------- envelopes
def collection(
    items: Sequence[JSON], *, total: int | None = None, offset: int = 0, max_: int = 0, paginated: bool = False
) -> JSON:
    """The collection envelope. Pass ``paginated`` when ``items`` is already the requested page."""
    total = len(items) if total is None else total
    if paginated:
        page = list(items)
    else:
        page = list(items)[offset : offset + max_] if max_ > 0 else list(items)[offset:]
    per_page = max_ if max_ > 0 else total
    return {
        "collection": page,
        "offset": offset,
        "perPage": per_page,
        "size": total,
        "totalPages": math.ceil(total / max_) if max_ > 0 else 1,
    }


def command(keys: Iterable[str], obj: JSON, message: str, method: str) -> JSON:
    """The answer to a create/update/delete: the object under each callback key the client tries."""
    body: JSON = {key: obj for key in keys}
    body.update(
        {"message": message, "printMessage": True, "callback": {"method": method, "id": obj.get("id")}, "status": 200}
    )
    return body


def error(message: str, status: int) -> JSON:
    return {"success": False, "errors": message, "message": message, "status": status}


# ---------------------------------------------------------------------- users
def user(row: Row, *, viewer: Row | None = None, store: CytomineStore | None = None, current: bool = False) -> JSON:
    """A human user or a job user (UserJob); keys are shown to the user itself, and a job
    user's keys also to the human who launched it (and to administrators)."""
    if row["algo"]:
        data = _base("userjob", row)
        human = store.get_user(row["launcher_id"]) if store is not None and row["launcher_id"] else None
        data.update(
            {
                "username": row["username"],
                "algo": True,
                "humanUsername": human["username"] if human else None,
                "job": row["job_id"],
                "user": row["launcher_id"],
                "rate": -1.0,
                "admin": False,
                "guest": False,
                "isSwitched": False,
            }
        )
        can_see_keys = viewer is not None and (viewer["id"] in (row["id"], row["launcher_id"]) or viewer["is_admin"])
    else:
        data = _base("user", row)
        data.update(
            {
                "username": row["username"],
                "firstname": row["firstname"],
                "lastname": row["lastname"],
                "email": row["email"],
                "language": "ENGLISH",
                "isDeveloper": False,
                "enabled": True,
                "algo": False,
                "origin": "BOOTSTRAP",
                "admin": bool(row["is_admin"]),
                "user": not bool(row["is_admin"]),
                "guest": False,
                "color": None,
            }
        )
        can_see_keys = viewer is not None and viewer["id"] == row["id"]
    if can_see_keys:
        data["publicKey"] = row["public_key"]
        data["privateKey"] = row["private_key"]
    if current:
        admin = bool(row["is_admin"])
        data.update(
            {
                "adminByNow": admin,
                "userByNow": not admin and not row["algo"],
                "guestByNow": False,
                "isSwitched": False,
                "isSuperAdmin": admin,
            }
        )
    return data


def user_keys(row: Row) -> JSON:
    return {"publicKey": row["public_key"], "privateKey": row["private_key"]}


# ---------------------------------------------------------------------- ontology
def term(row: Row) -> JSON:
    data = _base("term", row)
    data.update(
        {
            "name": row["name"],
            "comment": row["comment"],
            "ontology": row["ontology_id"],
            "color": row["color"],
            "parent": row["parent_id"],
        }
    )
    return data


def ontology(row: Row, terms: Sequence[Row], project_ids: Sequence[int] = ()) -> JSON:
    data = _base("ontology", row)
    children = [
        {
            **term(t),
            "title": t["name"],
            "key": t["id"],
            "isFolder": False,
            "hidden": False,
            "checked": False,
            "children": [],
        }
        for t in terms
    ]
    data.update(
        {
            "name": row["name"],
            "title": row["name"],
            "attr": {"id": row["id"], "type": CLASS_NAMES["ontology"]},
            "data": row["name"],
            "isFolder": True,
            "key": row["id"],
            "hideCheckbox": True,
            "state": "open",
            "projects": [{"id": p} for p in project_ids],
            "user": row["user_id"],
            "children": children,
        }
    )
    return data


# ---------------------------------------------------------------------- projects and images
def project(row: Row, counts: dict[str, int], ontology_name: str | None) -> JSON:
    data = _base("project", row)
    data.update(
        {
            "name": row["name"],
            "ontology": row["ontology_id"],
            "ontologyName": ontology_name,
            "discipline": None,
            "disciplineName": None,
            "blindMode": False,
            "areImagesDownloadable": True,
            "isClosed": False,
            "isReadOnly": False,
            "isRestricted": False,
            "hideUsersLayers": False,
            "hideAdminsLayers": False,
            "mode": "CLASSIC",
            "retrievalDisable": True,
            "retrievalAllOntology": False,
            "numberOfSlides": 0,
            "numberOfImages": counts.get("images", 0),
            "numberOfAnnotations": counts.get("user", 0),
            "numberOfJobAnnotations": counts.get("algo", 0),
            "numberOfReviewedAnnotations": counts.get("reviewed", 0),
            "user": row["user_id"],
        }
    )
    return data


def abstract_image(row: Row, base_url: str, zoom: int) -> JSON:
    data = _base("abstractimage", row)
    data.update(_image_fields(row, zoom))
    data.update(
        {
            "filename": row["path"],
            "originalFilename": row["original_filename"],
            "path": row["path"],
            "uploadedFile": None,
            "user": row.get("user_id"),
            "thumb": f"{base_url}/api/abstractimage/{row['id']}/thumb.png?maxSize=512",
            "preview": f"{base_url}/api/abstractimage/{row['id']}/thumb.png?maxSize=1024",
        }
    )
    return data


def _image_fields(row: Row, zoom: int) -> JSON:
    mime = row.get("mime") or "application/octet-stream"
    return {
        "width": row["width"],
        "height": row["height"],
        "depth": 1,
        "duration": 1,
        "channels": 1,
        "samplePerPixel": row["samples"],
        "bitPerSample": 8,
        "bitDepth": 8,
        "colorspace": "RGB" if row["samples"] == 3 else "GRAYSCALE",
        "physicalSizeX": None,
        "physicalSizeY": None,
        "physicalSizeZ": None,
        "fps": None,
        "magnification": None,
        "resolution": None,
        "zoom": zoom,
        "contentType": mime,
        "mime": mime,
        "extension": row["path"].rsplit(".", 1)[-1].lower(),
    }


def image_instance(row: Row, base_url: str, zoom: int, counts: dict[str, int] | None = None) -> JSON:
    data = _base("imageinstance", row)
    counts = counts or {}
    data.update(_image_fields(row, zoom))
    data.update(
        {
            "baseImage": row["base_image_id"],
            "project": row["project_id"],
            "user": row["user_id"],
            "instanceFilename": row["instance_filename"],
            "originalFilename": row["original_filename"],
            "filename": row["path"],
            "path": row["path"],
            "fullPath": row["path"],
            "sample": None,
            "blindedName": None,
            "numberOfAnnotations": counts.get("user", 0),
            "numberOfJobAnnotations": counts.get("algo", 0),
            "numberOfReviewedAnnotations": counts.get("reviewed", 0),
            "reviewed": False,
            "inReview": False,
            "reviewStart": None,
            "reviewStop": None,
            "reviewUser": None,
            "referenceSlice": row["slice_id"],
            "thumb": f"{base_url}/api/imageinstance/{row['id']}/thumb.png?maxSize=512",
            "preview": f"{base_url}/api/imageinstance/{row['id']}/thumb.png?maxSize=1024",
            "macroURL": None,
        }
    )
    return data


def slice_instance(image: Row, base_url: str) -> JSON:
    return {
        "class": CLASS_NAMES["sliceinstance"],
        "id": image["slice_id"],
        "created": _ts(image["created"]),
        "updated": None,
        "deleted": None,
        "image": image["id"],
        "project": image["project_id"],
        "baseSlice": image["slice_id"],
        "channel": 0,
        "zStack": 0,
        "time": 0,
        "rank": 0,
        "mime": image["mime"],
        "path": image["path"],
        "imageServerUrl": base_url,
    }


# ---------------------------------------------------------------------- annotations
def _annotation_urls(row: Row, base_url: str) -> JSON:
    domain = ANNOTATION_KINDS[row["kind"]]
    return {
        "cropURL": f"{base_url}/api/{domain}/{row['id']}/crop.png",
        "smallCropURL": f"{base_url}/api/{domain}/{row['id']}/crop.png?maxSize=256",
        "url": f"{base_url}/api/{domain}/{row['id']}.json",
        "imageURL": f"{base_url}/#/project/{row['project_id']}/image/{row['image_id']}/annotation/{row['id']}",
    }


def annotation(row: Row, base_url: str) -> JSON:
    """One annotation, as ``GET /api/annotation/{id}.json`` answers (UserAnnotation.getDataFromDomain)."""
    kind = ANNOTATION_KINDS[row["kind"]]
    data = _base(kind, row)
    terms = row.get("terms", [])
    by_term: dict[int, JSON] = {}
    for t in terms:
        entry = by_term.setdefault(t["term_id"], {"id": t["id"], "term": t["term_id"], "user": []})
        entry["user"].append(t["user_id"])
    data.update(
        {
            "slice": row["slice_id"],
            "image": row["image_id"],
            "project": row["project_id"],
            "user": row["user_id"],
            "location": row["location"],
            "geometryCompression": row["geometry_compression"],
            "centroid": {"x": row["cx"], "y": row["cy"]},
            "area": row["area"],
            "areaUnit": AREA_UNIT,
            "perimeter": row["perimeter"],
            "perimeterUnit": PERIMETER_UNIT,
            "term": list(by_term),
            "userByTerm": list(by_term.values()),
            "nbComments": 0,
            "reviewed": bool(row.get("count_reviewed")),
            "track": [],
            "annotationTrack": [],
            "group": None,
        }
    )
    if row["kind"] == "algo":
        rates = [t.get("rate") for t in terms if t.get("rate") is not None]
        data["rate"] = max(rates) if rates else None
    if row["kind"] == "reviewed":
        data.update(
            {
                "parentIdent": row["parent_id"],
                "parentClassName": CLASS_NAMES["userannotation"],
                "reviewUser": row["review_user_id"],
                "status": 0,
            }
        )
    data.update(_annotation_urls(row, base_url))
    return data


def annotation_listing_item(row: Row, groups: set[str], base_url: str, extra: dict[int, JSON]) -> JSON:
    """One row of ``GET /api/annotation.json`` with only the asked show-groups.

    ``extra`` maps image/user ids to the columns of the ``image`` and ``user`` groups.
    """
    kind = ANNOTATION_KINDS[row["kind"]]
    item: JSON = {"class": CLASS_NAMES[kind], "id": row["id"]}
    if "meta" in groups:
        item.update(
            {
                "created": _ts(row["created"]),
                "updated": _ts(row["updated"]),
                "image": row["image_id"],
                "slice": row["slice_id"],
                "project": row["project_id"],
                "user": row["user_id"],
                "nbComments": 0,
                "countReviewedAnnotations": row.get("count_reviewed", 0),
                "reviewed": bool(row.get("count_reviewed")),
            }
        )
        if row["kind"] == "reviewed":
            item.update({"parentIdent": row["parent_id"], "reviewUser": row["review_user_id"]})
        item.update(_annotation_urls(row, base_url))
    if "wkt" in groups:
        item.update({"location": row["location"], "geometryCompression": row["geometry_compression"]})
    if "gis" in groups:
        item.update(
            {
                "area": row["area"],
                "areaUnit": AREA_UNIT,
                "perimeter": row["perimeter"],
                "perimeterUnit": PERIMETER_UNIT,
                "x": row["cx"],
                "y": row["cy"],
            }
        )
    if "term" in groups:
        terms = row.get("terms", [])
        item.update(
            {
                "term": list(dict.fromkeys(t["term_id"] for t in terms)),
                "annotationTerms": [t["id"] for t in terms],
                "userTerm": [t["user_id"] for t in terms],
            }
        )
    if "image" in groups:
        item.update(extra.get(row["image_id"], {}))
    if "user" in groups:
        item.update(extra.get(-row["user_id"], {}))
    if "slice" in groups:
        item.update({"channel": 0, "zStack": 0, "time": 0})
    if "algo" in groups and "algo_term" in row:
        suggestion = row["algo_term"]
        item.update(
            {
                "algoAnnotationTerm": suggestion["id"],
                "rate": suggestion["rate"],
                "idTerm": suggestion["term_id"],
                "idExpectedTerm": suggestion["expected_term_id"],
                "userJob": suggestion["user_id"],
            }
        )
    return item


def annotation_term(row: Row) -> JSON:
    data = _base("annotationterm", row)
    data.update(
        {
            "userannotation": row["annotation_id"],
            "annotation": row["annotation_id"],
            "term": row["term_id"],
            "user": row["user_id"],
            "expectedTerm": None,
        }
    )
    return data


def algo_annotation_term(row: Row) -> JSON:
    data = _base("algoannotationterm", row)
    kind = ANNOTATION_KINDS[row.get("annotation_kind", "user")]
    data.update(
        {
            "annotationIdent": row["annotation_id"],
            "annotation": row["annotation_id"],
            "annotationClassName": CLASS_NAMES[kind],
            "term": row["term_id"],
            "expectedTerm": row["expected_term_id"],
            "user": row["user_id"],
            "userJob": row["user_id"],
            "rate": row["rate"],
        }
    )
    return data


# ---------------------------------------------------------------------- meta
def property_(row: Row) -> JSON:
    data = _base("property", row)
    data.update(
        {
            "domainClassName": row["domain_class"],
            "domainIdent": row["domain_ident"],
            "key": row["key"],
            "value": row["value"],
        }
    )
    return data


def attached_file(row: Row, base_url: str) -> JSON:
    data = _base("attachedfile", row)
    data.update(
        {
            "domainClassName": row["domain_class"],
            "domainIdent": row["domain_ident"],
            "filename": row["filename"],
            "key": row["key"],
            "size": row["size"],
            "url": f"{base_url}/api/attachedfile/{row['id']}/download",
        }
    )
    return data


def description(row: Row) -> JSON:
    data = _base("description", row)
    data.update({"domainClassName": row["domain_class"], "domainIdent": row["domain_ident"], "data": row["data"]})
    return data


# ---------------------------------------------------------------------- software and jobs
def software_parameter(row: Row) -> JSON:
    data = _base("softwareparameter", row)
    default = row["default_value"]
    if default == "" and row["type"] not in ("String", "List", "ListDomain", "Date"):
        # The client types defaults with int()/bool(): an empty default on a Number/Boolean/Domain
        # parameter would crash CytomineJob.from_cli, so it is sent as null.
        default = None
    data.update(
        {
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
    )
    return data


def software_full_name(row: Row) -> str:
    return f"{row['name']} ({row['software_version']})" if row.get("software_version") else row["name"]


def software(row: Row, parameters: Sequence[Row], job_counts: dict[int, int]) -> JSON:
    data = _base("software", row)
    data.update(
        {
            "name": row["name"],
            "fullName": software_full_name(row),
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
            "numberOfNotLaunch": job_counts.get(0, 0),
            "numberOfInQueue": job_counts.get(1, 0),
            "numberOfRunning": job_counts.get(2, 0),
            "numberOfSuccess": job_counts.get(3, 0),
            "numberOfFailed": job_counts.get(4, 0),
            "numberOfIndeterminate": job_counts.get(5, 0),
            "numberOfWait": job_counts.get(6, 0),
            "numberOfKilled": job_counts.get(8, 0),
        }
    )
    return data


def software_project(row: Row, software_row: Row) -> JSON:
    data = _base("softwareproject", row)
    data.update(
        {
            "software": row["software_id"],
            "project": row["project_id"],
            "name": software_row["name"],
            "softwareVersion": software_row["software_version"],
        }
    )
    return data


def job_parameter(row: Row, *, mask_keys: bool = False) -> JSON:
    data = _base("jobparameter", row)
    value = row["value"]
    if mask_keys and row["name"].upper().replace("_", "") in KEY_PARAMETER_NAMES:
        value = "*********************"
    data.update(
        {
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
    )
    return data


def job(row: Row, software_row: Row, job_user: Row | None, human: Row | None, parameters: Sequence[Row]) -> JSON:
    data = _base("job", row)
    name = software_full_name(software_row)
    data.update(
        {
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
            "username": human["username"] if human else None,
            "userJob": job_user["id"] if job_user else None,
            "jobParameters": [job_parameter(p, mask_keys=True) for p in parameters],
        }
    )
    return data


def job_data(row: Row, base_url: str) -> JSON:
    data = _base("jobdata", row)
    data.update(
        {
            "key": row["key"],
            "job": row["job_id"],
            "filename": row["filename"],
            "size": row["size"] or 0,
            "dir": None,
            "value": None,
            "url": f"{base_url}/api/jobdata/{row['id']}/download",
        }
    )
    return data
