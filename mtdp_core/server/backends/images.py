"""Images: abstract images (one per file on disk) and their instances in projects, each with
its one slice (the server keeps 2-D images: the slice id is the instance id + 1)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mtdp_core.server.backends.annotations import delete_annotation_rows
from mtdp_core.server.backends.database import Database, chunks, marks
from mtdp_core.server.domain import Row, now_ms
from mtdp_core.server.errors import Conflict, NotFound
from mtdp_core.server.imaging import max_zoom_level
from mtdp_core.server.sources import image_info

if TYPE_CHECKING:
    from mtdp_core.server.backends.projects import ProjectsBackend

#: The resolution columns of an image (NULL when its file records none).
_RESOLUTION = "ir.physical_size_x, ir.physical_size_y, ir.magnification"
_SELECT = (
    "SELECT ii.id, ii.base_image_id, ii.project_id, ii.user_id, ii.instance_filename, ii.slice_id, ii.created,"
    f" ii.updated, ai.path, ai.original_filename, ai.width, ai.height, ai.samples, ai.mime, {_RESOLUTION}"
    " FROM image_instance ii JOIN abstract_image ai ON ai.id = ii.base_image_id"
    " LEFT JOIN image_resolution ir ON ir.abstract_image_id = ai.id"
)
_SELECT_ABSTRACT = (
    f"SELECT ai.*, {_RESOLUTION} FROM abstract_image ai LEFT JOIN image_resolution ir ON ir.abstract_image_id = ai.id"
)


def delete_image_rows(db: sqlite3.Connection, image_ids: Sequence[int]) -> None:
    """Delete image instances with their annotations (inside the caller's transaction)."""
    for chunk in chunks(image_ids):
        annotation_ids = [
            r[0] for r in db.execute(f"SELECT id FROM annotation WHERE image_id IN ({marks(len(chunk))})", chunk)
        ]
        delete_annotation_rows(db, annotation_ids)
        db.execute(f"DELETE FROM image_instance WHERE id IN ({marks(len(chunk))})", chunk)


@dataclass(eq=False)
class ImagesBackend:
    db: Database
    projects: ProjectsBackend

    # ------------------------------------------------------------------ abstract images (files)
    def add_abstract(
        self, path: str | os.PathLike, *, user_id: int | None = None, original_filename: str | None = None
    ) -> Row:
        """The abstract image of a file (created on first use, by resolved path)."""
        path = Path(path).resolve()
        if not path.is_file():
            raise NotFound(f"Image file {path} does not exist")
        existing = self.db.one(_SELECT_ABSTRACT + " WHERE ai.path = ?", (str(path),))
        if existing:
            return existing
        info = image_info(path)
        with self.db.transaction() as db:
            aid = self.db.allocate_ids()
            db.execute(
                "INSERT INTO abstract_image (id, path, original_filename, width, height, samples, mime, user_id,"
                " created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    aid,
                    str(path),
                    original_filename or path.name,
                    info.width,
                    info.height,
                    info.samples,
                    info.mime,
                    user_id,
                    now_ms(),
                ),
            )
            if (info.physical_size_x, info.physical_size_y, info.magnification) != (None, None, None):
                db.execute(
                    "INSERT INTO image_resolution (abstract_image_id, physical_size_x, physical_size_y, magnification)"
                    " VALUES (?, ?, ?, ?)",
                    (aid, info.physical_size_x, info.physical_size_y, info.magnification),
                )
        return self.get_abstract(aid)

    def get_abstract(self, abstract_id: int) -> Row:
        return self.db.require(
            _SELECT_ABSTRACT + " WHERE ai.id = ?", (abstract_id,), f"AbstractImage {abstract_id} not found"
        )

    def list_abstract(self, *, projects: Sequence[int] | None = None, user_id: int | None = None) -> list[Row]:
        """Every abstract image, or (with ``projects``) those held by one of these projects or
        (with ``user_id`` too) imported by that user."""
        if projects is None:
            return self.db.all(_SELECT_ABSTRACT + " ORDER BY ai.id")
        ids: list[int | None] = list(projects)
        where = f"ai.id IN (SELECT base_image_id FROM image_instance WHERE project_id IN ({marks(len(ids))}))"
        if user_id is not None:
            where += " OR ai.user_id = ?"
            ids.append(user_id)
        return self.db.all(f"{_SELECT_ABSTRACT} WHERE {where} ORDER BY ai.id", ids)

    def abstract_projects(self, abstract_id: int) -> list[int]:
        """The projects holding an instance of an abstract image."""
        rows = self.db.all("SELECT project_id FROM image_instance WHERE base_image_id = ?", (abstract_id,))
        return [r["project_id"] for r in rows]

    # ------------------------------------------------------------------ image instances
    def add_instance(
        self, abstract_id: int, project_id: int, user_id: int | None = None, instance_filename: str | None = None
    ) -> Row:
        abstract = self.get_abstract(abstract_id)
        self.projects.get(project_id)
        with self.db.transaction() as db:
            if self.find_instance(abstract_id, project_id) is not None:
                raise Conflict(f"Image {abstract['original_filename']!r} is already in project {project_id}")
            iid = self.db.allocate_ids(2)  # the instance and its slice
            db.execute(
                "INSERT INTO image_instance (id, base_image_id, project_id, user_id, instance_filename, slice_id,"
                " created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    iid,
                    abstract_id,
                    project_id,
                    user_id,
                    instance_filename or abstract["original_filename"],
                    iid + 1,
                    now_ms(),
                ),
            )
        return self.get(iid)

    def add(self, path: str | os.PathLike, project_id: int, user_id: int | None = None) -> Row:
        """Add an image file to a project (its abstract image is created when new)."""
        abstract = self.add_abstract(path, user_id=user_id)
        return self.add_instance(abstract["id"], project_id, user_id)

    def find_instance(self, abstract_id: int, project_id: int) -> int | None:
        """The id of the instance of an abstract image in a project, if there is one."""
        return self.db.scalar(
            "SELECT id FROM image_instance WHERE base_image_id = ? AND project_id = ?", (abstract_id, project_id)
        )

    def get(self, image_id: int) -> Row:
        return self.db.require(_SELECT + " WHERE ii.id = ?", (image_id,), f"ImageInstance {image_id} not found")

    def get_many(self, image_ids: Iterable[int]) -> list[Row]:
        rows: list[Row] = []
        for chunk in chunks(list(image_ids)):
            rows += self.db.all(_SELECT + f" WHERE ii.id IN ({marks(len(chunk))})", chunk)
        return rows

    def get_by_slice(self, slice_id: int) -> Row:
        return self.db.require(_SELECT + " WHERE ii.slice_id = ?", (slice_id,), f"SliceInstance {slice_id} not found")

    def list(self, project_id: int) -> list[Row]:
        """The images of a project, newest first."""
        self.projects.get(project_id)
        return self.db.all(_SELECT + " WHERE ii.project_id = ? ORDER BY ii.created DESC, ii.id DESC", (project_id,))

    def list_in(self, project_ids: Sequence[int]) -> list[Row]:
        """The images of several projects, by project, newest first."""
        rows: list[Row] = []
        for chunk in chunks(list(project_ids)):
            rows += self.db.all(
                _SELECT + f" WHERE ii.project_id IN ({marks(len(chunk))})"
                " ORDER BY ii.project_id, ii.created DESC, ii.id DESC",
                chunk,
            )
        return rows

    def counts(self, image_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        """Annotations of each image by kind (``user``, ``algo``, ``reviewed``)."""
        counts = {iid: {"user": 0, "algo": 0, "reviewed": 0} for iid in image_ids}
        for chunk in chunks(image_ids):
            for r in self.db.all(
                f"SELECT image_id, kind, count(*) AS n FROM annotation WHERE image_id IN ({marks(len(chunk))})"
                " GROUP BY image_id, kind",
                chunk,
            ):
                counts[r["image_id"]][r["kind"]] = r["n"]
        return counts

    def delete(self, image_id: int) -> Row:
        """Delete an image instance and its annotations (the file and abstract image stay)."""
        image = self.get(image_id)
        with self.db.transaction() as db:
            delete_image_rows(db, [image_id])
        return image

    @staticmethod
    def zoom(image: Row) -> int:
        """The deepest zoom level of the image's virtual pyramid."""
        return max_zoom_level(image["width"], image["height"])
