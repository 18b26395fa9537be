"""Projects."""

from __future__ import annotations

from mtdp_core.server.api.serialisers.envelopes import JSON, base
from mtdp_core.server.domain import Row


def project(row: Row, counts: dict[str, int], ontology_name: str | None) -> JSON:
    return base("project", row) | {
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
