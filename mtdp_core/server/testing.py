"""Helpers for tests that need a Cytomine: a running local server seeded with a project.

App tests use them through fixtures (see ``tests/server/conftest.py``)::

    with running_server() as server:
        seeded = seed_synthetic_project(server, tmp_path)
        client = server.connect()
        ... AnnotationCollection(project=seeded.project_id, showTerm=True).fetch() ...

``seed_synthetic_project`` writes small PNG images (random texture, a distinct tint per term
so that classes are separable) and boxes whose pixels are known exactly (``SeededAnnotation.box``
in image coordinates), so tests can check crops pixel for pixel. ``seed_bccd_project`` imports
a few real BCCD blood-smear images with their cell boxes when ``../shared/data`` is present.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mtdp_core.server.app import LocalCytomine
from mtdp_core.server.backends import AnnotationQuery
from mtdp_core.server.config import ServerConfig
from mtdp_core.server.domain import Row
from mtdp_core.server.geometry import box_in_cytomine
from mtdp_core.server.importers import import_folder

#: Tints added to the texture of each term's boxes (RGB), so that crops of different terms differ.
TINTS = ((90, -40, -40), (-40, -40, 90), (-40, 90, -40), (60, 60, -60))


@dataclass(frozen=True)
class SeededAnnotation:
    id: int
    image_id: int
    term: str
    term_id: int
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in image pixels (top-left origin), x1/y1 excluded


@dataclass
class SeededProject:
    """What a seeding helper created."""

    project_id: int
    ontology_id: int
    terms: dict[str, int]
    images: list[Row]
    annotations: list[SeededAnnotation] = field(default_factory=list)
    image_paths: dict[int, Path] = field(default_factory=dict)

    def pixels(self, image_id: int) -> np.ndarray:
        """The stored image's pixels (H, W, 3) uint8."""
        with Image.open(self.image_paths[image_id]) as image:
            return np.asarray(image.convert("RGB"))

    def crop_pixels(self, annotation: SeededAnnotation) -> np.ndarray:
        x0, y0, x1, y1 = annotation.box
        return self.pixels(annotation.image_id)[y0:y1, x0:x1]


@contextlib.contextmanager
def running_server(data_dir: str | os.PathLike | None = None, **kwargs: Any) -> Iterator[LocalCytomine]:
    """A started :class:`LocalCytomine` (in-memory database unless ``data_dir``), stopped on exit."""
    kwargs.setdefault("config", ServerConfig(log_requests=False))
    server = LocalCytomine(data_dir, **kwargs)
    with server:
        yield server


def _texture(size: tuple[int, int], seed: int) -> np.ndarray:
    """Random mid-range RGB noise (int16, so tints can be added without overflow)."""
    width, height = size
    return np.random.default_rng(seed).integers(40, 216, size=(height, width, 3), dtype=np.int16)


def seed_synthetic_project(
    server: LocalCytomine,
    root: str | os.PathLike,
    *,
    name: str = "synthetic",
    terms: Sequence[str] = ("tumour", "stroma"),
    n_images: int = 2,
    size: tuple[int, int] = (96, 64),
    boxes_per_image: int = 4,
    seed: int = 0,
    user: str = "admin",
) -> SeededProject:
    """A project with an ontology of ``terms``, ``n_images`` PNG images under ``root`` and
    ``boxes_per_image`` boxes per image, labelled in turn with each term; each box's pixels are
    tinted by its term. Annotations are created through the store as ``user``."""
    store = server.store
    assert store is not None, "start the server first"
    owner = store.users.find_by_username(user)
    if owner is None:
        raise ValueError(f"user {user!r} does not exist")
    ontology = store.ontologies.create(f"{name} ontology", owner["id"])
    term_ids = {t: store.ontologies.create_term(t, ontology["id"])["id"] for t in terms}
    project = store.projects.create(name, ontology["id"], owner["id"])
    rng = np.random.default_rng(seed)
    width, height = size
    seeded = SeededProject(project["id"], ontology["id"], term_ids, [])
    root = Path(root)
    for index in range(n_images):
        path = root / name / f"image_{index:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = _texture(size, seed + index)
        boxes = []
        for k in range(boxes_per_image):
            label = terms[k % len(terms)]
            bw, bh = int(rng.integers(8, max(9, width // 3))), int(rng.integers(8, max(9, height // 3)))
            x0, y0 = int(rng.integers(0, width - bw)), int(rng.integers(0, height - bh))
            tint = np.array(TINTS[list(terms).index(label) % len(TINTS)], dtype=np.int16)
            pixels[y0 : y0 + bh, x0 : x0 + bw] += tint
            boxes.append((label, (x0, y0, x0 + bw, y0 + bh)))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
        image = store.images.add(path, project["id"], owner["id"])
        seeded.images.append(image)
        seeded.image_paths[image["id"]] = path
        for label, (x0, y0, x1, y1) in boxes:
            location = box_in_cytomine(x0, y0, x1, y1, image["height"]).wkt
            row = store.annotations.create(
                {"image": image["id"], "location": location, "term": [term_ids[label]]}, owner
            )
            seeded.annotations.append(
                SeededAnnotation(row["id"], image["id"], label, term_ids[label], (x0, y0, x1, y1))
            )
    return seeded


def seed_bccd_project(
    server: LocalCytomine, bccd_dir: str | os.PathLike, *, n_images: int = 3, name: str = "bccd"
) -> SeededProject:
    """The first ``n_images`` BCCD images with their cell boxes (terms RBC, WBC, Platelets)."""
    store = server.store
    assert store is not None, "start the server first"
    bccd = Path(bccd_dir)
    report = import_folder(store, name, bccd / "JPEGImages", bccd / "boxes.csv", limit=n_images)
    project = report.project
    terms = {t["name"]: t["id"] for t in store.projects.terms(project["id"])}
    images = store.images.list(project["id"])
    seeded = SeededProject(
        project["id"], project["ontology_id"], terms, images, image_paths={i["id"]: Path(i["path"]) for i in images}
    )
    names = {v: k for k, v in terms.items()}
    rows, _ = store.annotations.list(AnnotationQuery(project=project["id"]))
    for row in rows:
        image = next(i for i in images if i["id"] == row["image_id"])
        box = (
            round(row["minx"]),
            round(image["height"] - row["maxy"]),
            round(row["maxx"]),
            round(image["height"] - row["miny"]),
        )
        term_id = row["terms"][0]["term_id"]
        seeded.annotations.append(SeededAnnotation(row["id"], row["image_id"], names[term_id], term_id, box))  # type: ignore[arg-type]
    return seeded
