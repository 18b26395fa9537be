"""Importers: a folder of images (plain images and whole-slide files: SVS, NDPI, MRXS, SCN,
pyramidal TIFF...) plus annotations, into a project whose ontology's terms come from the labels.

Formats (coordinates are image pixels, top-left origin, x right, y down; they are converted to
Cytomine's bottom-left origin on import, see :mod:`mtdp_core.server.geometry`):

- **GeoJSON**: one ``FeatureCollection`` per image, ``<image stem>.geojson`` (or ``.json``),
  or a single collection whose features name their image in ``properties``; the label is
  found in ``properties`` (``label``, ``class``, ``classification.name`` as QuPath writes,
  ``name``, ``term``, ``category``, ``cell_type``, ``type``, or ``--label-column``);
- **CSV**: one row per object with an image column, a label column, and either box columns
  (``xmin``/``xmax``/``ymin``/``ymax``, ``x1,y1,x2,y2`` or ``x,y,width,height``) or a WKT
  column (``wkt``, ``geometry``, ``polygon``, ``location``); names are auto-detected and can
  be given (``--image-column``, ``--label-column``, ``--geometry-column``, ``--box-columns``);
- **Pascal VOC**: a folder of XML files (``<filename>``, ``<object><name>``, ``<bndbox>``).

Box coordinates are taken as pixel edges: a box ``xmin=10, xmax=20`` covers columns 10 to 19
(the convention of labelImg, which wrote BCCD, and of most CSV exports).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import shapely
from shapely.errors import ShapelyError
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry

from mtdp_core.errors import ConfigurationError
from mtdp_core.server.backends import CytomineStore, ImportedImage
from mtdp_core.server.domain import Row
from mtdp_core.server.errors import BadRequest
from mtdp_core.server.sources import FILE_EXTENSIONS, image_info

logger = logging.getLogger(__name__)

FORMATS = ("auto", "geojson", "csv", "voc")
IMAGE_COLUMNS = ("filename", "image", "image_name", "imagename", "file", "file_name", "path", "image_path", "img")
LABEL_COLUMNS = (
    "label",
    "class",
    "class_name",
    "classname",
    "cell_type",
    "category",
    "term",
    "name",
    "type",
    "species",
)
GEOMETRY_COLUMNS = ("wkt", "geometry", "polygon", "location", "geom")
BOX_COLUMN_SETS = (
    ("xmin", "ymin", "xmax", "ymax"),
    ("x_min", "y_min", "x_max", "y_max"),
    ("x1", "y1", "x2", "y2"),
    ("left", "top", "right", "bottom"),
)
XYWH_COLUMNS = ("x", "y", "width", "height")


@dataclass(frozen=True)
class ColumnNames:
    """Column (or GeoJSON property) names; None: auto-detected."""

    image: str | None = None
    label: str | None = None
    geometry: str | None = None
    box: tuple[str, str, str, str] | None = None  # xmin, ymin, xmax, ymax


@dataclass
class ImportReport:
    """What an import did."""

    project: Row
    images: int = 0
    skipped_images: int = 0
    annotations: int = 0
    refused_annotations: int = 0
    terms: int = 0
    missing_images: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (
            f"project {self.project['name']!r} (id {self.project['id']}): {self.images} images added, "
            f"{self.annotations} annotations, {self.terms} new terms"
        )
        if self.skipped_images:
            text += f", {self.skipped_images} images already there (skipped)"
        if self.refused_annotations:
            text += f", {self.refused_annotations} annotations refused (empty or outside the image)"
        if self.missing_images:
            text += f", {len(self.missing_images)} annotated images not found in the image folder"
        if self.unreadable:
            text += f", {len(self.unreadable)} unreadable files skipped ({', '.join(self.unreadable[:3])})"
        return text


def _key(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def _find_column(
    header: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str, required: bool = True
) -> str | None:
    by_key = {_key(h): h for h in header}
    if wanted is not None:
        if wanted in header:
            return wanted
        if _key(wanted) in by_key:
            return by_key[_key(wanted)]
        raise ConfigurationError(f"Column {wanted!r} ({what}) is not in the CSV header {list(header)}")
    for candidate in candidates:
        if candidate in by_key:
            return by_key[candidate]
    if required:
        raise ConfigurationError(
            f"No {what} column in the CSV header {list(header)}: name it with --{what}-column "
            f"(looked for {', '.join(candidates)})"
        )
    return None


# ---------------------------------------------------------------------- readers
def read_csv(path: str | Path, columns: ColumnNames = ColumnNames()) -> dict[str, list[tuple[str, BaseGeometry]]]:
    """``{image name: [(label, geometry in image coordinates)]}`` from a CSV of boxes or WKT."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as f:
        sample = f.read(4096)
        f.seek(0)
        try:
            dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
        except csv.Error:
            dialect = csv.excel
        reader = csv.DictReader(f, dialect=dialect)
        header = reader.fieldnames or []
        image_col = _find_column(header, columns.image, IMAGE_COLUMNS, "image")
        label_col = _find_column(header, columns.label, LABEL_COLUMNS, "label")
        geometry_col = _find_column(header, columns.geometry, GEOMETRY_COLUMNS, "geometry", required=False)
        box_cols: tuple[str, ...] | None = None
        xywh = False
        if geometry_col is None:
            if columns.box is not None:
                box_cols = tuple(_find_column(header, c, (), "box") for c in columns.box)  # type: ignore[misc]
            else:
                keys = {_key(h): h for h in header}
                for candidate in BOX_COLUMN_SETS:
                    if all(c in keys for c in candidate):
                        box_cols = tuple(keys[c] for c in candidate)
                        break
                else:
                    if all(c in keys for c in XYWH_COLUMNS):
                        box_cols, xywh = tuple(keys[c] for c in XYWH_COLUMNS), True
            if box_cols is None:
                raise ConfigurationError(
                    f"{path}: no geometry in the CSV header {header}: give a WKT column "
                    "(--geometry-column) or box columns (--box-columns xmin,ymin,xmax,ymax)"
                )
        objects: dict[str, list[tuple[str, BaseGeometry]]] = defaultdict(list)
        for line, row in enumerate(reader, start=2):
            image, label = (row.get(image_col) or "").strip(), (row.get(label_col) or "").strip()  # type: ignore[arg-type]
            if not image or not label:
                raise ConfigurationError(f"{path}:{line}: empty image or label")
            try:
                if geometry_col is not None:
                    geometry = shapely.from_wkt(row[geometry_col])
                else:
                    a, b, c, d = (float(row[col]) for col in box_cols)  # type: ignore[union-attr]
                    geometry = box(a, b, a + c, b + d) if xywh else box(min(a, c), min(b, d), max(a, c), max(b, d))
            except (ValueError, TypeError, ShapelyError) as exc:
                raise ConfigurationError(f"{path}:{line}: unreadable geometry ({exc})") from None
            objects[os.path.basename(image.replace("\\", "/"))].append((label, geometry))
    return dict(objects)


