"""Annotations: user, algo and reviewed annotations (one table, a ``kind`` each), their
geometries and their listings.

Rules of the core kept here: an annotation created by a job user is an algo annotation, and
its terms are algo terms (with a ``rate``); the geometry is validated and cut to the image;
its terms must be in the project's ontology; only an administrator may create an annotation
for another user. Listings are ordered by id, newest first (``ORDER BY a.id desc``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import shapely
from shapely.geometry.base import BaseGeometry

from mtdp_core.server import geometry as geo
from mtdp_core.server.backends.annotation_query import AnnotationQuery, algo_terms_sql, build_queries, where_clause
from mtdp_core.server.backends.database import Database, chunks, marks
from mtdp_core.server.domain import ANNOTATION_KINDS, CLASS_NAMES, Check, Row, as_int, id_union, now_ms, parse_id_list
from mtdp_core.server.errors import BadRequest, Conflict, Forbidden, NotFound

if TYPE_CHECKING:
    from mtdp_core.server.backends.images import ImagesBackend
    from mtdp_core.server.backends.meta import MetaBackend
    from mtdp_core.server.backends.projects import ProjectsBackend
    from mtdp_core.server.backends.users import UsersBackend

INSERT_ANNOTATION = (
    "INSERT INTO annotation (id, kind, image_id, slice_id, project_id, user_id, location, geometry_compression, area,"
    " perimeter, cx, cy, minx, miny, maxx, maxy, created) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_ANNOTATION_TERM = (
    "INSERT INTO annotation_term (id, annotation_id, term_id, user_id, created) VALUES (?, ?, ?, ?, ?)"
)
INSERT_ALGO_TERM = (
    "INSERT INTO algo_annotation_term (id, annotation_id, term_id, expected_term_id, user_id, rate, created)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
KIND_NAMES = {"user": "UserAnnotation", "algo": "AlgoAnnotation", "reviewed": "ReviewedAnnotation"}


def annotation_values(aid: int, kind: str, image: Row, user_id: int, shape: geo.GeometryStats, created: int) -> tuple:
    """The values of :data:`INSERT_ANNOTATION` for one annotation."""
    return (
        aid,
        kind,
        image["id"],
        image["slice_id"],
        image["project_id"],
        user_id,
        shape.wkt,
        *shape_values(shape),
        created,
    )


def shape_values(shape: geo.GeometryStats) -> tuple[float, ...]:
    """area, perimeter, cx, cy, minx, miny, maxx, maxy (the columns after ``location``)."""
    return (
        shape.area,
        shape.perimeter,
        shape.centroid_x,
        shape.centroid_y,
        shape.minx,
        shape.miny,
        shape.maxx,
        shape.maxy,
    )


def delete_annotation_rows(db: sqlite3.Connection, ids: Sequence[int]) -> None:
    """Delete annotations with their terms, algo terms and properties (in the caller's transaction)."""
    for chunk in chunks(ids):
        where = f"IN ({marks(len(chunk))})"
        db.execute(f"DELETE FROM annotation_term WHERE annotation_id {where}", chunk)
        db.execute(f"DELETE FROM algo_annotation_term WHERE annotation_id {where}", chunk)
        db.execute(f"DELETE FROM property WHERE domain_ident {where} AND domain_class LIKE '%Annotation'", chunk)
        db.execute(f"UPDATE annotation SET parent_id = NULL WHERE parent_id {where}", chunk)
        db.execute(f"DELETE FROM annotation WHERE id {where}", chunk)


@dataclass(eq=False)
class AnnotationsBackend:
    db: Database
    users: UsersBackend
    projects: ProjectsBackend
    images: ImagesBackend
    meta: MetaBackend

    # ------------------------------------------------------------------ create
    def create(self, data: dict[str, Any], user: Row, *, check: Check | None = None) -> Row:
        """One annotation from a client body; algo when ``user`` is a job user (as the core)."""
        with self.db.transaction():
            aid = self._insert(data, user, check)
        return self.get(aid)

    def create_many(
        self, items: Sequence[Any], user: Row, *, check: Check | None = None
    ) -> tuple[list[int], list[str]]:
        """Bulk create (a JSON array): (created ids, one message per refused item)."""
        created: list[int] = []
        errors: list[str] = []
        with self.db.transaction():
            for position, item in enumerate(items):
                if not isinstance(item, dict):
                    errors.append(f"item {position}: an annotation object is expected")
                    continue
                try:
                    created.append(self._insert(item, user, check))
                except (BadRequest, NotFound, Forbidden, Conflict) as exc:
                    errors.append(f"item {position}: {exc.message}")
        return created, errors

    def _insert(self, data: dict[str, Any], user: Row, check: Check | None) -> int:
        kind = "algo" if user["algo"] else "user"
        image = self._image_of(data)
        if check is not None:
            check(image)
        owner = self._owner(data, user)
        shape = self._shape(data.get("location"), image)
        term_ids = list(dict.fromkeys(id_union(data, "term", "terms")))
        self.projects.check_terms(image["project_id"], term_ids)
        rate = data.get("rate")
        rate = float(rate) if isinstance(rate, (int, float)) and not isinstance(rate, bool) else 1.0
        with self.db.transaction() as db:
            aid = self.db.allocate_ids(1 + len(term_ids))
            created = now_ms()
            db.execute(INSERT_ANNOTATION, annotation_values(aid, kind, image, owner, shape, created))
            for offset, tid in enumerate(term_ids, start=1):
                if kind == "algo":
                    db.execute(INSERT_ALGO_TERM, (aid + offset, aid, tid, None, owner, rate, created))
                else:
                    db.execute(INSERT_ANNOTATION_TERM, (aid + offset, aid, tid, owner, created))
            properties = {}
            for key in ("property", "properties"):
                if isinstance(data.get(key), dict):
                    properties.update(data[key])
            for key, value in properties.items():
                self.meta.add_property(CLASS_NAMES[ANNOTATION_KINDS[kind]], aid, str(key), value)
        return aid

    def _image_of(self, data: dict[str, Any]) -> Row:
        slice_id = as_int(data.get("slice"), "slice")
        image_id = as_int(data.get("image"), "image")
        if slice_id is not None:
            return self.images.get_by_slice(slice_id)
        if image_id is not None:
            return self.images.get(image_id)
        raise BadRequest("Cannot retrieve slice or image: give 'image' (an image instance id)")

    def _owner(self, data: dict[str, Any], user: Row) -> int:
        """The annotation's user: the caller, or (administrators only) the one the body names."""
        if data.get("user") in (None, "") or as_int(data.get("user"), "user") == user["id"]:
            return user["id"]
        if not user["is_admin"]:
            raise Forbidden("Only an administrator can create an annotation for another user")
        return self.users.get(as_int(data["user"], "user"))["id"]  # type: ignore[arg-type]

    @staticmethod
    def _shape(location: object, image: Row) -> geo.GeometryStats:
        geometry = geo.clip_to_image(geo.parse_wkt(location), image["width"], image["height"])
        return geo.stats(geometry)

    # ------------------------------------------------------------------ read, update, delete
    def get(self, annotation_id: int, kind: str | None = None) -> Row:
        """An annotation with its ``terms``; with ``kind``, 404 unless it is of that kind."""
        row = self.db.one(
            "SELECT a.*, (SELECT count(*) FROM annotation r WHERE r.parent_id = a.id AND r.kind = 'reviewed')"
            " AS count_reviewed FROM annotation a WHERE a.id = ?",
            (annotation_id,),
        )
        if row is None or (kind is not None and row["kind"] != kind):
            raise NotFound(f"{KIND_NAMES.get(kind or '', 'Annotation')} {annotation_id} not found")
        row["terms"] = self.terms_of(row)
        return row

    def geometry(self, annotation_id: int) -> BaseGeometry:
        return shapely.from_wkt(self.get(annotation_id)["location"])

    def terms_of(self, annotation: Row) -> list[Row]:
        """The terms of an annotation: [{id, term_id, user_id, rate?}] from the table of its kind."""
        if annotation["kind"] == "algo":
            return self.db.all(
                "SELECT id, term_id, user_id, rate, expected_term_id FROM algo_annotation_term"
                " WHERE annotation_id = ? ORDER BY term_id",
                (annotation["id"],),
            )
        return self.db.all(
            "SELECT id, term_id, user_id FROM annotation_term WHERE annotation_id = ? ORDER BY term_id",
            (annotation["id"],),
        )

    def update(self, annotation_id: int, data: dict[str, Any]) -> Row:
        """PUT: the location changes (cut and validated again); terms are not touched (as the core)."""
        annotation = self.get(annotation_id)
        shape = self._shape(data.get("location", annotation["location"]), self.images.get(annotation["image_id"]))
        with self.db.transaction() as db:
            db.execute(
                "UPDATE annotation SET location = ?, area = ?, perimeter = ?, cx = ?, cy = ?, minx = ?, miny = ?,"
                " maxx = ?, maxy = ?, updated = ? WHERE id = ?",
                (shape.wkt, *shape_values(shape), now_ms(), annotation_id),
            )
        return self.get(annotation_id)

    def delete(self, annotation_id: int, kind: str | None = None) -> Row:
        annotation = self.get(annotation_id, kind)
        with self.db.transaction() as db:
            delete_annotation_rows(db, [annotation_id])
        return annotation

    # ------------------------------------------------------------------ listings
    def list(self, query: AnnotationQuery, offset: int = 0, max_: int = 0) -> tuple[list[Row], int]:
        """Annotations matching ``query``, newest first, with their terms: (page, total).
        One SQL query (plus a count when paginated), whatever the number of rows."""
        where, params = where_clause(query)
        select = (
            "SELECT a.*, (SELECT group_concat(t.term_id || ':' || t.id || ':' || t.user_id, ',') FROM"
            f" (SELECT * FROM {query.term_table} t WHERE t.annotation_id = a.id ORDER BY t.term_id) t) AS term_rows,"
            " (SELECT count(*) FROM annotation r WHERE r.parent_id = a.id AND r.kind = 'reviewed') AS count_reviewed"
        )
        sql = f"{select} FROM annotation a WHERE {where} ORDER BY a.id DESC"
        paginate_in_sql = max_ > 0 and query.bbox is None and not query.with_algo_terms
        if paginate_in_sql:
            total = self.count(query)
            rows = self.db.all(sql + " LIMIT ? OFFSET ?", [*params, max_, offset])
        else:
            rows = self.db.all(sql, params)
        if query.bbox is not None:
            prepared = query.bbox
            shapely.prepare(prepared)
            rows = [r for r in rows if prepared.intersects(shapely.from_wkt(r["location"]))]
        for row in rows:
            row["terms"] = [
                {"term_id": int(t), "id": int(i), "user_id": int(u)}
                for t, i, u in (part.split(":") for part in (row.pop("term_rows") or "").split(",") if part)
            ]
        if query.with_algo_terms:
            rows = self._expand_algo_terms(rows, query)
        if paginate_in_sql:
            return rows, total
        return _page(rows, offset, max_), len(rows)

    def count(self, query: AnnotationQuery) -> int:
        """How many annotations match ``query`` (its bounding box only, not the exact geometry)."""
        where, params = where_clause(query)
        return int(self.db.scalar(f"SELECT count(*) FROM annotation a WHERE {where}", params))

    def search(
        self, params: dict[str, Any], offset: int = 0, max_: int = 0, *, projects: list[int] | None = None
    ) -> tuple[list[Row], int]:
        """A listing request's parameters (``GET /api/annotation.json``) -> (page, total); only
        annotations of ``projects`` when given."""
        queries = build_queries(params, self, projects)
        if len(queries) == 1:
            return self.list(queries[0], offset, max_)
        combined = [row for q in queries for row in self.list(q)[0]]
        return _page(combined, offset, max_), len(combined)

    def included(self, image_id: int, params: dict[str, Any]) -> list[Row]:
        """The annotations of an image inside ``geometry`` (WKT) or inside ``annotation`` (an id)."""
        image = self.images.get(image_id)
        if params.get("geometry"):
            area = geo.parse_wkt(params["geometry"])
        elif params.get("annotation"):
            area = self.geometry(as_int(params["annotation"], "annotation"))  # type: ignore[arg-type]
        else:
            raise BadRequest("Give 'geometry' (WKT) or 'annotation' (an id) to list the annotations it includes")
        users = parse_id_list(params.get("user")) or parse_id_list(params.get("users"))
        query = AnnotationQuery(
            kind="algo" if users and any(u["algo"] for u in self.users.get_many(users)) else "user",
            images=[image["id"]],
            users=users,
            bbox=area,
            terms=parse_id_list(params.get("terms")),
            excluded=as_int(params.get("annotation"), "annotation"),
        )
        rows, _ = self.list(query)
        return [r for r in rows if area.covers(shapely.from_wkt(r["location"]))]

    def _expand_algo_terms(self, rows: list[Row], query: AnnotationQuery) -> list[Row]:
        """The core's ``showAlgo`` group: one row per algo term suggested on each annotation."""
        suggestions: dict[int, list[Row]] = {}
        for chunk in chunks([r["id"] for r in rows]):
            for s in self.db.all(*algo_terms_sql(query, chunk)):
                suggestions.setdefault(s["annotation_id"], []).append(s)
        expanded = [{**row, "algo_term": s} for row in rows for s in suggestions.get(row["id"], [])]
        expanded.sort(key=lambda r: -(r["algo_term"]["rate"] or 0.0))  # "ORDER BY aat.rate desc"
        return expanded


def _page(rows: list[Row], offset: int, max_: int) -> list[Row]:
    return rows[offset : offset + max_] if max_ > 0 else rows[offset:]
