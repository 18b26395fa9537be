"""Bulk import: many images with their annotations into a project, in one transaction (what
:mod:`mtdp_core.server.importers` feeds from folders of GeoJSON, CSV or Pascal VOC files)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shapely.geometry.base import BaseGeometry

from mtdp_core.server import geometry as geo
from mtdp_core.server.backends.annotations import INSERT_ANNOTATION, INSERT_ANNOTATION_TERM, annotation_values
from mtdp_core.server.backends.database import Database
from mtdp_core.server.backends.images import ImagesBackend
from mtdp_core.server.backends.ontologies import OntologiesBackend
from mtdp_core.server.backends.projects import ProjectsBackend
from mtdp_core.server.domain import Row, now_ms
from mtdp_core.server.errors import BadRequest

logger = logging.getLogger(__name__)


@dataclass
class ImportedImage:
    """One image to add to a project with its annotations, for :meth:`ImportsBackend.import_images`."""

    path: Path
    #: (label, geometry in image coordinates); a label None makes an annotation without a term.
    annotations: list[tuple[str | None, BaseGeometry]] = field(default_factory=list)


@dataclass(eq=False)
class ImportsBackend:
    db: Database
    projects: ProjectsBackend
    ontologies: OntologiesBackend
    images: ImagesBackend

    def import_images(
        self, project_id: int, images: Sequence[ImportedImage], user: Row, *, skip_existing: bool = True
    ) -> dict[str, int]:
        """Add images and their annotations to a project in one transaction.

        Labels become terms of the project's ontology (created when missing). Geometries are in
        image coordinates (top-left origin) and are converted to Cytomine's. Images already in the
        project are skipped (so an import can be re-run) unless ``skip_existing`` is false.
        Returns counts: images, skipped_images, annotations, refused_annotations, terms.
        """
        project = self.projects.get(project_id)
        if project["ontology_id"] is None:
            raise BadRequest(f"Project {project['name']!r} has no ontology: give it one before importing annotations")
        summary = {"images": 0, "skipped_images": 0, "annotations": 0, "refused_annotations": 0, "terms": 0}
        with self.db.transaction() as db:
            terms = {r["name"]: r["id"] for r in self.ontologies.list_terms(project["ontology_id"])}
            for item in images:
                abstract = self.images.add_abstract(item.path, user_id=user["id"])
                if skip_existing and self.images.find_instance(abstract["id"], project_id) is not None:
                    summary["skipped_images"] += 1
                    continue
                image = self.images.add_instance(abstract["id"], project_id, user["id"])
                summary["images"] += 1
                rows = self._annotations(item, image, terms, project["ontology_id"], summary)
                if not rows:
                    continue
                first = self.db.allocate_ids(2 * len(rows))  # each annotation and its term
                created = now_ms()
                db.executemany(
                    INSERT_ANNOTATION,
                    [
                        annotation_values(first + 2 * k, "user", image, user["id"], s, created)
                        for k, (s, _) in enumerate(rows)
                    ],
                )
                db.executemany(
                    INSERT_ANNOTATION_TERM,
                    [
                        (first + 2 * k + 1, first + 2 * k, tid, user["id"], created)
                        for k, (_, tid) in enumerate(rows)
                        if tid is not None
                    ],
                )
                summary["annotations"] += len(rows)
        return summary

    def _annotations(
        self, item: ImportedImage, image: Row, terms: dict[str, int], ontology_id: int, summary: dict[str, int]
    ) -> list[tuple[geo.GeometryStats, int | None]]:
        """(geometry in Cytomine coordinates, term id or None) of an image's annotations; new labels
        become terms, geometries outside the image are refused and counted."""
        rows = []
        for label, geometry in item.annotations:
            if label is not None and label not in terms:
                terms[label] = self.ontologies.create_term(label, ontology_id)["id"]
                summary["terms"] += 1
            try:
                flipped = geo.image_to_cytomine(geometry, image["height"])
                shape = geo.stats(geo.clip_to_image(flipped, image["width"], image["height"]))
            except BadRequest as exc:
                logger.warning("%s: annotation %r refused: %s", item.path.name, label, exc.message)
                summary["refused_annotations"] += 1
                continue
            rows.append((shape, None if label is None else terms[label]))
        return rows