def read_voc(folder: str | Path) -> dict[str, list[tuple[str, BaseGeometry]]]:
    """``{image name: [(label, box)]}`` from a folder of Pascal VOC XML files."""
    folder = Path(folder)
    files = sorted(folder.glob("*.xml"))
    if not files:
        raise ConfigurationError(f"No Pascal VOC .xml file in {folder}")
    objects: dict[str, list[tuple[str, BaseGeometry]]] = {}
    for path in files:
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as exc:
            raise ConfigurationError(f"{path}: not valid XML ({exc})") from None
        filename = (root.findtext("filename") or "").strip() or path.stem
        items = objects.setdefault(os.path.basename(filename), [])
        for obj in root.iter("object"):
            label = (obj.findtext("name") or "").strip()
            bndbox = obj.find("bndbox")
            if not label or bndbox is None:
                raise ConfigurationError(f"{path}: an <object> without <name> or <bndbox>")
            try:
                xmin, ymin, xmax, ymax = (float(bndbox.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax"))
            except ValueError:
                raise ConfigurationError(f"{path}: a <bndbox> with non-numeric coordinates") from None
            items.append((label, box(min(xmin, xmax), min(ymin, ymax), max(xmin, xmax), max(ymin, ymax))))
    return objects


def _geojson_label(properties: dict[str, Any], wanted: str | None) -> str | None:
    """The label of a feature: the ``wanted`` property; for a QuPath object (it has ``objectType``
    or ``classification``) its class, None when unclassified (its ``name`` is a name, not a class);
    else the first of :data:`LABEL_COLUMNS`."""
    if wanted is not None:
        value = properties.get(wanted)
    elif "objectType" in properties or "classification" in properties:
        value = properties.get("classification")
    else:
        value = next((properties[k] for k in LABEL_COLUMNS if properties.get(k) is not None), None)
    if isinstance(value, dict):  # QuPath: "classification": {"name": "Tumor", "color": [...]}
        value = value.get("name")
    return None if value is None else str(value)


def _geojson_features(data: Any, source: Path) -> list[dict[str, Any]]:
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        return list(data.get("features") or [])
    if isinstance(data, dict) and data.get("type") == "Feature":
        return [data]
    if isinstance(data, list):  # QuPath exports a bare list of features
        return data
    raise ConfigurationError(f"{source}: not a GeoJSON FeatureCollection")


def read_geojson(
    path: str | Path, columns: ColumnNames = ColumnNames()
) -> dict[str, list[tuple[str | None, BaseGeometry]]]:
    """``{image name or stem: [(label, geometry)]}`` from a .geojson file or a folder of them (e.g.
    QuPath's *Export objects as GeoJSON*); a feature without a label (an unclassified QuPath
    object) has label None and becomes an annotation without a term."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix.lower() in (".geojson", ".json"))
    if not files:
        raise ConfigurationError(f"No .geojson file in {path}")
    objects: dict[str, list[tuple[str | None, BaseGeometry]]] = defaultdict(list)
    for source in files:
        try:
            data = json.loads(source.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ConfigurationError(f"{source}: not valid JSON ({exc})") from None
        for number, feature in enumerate(_geojson_features(data, source)):
            properties = feature.get("properties") or {}
            label = _geojson_label(properties, columns.label)
            if label is None and columns.label is not None:
                raise ConfigurationError(
                    f"{source}: feature {number} has no property {columns.label!r} (--label-column)"
                )
            image_key = columns.image or next((k for k in IMAGE_COLUMNS if properties.get(k)), None)
            image = (
                os.path.basename(str(properties[image_key])) if image_key and properties.get(image_key) else source.stem
            )
            try:
                geometry = shape(feature["geometry"])
            except (KeyError, TypeError, ValueError, ShapelyError, AttributeError) as exc:
                raise ConfigurationError(f"{source}: feature {number} has an unreadable geometry ({exc})") from None
            objects[image].append((label, geometry))
    return dict(objects)


def detect_format(annotations: Path) -> str:
    if annotations.is_file():
        suffix = annotations.suffix.lower()
        if suffix in (".csv", ".tsv", ".txt"):
            return "csv"
        if suffix in (".geojson", ".json"):
            return "geojson"
        if suffix == ".xml":
            return "voc"
    elif annotations.is_dir():
        suffixes = {p.suffix.lower() for p in annotations.iterdir()}
        if suffixes & {".geojson", ".json"}:  # first: slides may have other XML files beside them
            return "geojson"
        if ".xml" in suffixes:
            return "voc"
    raise ConfigurationError(f"Cannot tell the annotation format of {annotations}: give --format geojson, csv or voc")


def read_annotations(
    annotations: str | Path, fmt: str = "auto", columns: ColumnNames = ColumnNames()
) -> dict[str, list[tuple[str | None, BaseGeometry]]]:
    annotations = Path(annotations)
    if not annotations.exists():
        raise ConfigurationError(f"Annotations {annotations} do not exist")
    if fmt not in FORMATS:
        raise ConfigurationError(f"Unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    fmt = detect_format(annotations) if fmt == "auto" else fmt
    if fmt == "csv":
        return read_csv(annotations, columns)
    if fmt == "voc":
        return read_voc(annotations if annotations.is_dir() else annotations.parent)
    return read_geojson(annotations, columns)


# ---------------------------------------------------------------------- import
def list_image_files(folder: Path) -> list[Path]:
    """The images and slides of a folder (recursively), or the one file named."""
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise ConfigurationError(f"Image folder {folder} does not exist")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in FILE_EXTENSIONS and p.is_file())


def import_folder(
    store: CytomineStore,
    project: str,
    images: str | Path,
    annotations: str | Path | None = None,
    *,
    fmt: str = "auto",
    columns: ColumnNames = ColumnNames(),
    copy_to: str | Path | None = None,
    user: str = "admin",
    only_annotated: bool = False,
    limit: int | None = None,
) -> ImportReport:
    """Import ``images`` (a folder of images and whole-slide files, or one file) and their
    ``annotations`` into ``project`` (created when new, managed by ``user``; an existing project
    gets ``user`` as a member).

    Images are referenced where they are, or copied under ``copy_to`` (source files are never
    modified). Images already in the project are skipped, so an import can be re-run.
    ``limit`` imports only the first N images (sorted by name), for samples.
    """
    images = Path(images)
    objects = read_annotations(annotations, fmt, columns) if annotations is not None else {}
    files = list_image_files(images)
    matched, missing = match_images(objects, files)
    if missing:
        logger.warning("%d annotated image(s) not found under %s, e.g. %s", len(missing), images, missing[:3])
    selected = [p for p in files if p in matched] if only_annotated else files
    if limit is not None:
        selected = selected[:limit]
    selected, unreadable = _readable(selected, single=images.is_file())
    if not selected:
        raise ConfigurationError(f"No image to import from {images}")
    owner = store.users.find_by_username(user)
    if owner is None:
        raise ConfigurationError(f"User {user!r} does not exist: create it with 'mtdp server user add {user}'")
    with store.transaction():
        project_row = _project_with_ontology(store, project, owner)
        if store.projects.role(project_row["id"], owner["id"]) is None and not owner["is_admin"]:
            # The annotations will be the user's: it must see them (the creator already manages a new project).
            store.projects.add_member(project_row["id"], owner["id"])
            logger.info("import: user %s added to project %s as a member", owner["username"], project_row["name"])
        items = [ImportedImage(_copied(path, images, copy_to), matched.get(path, [])) for path in selected]
        summary = store.imports.import_images(project_row["id"], items, owner)
    report = ImportReport(
        project=store.projects.get(project_row["id"]), missing_images=missing, unreadable=unreadable, **summary
    )
    logger.info("import: %s", report.summary())
    return report


def _readable(files: list[Path], *, single: bool) -> tuple[list[Path], list[str]]:
    """The files the server can read, and the names of the others (skipped with a warning; when
    only one file was named, its error is raised)."""
    readable, unreadable = [], []
    for path in files:
        try:
            image_info(path)
        except BadRequest as exc:
            if single:
                raise ConfigurationError(exc.message) from None
            logger.warning("import: %s skipped: %s", path, exc.message)
            unreadable.append(path.name)
            continue
        readable.append(path)
    return readable, unreadable


def match_images(
    objects: dict[str, list[tuple[str | None, BaseGeometry]]], files: list[Path]
) -> tuple[dict[Path, list[tuple[str | None, BaseGeometry]]], list[str]]:
    """The annotations of each image file (matched by file name or stem), and the image names
    the annotations name but the folder lacks."""
    by_name = {p.name: p for p in files}
    by_stem = {p.stem: p for p in files}
    matched: dict[Path, list[tuple[str | None, BaseGeometry]]] = {}
    missing = []
    for name, items in objects.items():
        path = by_name.get(name) or by_stem.get(name) or by_stem.get(Path(name).stem)
        if path is None:
            missing.append(name)
            continue
        matched.setdefault(path, []).extend(items)
    return matched, missing


def _project_with_ontology(store: CytomineStore, name: str, owner: Row) -> Row:
    """The project called ``name`` with an ontology (both created when missing)."""
    project = store.projects.find_by_name(name)
    if project is not None and project["ontology_id"] is not None:
        return project
    ontology = store.ontologies.create(f"{name} ontology", owner["id"])
    if project is None:
        return store.projects.create(name, ontology["id"], owner["id"])
    return store.projects.update(project["id"], {"ontology": ontology["id"]})


def _copied(path: Path, images: Path, copy_to: str | Path | None) -> Path:
    """``path``, or its copy under ``copy_to`` (made once, at the same relative place; a MIRAX
    ``.mrxs`` with the folder of the same name that holds its pixels)."""
    if copy_to is None:
        return path
    target = Path(copy_to) / path.relative_to(images if images.is_dir() else images.parent)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        companion = path.with_suffix("")
        if path.suffix.lower() == ".mrxs" and companion.is_dir():
            shutil.copytree(companion, target.with_suffix(""), dirs_exist_ok=True)
    return target
