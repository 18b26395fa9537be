"""What an annotation listing asks for, and the SQL that answers it.

A request to ``GET /api/annotation.json`` (or ``/api/annotation/search.json``) is turned into one
or two :class:`AnnotationQuery` as the core's ``AnnotationListingBuilder`` decides
(:func:`build_queries`): reviewed annotations, or user annotations, or (``includeAlgo``, or a
job user among the users) algo annotations followed by user annotations whose *suggested* term
matches. :func:`where_clause` turns a query into SQL over the ``annotation`` table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shapely.geometry.base import BaseGeometry

from mtdp_core.server.backends.database import marks
from mtdp_core.server.domain import as_bool, as_int, id_union, parse_id_list
from mtdp_core.server.errors import NotFound
from mtdp_core.server.geometry import parse_bbox

if TYPE_CHECKING:
    from mtdp_core.server.backends.annotations import AnnotationsBackend

#: Show-group switches of annotation listings and the groups they select (ParamsService).
SHOW_GROUPS = {
    "showBasic": "basic",
    "showMeta": "meta",
    "showWKT": "wkt",
    "showGIS": "gis",
    "showTerm": "term",
    "showImage": "image",
    "showAlgo": "algo",
    "showUser": "user",
    "showSlice": "slice",
    "showTrack": "track",
    "showImageGroup": "imageGroup",
    "showLink": "group",
}
#: The groups of a listing that names none (and of ``showDefault``).
DEFAULT_GROUPS = ("basic", "meta", "term")


@dataclass
class AnnotationQuery:
    """Filters of an annotation listing (the query parameters of ``GET /api/annotation.json``)."""

    kind: str = "user"
    project: int | None = None
    projects: list[int] | None = None  # only these projects (the caller's); None: no restriction
    images: list[int] | None = None
    slices: list[int] | None = None
    users: list[int] | None = None
    terms: list[int] | None = None
    no_term: bool = False
    multiple_term: bool = False
    no_algo_term: bool = False
    suggested_terms: list[int] | None = None
    users_for_term_algo: list[int] | None = None
    review_users: list[int] | None = None
    not_reviewed_only: bool = False
    parents: list[int] | None = None
    bbox: BaseGeometry | None = None
    after: int | None = None
    before: int | None = None
    excluded: int | None = None
    with_algo_terms: bool = False  # "showAlgo": one row per algo term on each annotation

    @property
    def term_table(self) -> str:
        return "algo_annotation_term" if self.kind == "algo" else "annotation_term"


def show_groups(params: dict[str, Any]) -> set[str]:
    """The show-groups a listing asks for (``showX`` / ``hideX`` / ``showDefault``)."""
    groups = [group for switch, group in SHOW_GROUPS.items() if as_bool(params.get(switch))]
    if as_bool(params.get("showDefault")) or not groups:
        groups += list(DEFAULT_GROUPS)
    hidden = {group for switch, group in SHOW_GROUPS.items() if as_bool(params.get(switch.replace("show", "hide")))}
    return {g for g in groups if g not in hidden} | {"basic"}


def build_queries(
    params: dict[str, Any], backend: AnnotationsBackend, projects: list[int] | None = None
) -> list[AnnotationQuery]:
    """The listings a request asks for, as the core's AnnotationListingBuilder decides; only in
    ``projects`` when given (the projects the caller may read)."""
    users = list(dict.fromkeys(id_union(params, "user", "users")))
    job = as_int(params.get("job"), "job")
    if job is not None:
        users = [_job_user_id(backend, job)]
    terms = id_union(params, "term", "terms")
    suggested = id_union(params, "suggestedTerm", "suggestedTerms")
    common = {**_common_filters(params, backend, users), "projects": projects}
    if as_bool(params.get("reviewed")):
        return [AnnotationQuery(kind="reviewed", terms=terms or None, suggested_terms=suggested or None, **common)]
    single_user = parse_id_list(params.get("user"))
    if single_user and len(single_user) == 1:
        backend.users.get(single_user[0])  # 404 for an unknown "user", as the core; "users" are not checked
    if as_bool(params.get("includeAlgo")) or any(u["algo"] for u in backend.users.get_many(users)):
        # The core lists algo annotations, then user annotations whose *suggested* term matches.
        algo_common = {**common, "users_for_term_algo": None, "with_algo_terms": False}
        algo = AnnotationQuery(kind="algo", terms=terms or None, suggested_terms=suggested or None, **algo_common)
        human = AnnotationQuery(kind="user", suggested_terms=(terms + suggested) or None, **common)
        return [algo, human]
    return [AnnotationQuery(kind="user", terms=terms or None, suggested_terms=suggested or None, **common)]


def _common_filters(params: dict[str, Any], backend: AnnotationsBackend, users: list[int]) -> dict[str, Any]:
    """The filters every query of a listing shares; unknown projects and images are 404."""
    for_term_algo = id_union(params, "userForTermAlgo", "usersForTermAlgo")
    job_for_term_algo = as_int(params.get("jobForTermAlgo"), "jobForTermAlgo")
    if job_for_term_algo is not None:
        for_term_algo.append(_job_user_id(backend, job_for_term_algo))
    project = as_int(params.get("project"), "project")
    if project is not None:
        backend.projects.get(project)
    images = id_union(params, "image", "images")
    for image_id in images:
        backend.images.get(image_id)
    bbox = None
    if params.get("bbox"):
        bbox = parse_bbox(str(params["bbox"]))
    elif params.get("bboxAnnotation"):
        bbox = backend.geometry(as_int(params["bboxAnnotation"], "bboxAnnotation") or 0)
    return dict(
        project=project,
        images=images or None,
        slices=id_union(params, "slice", "slices") or None,
        users=users or None,
        no_term=as_bool(params.get("noTerm")),
        multiple_term=as_bool(params.get("multipleTerm")),
        no_algo_term=as_bool(params.get("noAlgoTerm")),
        review_users=parse_id_list(params.get("reviewUsers")),
        not_reviewed_only=as_bool(params.get("notReviewedOnly")),
        bbox=bbox,
        after=as_int(params.get("afterThan"), "afterThan"),
        before=as_int(params.get("beforeThan"), "beforeThan"),
        excluded=as_int(params.get("excludedAnnotation"), "excludedAnnotation"),
        users_for_term_algo=for_term_algo or None,
        with_algo_terms="algo" in show_groups(params),
    )


def _job_user_id(backend: AnnotationsBackend, job_id: int) -> int:
    job_user = backend.users.job_user(job_id)
    if job_user is None:
        raise NotFound(f"Job {job_id} not found")
    return job_user["id"]


def where_clause(q: AnnotationQuery) -> tuple[str, list[Any]]:
    """SQL conditions on ``annotation a`` (and their parameters) for ``q``."""
    clauses = ["a.kind = ?"]
    params: list[Any] = [q.kind]

    def add(clause: str, *values: Any) -> None:
        clauses.append(clause)
        params.extend(values)

    if q.project is not None:
        add("a.project_id = ?", q.project)
    if q.projects is not None:
        add(f"a.project_id IN ({marks(len(q.projects))})" if q.projects else "0", *q.projects)
    for column, ids in (
        ("a.image_id", q.images),
        ("a.slice_id", q.slices),
        ("a.user_id", q.users),
        ("a.review_user_id", q.review_users),
        ("a.parent_id", q.parents),
    ):
        if ids:
            add(f"{column} IN ({marks(len(ids))})", *ids)
    _term_clauses(q, add)
    if q.not_reviewed_only:
        add("NOT EXISTS (SELECT 1 FROM annotation r WHERE r.parent_id = a.id AND r.kind = 'reviewed')")
    if q.bbox is not None:
        minx, miny, maxx, maxy = q.bbox.bounds
        add("a.maxx >= ? AND a.minx <= ? AND a.maxy >= ? AND a.miny <= ?", minx, maxx, miny, maxy)
    if q.after is not None:
        add("a.created > ?", q.after)
    if q.before is not None:
        add("a.created < ?", q.before)
    if q.excluded is not None:
        add("a.id <> ?", q.excluded)
    return " AND ".join(clauses), params


def _term_clauses(q: AnnotationQuery, add) -> None:
    """Conditions on an annotation's terms and on the algo terms suggested on it."""
    has_terms = f"EXISTS (SELECT 1 FROM {q.term_table} t WHERE t.annotation_id = a.id"
    if q.terms:
        clause = f"{has_terms} AND t.term_id IN ({marks(len(q.terms))}))"
        add(f"({clause} OR NOT {has_terms}))" if q.no_term else clause, *q.terms)
    elif q.no_term:
        add(f"NOT {has_terms})")
    if q.multiple_term:
        add(f"(SELECT count(DISTINCT t.term_id) FROM {q.term_table} t WHERE t.annotation_id = a.id) > 1")
    if q.no_algo_term:
        add("NOT EXISTS (SELECT 1 FROM algo_annotation_term s WHERE s.annotation_id = a.id)")
    if q.suggested_terms or q.users_for_term_algo:
        sub, values = _suggestion_filter(q, "s")
        add(f"EXISTS (SELECT 1 FROM algo_annotation_term s WHERE s.annotation_id = a.id{sub})", *values)


def _suggestion_filter(q: AnnotationQuery, alias: str) -> tuple[str, list[int]]:
    """`` AND s.term_id IN (...) AND s.user_id IN (...)`` for the suggested terms and their jobs."""
    sql, values = "", []
    if q.suggested_terms:
        sql += f" AND {alias}.term_id IN ({marks(len(q.suggested_terms))})"
        values += q.suggested_terms
    if q.users_for_term_algo:
        sql += f" AND {alias}.user_id IN ({marks(len(q.users_for_term_algo))})"
        values += q.users_for_term_algo
    return sql, values


def algo_terms_sql(q: AnnotationQuery, annotation_ids: list[int]) -> tuple[str, list[Any]]:
    """The algo terms of ``showAlgo`` rows: those on the annotations, restricted as ``q`` asks."""
    sub, values = _suggestion_filter(q, "algo_annotation_term")
    sql = f"SELECT * FROM algo_annotation_term WHERE annotation_id IN ({marks(len(annotation_ids))}){sub}"
    return sql, [*annotation_ids, *values]
