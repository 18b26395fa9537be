"""Annotations of a Cytomine project: listing with filters, typed records, training labels.

Listing sends the request of the official client's ``AnnotationCollection(project=...,
...).fetch()`` (one request: ``max=0``; never ``fetch(max=N)``, whose pagination loops forever
when fewer than N annotations exist) through :class:`~mtdp_core.cytomine.client.CytomineSession`:
retried when the server fails, and a refusal (404: an image or user that does not exist) is
reported with the server's reason, which the client's ``False`` hides.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mtdp_core.cytomine.client import CytomineSession
from mtdp_core.cytomine.errors import (
    CytomineRequestError,
    MissingTermError,
    NoAnnotationsError,
    TooFewClassesError,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnnotationRecord:
    """One annotation, as the apps need it.

    Attributes:
        id, image, project, user: Cytomine ids.
        terms: the annotation's term ids (user terms; for an algo annotation, its algo terms).
        location: WKT geometry (Cytomine coordinates: origin bottom-left).
        crop_url: absolute URL of its crop (``.../crop.png``).
        kind: ``"user"``, ``"algo"`` or ``"reviewed"``.
        term_users: for each term, the user who added it (same order as ``terms``).
        parent: for a reviewed annotation, the annotation it validates (terms suggested by a job
            go there: a core accepts them on user and algo annotations only).
    """

    id: int
    image: int
    project: int
    user: int
    terms: tuple[int, ...]
    location: str
    crop_url: str
    kind: str = "user"
    term_users: tuple[int, ...] = ()
    parent: int | None = None

    @property
    def location_hash(self) -> str:
        """Short hash of the geometry: changes when the annotation is edited."""
        return hashlib.sha256(self.location.encode()).hexdigest()[:16]

    @classmethod
    def from_json(cls, item: Mapping[str, Any]) -> AnnotationRecord:
        cls_name = str(item.get("class", ""))
        kind = (
            "algo"
            if cls_name.endswith("AlgoAnnotation")
            else "reviewed"
            if cls_name.endswith("ReviewedAnnotation")
            else "user"
        )
        terms = item.get("term") or []
        users = item.get("userTerm") or []
        return cls(
            id=int(item["id"]),
            image=int(item["image"]),
            project=int(item["project"]),
            user=int(item.get("user") or 0),
            terms=tuple(int(t) for t in terms),
            location=str(item.get("location") or ""),
            crop_url=str(item.get("cropURL") or ""),
            kind=kind,
            term_users=tuple(int(u) for u in users) if len(users) == len(terms) else (),
            parent=int(item["parentIdent"]) if kind == "reviewed" and item.get("parentIdent") else None,
        )


@dataclass(frozen=True)
class AnnotationFilters:
    """Which annotations of a project an app works on (empty tuples: no filter)."""

    project: int
    images: tuple[int, ...] = ()
    users: tuple[int, ...] = ()
    terms: tuple[int, ...] = ()
    reviewed_only: bool = False

    def describe(self, term_names: Mapping[int, str] | None = None) -> str:
        """``"project 12, images 3,4, terms tumour,stroma, reviewed only"``."""
        parts = [f"project {self.project}"]
        if self.images:
            parts.append(f"images {_ids(self.images)}")
        if self.users:
            parts.append(f"users {_ids(self.users)}")
        if self.terms:
            names = [str((term_names or {}).get(t, t)) for t in self.terms]
            parts.append(f"terms {','.join(names)}")
        if self.reviewed_only:
            parts.append("reviewed only")
        return ", ".join(parts)


def _ids(ids: Iterable[int], limit: int = 8) -> str:
    ids = list(ids)
    text = ",".join(str(i) for i in ids[:limit])
    return text + (f",... ({len(ids)} in all)" if len(ids) > limit else "")


def list_annotations(session: CytomineSession, filters: AnnotationFilters) -> list[AnnotationRecord]:
    """The project's annotations matching ``filters``, with their location and terms, oldest first.

    ``reviewed_only`` lists the reviewed (validated) annotations, with their reviewed terms.
    """
    params = {
        "project": filters.project,
        "images": list(filters.images) or None,
        "users": list(filters.users) or None,
        "terms": list(filters.terms) or None,
        "reviewed": True if filters.reviewed_only else None,
        "showBasic": True,
        "showMeta": True,
        "showWKT": True,
        "showTerm": True,
    }
    try:
        rows = session.get_collection("annotation.json", params)
    except CytomineRequestError as exc:
        if exc.status is not None and 400 <= exc.status < 500 and exc.status not in (401, 408, 429):
            raise CytomineRequestError(
                f"Check cytomine_id_images, cytomine_id_users and cytomine_id_terms: listing the annotations of "
                f"project {filters.project} was refused ({exc}).",
                status=exc.status,
                url=exc.url,
            ) from None
        raise
    records = [AnnotationRecord.from_json(row) for row in rows]
    records.sort(key=lambda r: r.id)
    logger.info("%d annotations match %s", len(records), filters.describe())
    return records


def project_terms(session: CytomineSession, project: int) -> dict[int, str]:
    """Term id -> name, for the terms of the project's ontology."""
    items = session.get_collection(f"project/{project}/term.json")
    return {int(t["id"]): str(t["name"]) for t in items}


