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

``signed_request`` sends one signed request outside the client (to see the status codes and
bodies the client hides); ``hostile_requests`` is the catalogue of requests a hostile user with
valid keys may send (oversized pixels and bodies, malformed names, ids and parameters), each
with the 4xx it must get: the security tests and ``benchmarks/bench_hostile.py`` send them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import numpy as np
import requests
from PIL import Image

from mtdp_core.server.app import LocalCytomine
from mtdp_core.server.auth import authorization_header, legacy_token
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


def signed_request(
    url: str,
    keys: tuple[str, str],
    method: str,
    path: str,
    *,
    json_body: Any = None,
    data: bytes | None = None,
    files: dict[str, tuple[str, bytes]] | None = None,
    date: str | None = None,
    timeout: float = 60,
) -> requests.Response:
    """``method path`` signed with ``keys`` as client 3.0.0 signs (``date``: the date header, now
    by default; ``""`` sends none). ``json_body`` is sent as JSON, ``data`` as raw bytes, ``files``
    as a multipart upload (``{"files[]": (name, content)}``)."""
    if json_body is not None:
        data = json.dumps(json_body).encode("utf-8")
    prepared = requests.Request(method, url.rstrip("/") + path, data=data, files=files).prepare()
    date = formatdate(usegmt=True) if date is None else date
    # Signed with an empty content type: the server retries with one, as the Java filter does.
    token = legacy_token(method, "", "", date, prepared.path_url)
    prepared.headers["authorization"] = authorization_header(*keys, token)
    if date:
        prepared.headers["date"] = date
    if data is not None and files is None:
        prepared.headers["content-type"] = "application/json"
    with requests.Session() as session:
        return session.send(prepared, timeout=timeout)


@dataclass(frozen=True)
class HostileRequest:
    """A request a hostile user with valid keys may send, and the 4xx it must get (``expect``),
    whose message contains ``says``. ``path`` and ``body`` name the objects they target with
    ``{crop}``, ``{window}``, ``{attach}``, ``{project}`` and ``{huge}`` (see :func:`hostile_requests`)."""

    item: int  # the defect of issue 11 it reproduces: 4 (unbounded pixels and bodies) or 6 (bad input)
    what: str
    method: str
    path: str
    body: bytes | None = None
    files: dict[str, tuple[str, bytes]] | None = None
    expect: int = 400
    says: str = ""

    def send(self, url: str, keys: tuple[str, str], timeout: float = 120) -> requests.Response:
        return signed_request(url, keys, self.method, self.path, data=self.body, files=self.files, timeout=timeout)


_NOTES = {"files[]": ("notes.txt", b"some notes")}
_DEEP = b"[" * 1000 + b"]" * 1000
_JUNK = b"<junk>"  # replaced by junk_body_bytes bytes of junk
HOSTILE_REQUESTS = (
    HostileRequest(4, "crop of 20000 pixels", "GET", "{crop}?maxSize=20000", says="max-pixels"),
    HostileRequest(4, "crop enlarged 200 times", "GET", "{crop}?maxSize=4000", says="max-upscale"),
    HostileRequest(4, "crop with maxSize 10^12", "GET", f"{{crop}}?maxSize={10**12}", says="maxSize"),
    HostileRequest(4, "window of 20000 x 20000", "GET", "{window}-0-0-20000-20000.png?withExterior=true", says="max-"),
    HostileRequest(4, "window enlarged to 20000", "GET", "{window}-0-0-20-20.png?maxSize=20000", says="max-"),
    HostileRequest(4, "body over the limit", "POST", "/api/annotation.json", _JUNK, expect=413, says="max-body-mb"),
    HostileRequest(6, "file name '.'", "POST", "{attach}&filename=.", files=_NOTES, says="file name"),
    HostileRequest(6, "file name '..'", "POST", "{attach}&filename=..", files=_NOTES, says="file name"),
    HostileRequest(6, "file name with NUL", "POST", "{attach}&filename=a%00b.txt", files=_NOTES, says="file name"),
    HostileRequest(
        6, "file name of 300 characters", "POST", "{attach}&filename=" + "a" * 300, files=_NOTES, says="255"
    ),
    HostileRequest(6, "file name with CR/LF", "POST", "{attach}&filename=a%0D%0Ab.txt", files=_NOTES, says="file name"),
    HostileRequest(
        6, "uploaded file named '..'", "POST", "{attach}", files={"files[]": ("..", b"x")}, says="file name"
    ),
    HostileRequest(6, "id above 2^63 in the path", "GET", "/api/project/{huge}.json", says="2^63"),
    HostileRequest(6, "id above 2^63 in the query", "GET", "/api/annotation.json?project={huge}", says="2^63"),
    HostileRequest(6, "id above 2^63 in a body", "POST", "/api/annotation.json", b'{"image": {huge}}', says="2^63"),
    HostileRequest(6, "JSON nested 1000 deep", "POST", "/api/annotation.json", _DEEP, says="nested"),
    HostileRequest(
        6,
        "JSON nested 1000 deep in a property",
        "POST",
        "/api/project/{project}/property.json",
        b'{"key": "k", "value": ' + _DEEP + b"}",
        says="nested",
    ),
    HostileRequest(6, "increaseArea=nan", "GET", "{crop}?increaseArea=nan", says="increaseArea"),
    HostileRequest(6, "increaseArea=inf", "GET", "{crop}?increaseArea=inf", says="increaseArea"),
    HostileRequest(6, "color=notacolor", "GET", "{crop}?draw=true&color=notacolor", says="color"),
    HostileRequest(6, "thickness of 10^12", "GET", f"{{crop}}?draw=true&thickness={10**12}", says="thickness"),
    HostileRequest(6, "jpegQuality of 1000", "GET", "{crop}?jpegQuality=1000", says="jpegQuality"),
    HostileRequest(6, "window at negative x/y", "GET", "{window}--10--10-20-20.png", says="withExterior"),
)


def hostile_requests(
    project_id: int, image_id: int, annotation_id: int, *, junk_body_bytes: int = 20 * 1024 * 1024
) -> list[HostileRequest]:
    """:data:`HOSTILE_REQUESTS` against a project, one of its images and one of its annotations (a
    small box: crops of it are enlarged). ``junk_body_bytes`` must exceed the server's body limit."""
    names = {
        "{crop}": f"/api/userannotation/{annotation_id}/crop.png",
        "{window}": f"/api/imageinstance/{image_id}/window",
        "{attach}": f"/api/attachedfile.json?domainClassName=be.cytomine.project.Project&domainIdent={project_id}",
        "{project}": str(project_id),
        "{huge}": str(2**64),
    }

    def named(text: str) -> str:
        for key, value in names.items():
            text = text.replace(key, value)
        return text

    requests_ = []
    for request in HOSTILE_REQUESTS:
        body = request.body
        if body is not None:
            body = b"x" * junk_body_bytes if body == _JUNK else named(body.decode()).encode()
        requests_.append(dataclasses.replace(request, path=named(request.path), body=body))
    return requests_
