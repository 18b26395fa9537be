"""Annotations (one object, and the rows of listings with their show-groups) and their terms."""

from __future__ import annotations

from mtdp_core.server.api.serialisers.envelopes import JSON, base, timestamp
from mtdp_core.server.domain import ANNOTATION_KINDS, CLASS_NAMES, Row

AREA_UNIT, PERIMETER_UNIT = "pixels²", "pixels"


def _urls(row: Row, base_url: str) -> JSON:
    domain = ANNOTATION_KINDS[row["kind"]]
    return {
        "cropURL": f"{base_url}/api/{domain}/{row['id']}/crop.png",
        "smallCropURL": f"{base_url}/api/{domain}/{row['id']}/crop.png?maxSize=256",
        "url": f"{base_url}/api/{domain}/{row['id']}.json",
        "imageURL": f"{base_url}/#/project/{row['project_id']}/image/{row['image_id']}/annotation/{row['id']}",
    }


def _measures(row: Row) -> JSON:
    return {"area": row["area"], "areaUnit": AREA_UNIT, "perimeter": row["perimeter"], "perimeterUnit": PERIMETER_UNIT}


def _by_kind(row: Row, terms: list[Row]) -> JSON:
    """What only algo annotations (their best rate) and reviewed annotations (their origin) have."""
    if row["kind"] == "algo":
        rates = [t.get("rate") for t in terms if t.get("rate") is not None]
        return {"rate": max(rates) if rates else None}
    if row["kind"] == "reviewed":
        return {
            "parentIdent": row["parent_id"],
            "parentClassName": CLASS_NAMES["userannotation"],
            "reviewUser": row["review_user_id"],
            "status": 0,
        }
    return {}


def annotation(row: Row, base_url: str) -> JSON:
    """One annotation, as ``GET /api/annotation/{id}.json`` answers (UserAnnotation.getDataFromDomain)."""
    terms = row.get("terms", [])
    by_term: dict[int, JSON] = {}
    for t in terms:
        entry = by_term.setdefault(t["term_id"], {"id": t["id"], "term": t["term_id"], "user": []})
        entry["user"].append(t["user_id"])
    return base(ANNOTATION_KINDS[row["kind"]], row) | {
        "slice": row["slice_id"],
        "image": row["image_id"],
        "project": row["project_id"],
        "user": row["user_id"],
        "location": row["location"],
        "geometryCompression": row["geometry_compression"],
        "centroid": {"x": row["cx"], "y": row["cy"]},
        **_measures(row),
        "term": list(by_term),
        "userByTerm": list(by_term.values()),
        "nbComments": 0,
        "reviewed": bool(row.get("count_reviewed")),
        "track": [],
        "annotationTrack": [],
        "group": None,
        **_by_kind(row, terms),
        **_urls(row, base_url),
    }


def listing_item(row: Row, groups: set[str], base_url: str, extra: dict[int, JSON]) -> JSON:
    """One row of ``GET /api/annotation.json`` with only the asked show-groups.

    ``extra`` maps image ids, and user ids negated, to the columns of the ``image`` and ``user`` groups.
    """
    item: JSON = {"class": CLASS_NAMES[ANNOTATION_KINDS[row["kind"]]], "id": row["id"]}
    if "meta" in groups:
        item.update(_meta_group(row, base_url))
    if "wkt" in groups:
        item.update({"location": row["location"], "geometryCompression": row["geometry_compression"]})
    if "gis" in groups:
        item.update({**_measures(row), "x": row["cx"], "y": row["cy"]})
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
        item.update(_algo_group(row["algo_term"]))
    return item


def _meta_group(row: Row, base_url: str) -> JSON:
    meta = {
        "created": timestamp(row["created"]),
        "updated": timestamp(row["updated"]),
        "image": row["image_id"],
        "slice": row["slice_id"],
        "project": row["project_id"],
        "user": row["user_id"],
        "nbComments": 0,
        "countReviewedAnnotations": row.get("count_reviewed", 0),
        "reviewed": bool(row.get("count_reviewed")),
    }
    if row["kind"] == "reviewed":
        meta.update({"parentIdent": row["parent_id"], "reviewUser": row["review_user_id"]})
    return {**meta, **_urls(row, base_url)}


def _algo_group(suggestion: Row) -> JSON:
    """The ``showAlgo`` columns: one algo term suggested on the annotation."""
    return {
        "algoAnnotationTerm": suggestion["id"],
        "rate": suggestion["rate"],
        "idTerm": suggestion["term_id"],
        "idExpectedTerm": suggestion["expected_term_id"],
        "userJob": suggestion["user_id"],
    }


def listing_extras(images: list[Row], users: list[Row]) -> dict[int, JSON]:
    """The columns of the ``image`` group (by image id) and ``user`` group (by negated user id)."""
    extra: dict[int, JSON] = {}
    for image in images:
        name = image["original_filename"]
        extra[image["id"]] = {"originalFilename": name, "instanceFilename": image["instance_filename"] or name}
    for user in users:
        extra[-user["id"]] = {"creator": user["username"], "lastname": user["lastname"], "firstname": user["firstname"]}
    return extra


def annotation_term(row: Row) -> JSON:
    """A person's term on an annotation (the core's AnnotationTerm)."""
    return base("annotationterm", row) | {
        "userannotation": row["annotation_id"],
        "annotation": row["annotation_id"],
        "term": row["term_id"],
        "user": row["user_id"],
        "expectedTerm": None,
    }


def algo_annotation_term(row: Row) -> JSON:
    """A job's suggested term (``row["annotation_kind"]``: the kind of the annotation it is on)."""
    kind = ANNOTATION_KINDS[row.get("annotation_kind", "user")]
    return base("algoannotationterm", row) | {
        "annotationIdent": row["annotation_id"],
        "annotation": row["annotation_id"],
        "annotationClassName": CLASS_NAMES[kind],
        "term": row["term_id"],
        "expectedTerm": row["expected_term_id"],
        "user": row["user_id"],
        "userJob": row["user_id"],
        "rate": row["rate"],
    }