def require_annotations(
    records: Sequence[AnnotationRecord],
    filters: AnnotationFilters,
    term_names: Mapping[int, str] | None = None,
    what: str = "annotation",
) -> None:
    if not records:
        raise NoAnnotationsError(
            f"Widen the filters or annotate first: no {what} matches ({filters.describe(term_names)})."
        )


@dataclass
class TrainingLabels:
    """Labels of training annotations.

    Attributes:
        labels: one label per annotation (a term id, or 1/0 in binary mode).
        class_names: label -> display name; class_ids: label -> Cytomine term id (None for a
            binary class made of several terms).
        binary: whether the positive/negative grouping was used; positive_terms: its terms.
    """

    labels: list[int]
    class_names: dict[int, str]
    class_ids: dict[int, int | None]
    binary: bool = False
    positive_terms: tuple[int, ...] = ()
    counts: dict[int, int] = field(default_factory=dict)

    def describe(self) -> str:
        return ", ".join(f"{self.class_names[c]} {n}" for c, n in sorted(self.counts.items(), key=lambda kv: -kv[1]))


def training_labels(
    records: Sequence[AnnotationRecord],
    term_names: Mapping[int, str],
    *,
    selected_terms: Sequence[int] = (),
    positive_terms: Sequence[int] = (),
    min_per_class: int = 1,
) -> TrainingLabels:
    """One label per training annotation, or a :class:`MissingTermError` naming those without one.

    An annotation's label is its term among ``selected_terms`` (all terms when empty); an
    annotation with no such term, or with several, cannot be used. With ``positive_terms``
    (binary mode) the label is 1 for those terms and 0 for the others.

    Raises:
        MissingTermError: annotations without a (single) term.
        TooFewClassesError: fewer than two classes (or, in binary mode, no positive or no
            negative annotation), or a class with fewer than ``min_per_class`` annotations
            (cross-validation needs 2), named.
    """
    allowed = set(selected_terms)
    labels: list[int] = []
    untermed: list[int] = []
    ambiguous: list[int] = []
    for record in records:
        candidates = sorted({t for t in record.terms if not allowed or t in allowed})
        if not candidates:
            untermed.append(record.id)
        elif len(candidates) > 1:
            ambiguous.append(record.id)
        else:
            labels.append(candidates[0])
    if untermed:
        raise MissingTermError(
            f"Give each training annotation a term, or select terms (cytomine_id_terms): {len(untermed)} of "
            f"{len(records)} annotations have none (ids {_ids(untermed, 5)})."
        )
    if ambiguous:
        raise MissingTermError(
            f"Keep one term per training annotation, or select terms (cytomine_id_terms): {len(ambiguous)} "
            f"annotations have several (ids {_ids(ambiguous, 5)})."
        )
    if positive_terms:
        positive = set(positive_terms)
        unknown = sorted(positive - set(term_names))
        if unknown:
            raise TooFewClassesError(
                f"Choose positive terms of this project's ontology: {_ids(unknown)} are not among its terms."
            )
        binary_labels = [1 if t in positive else 0 for t in labels]
        counts = Counter(binary_labels)
        pos_names = ", ".join(term_names[t] for t in sorted(positive))
        neg_terms = sorted(set(labels) - positive)
        neg_names = ", ".join(term_names.get(t, str(t)) for t in neg_terms) or "none"
        if len(counts) < 2:
            missing = "positive" if counts.get(1, 0) == 0 else "negative"
            raise TooFewClassesError(
                f"Select annotations of both classes for binary mode: none is {missing} among the "
                f"{len(labels)} selected (positive terms: {pos_names})."
            )
        names = {
            1: f"positive ({pos_names})" if len(positive) > 1 else term_names[next(iter(positive))],
            0: f"negative ({neg_names})" if len(neg_terms) != 1 else term_names.get(neg_terms[0], "negative"),
        }
        ids = {
            1: next(iter(positive)) if len(positive) == 1 else None,
            0: neg_terms[0] if len(neg_terms) == 1 else None,
        }
        _check_class_sizes(dict(counts), names, min_per_class)
        return TrainingLabels(binary_labels, names, ids, True, tuple(sorted(positive)), dict(counts))
    counts = Counter(labels)
    if len(counts) < 2:
        only = next(iter(counts), None)
        raise TooFewClassesError(
            f"Select annotations of at least two terms: only {term_names.get(only, only)!r} "
            f"({len(labels)} annotations) is among those selected."
        )
    names = {t: term_names.get(t, str(t)) for t in counts}
    _check_class_sizes(dict(counts), names, min_per_class)
    return TrainingLabels(labels, names, {t: t for t in counts}, counts=dict(counts))


def _check_class_sizes(counts: Mapping[int, int], names: Mapping[int, str], minimum: int) -> None:
    rare = [(names[c], n) for c, n in sorted(counts.items(), key=lambda kv: kv[1]) if n < minimum]
    if rare:
        listed = ", ".join(f"{name!r} has {n} annotation{'s' if n != 1 else ''}" for name, n in rare)
        raise TooFewClassesError(
            f"Annotate more, or leave these terms out (cytomine_id_terms): {listed}; cross-validation needs at "
            f"least {minimum} per class."
        )
