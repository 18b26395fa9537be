"""Importers: GeoJSON, CSV and Pascal VOC folders into projects, coordinates converted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from cytomine.models import AnnotationCollection
from PIL import Image

from mtdp_core.errors import ConfigurationError
from mtdp_core.server.backends import AnnotationQuery
from mtdp_core.server.importers import ColumnNames, import_folder, read_annotations
from mtdp_core.server.testing import seed_bccd_project


@pytest.fixture
def folder(tmp_path):
    """Two 60x40 images with known pixels."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(images / name)
    return images


def _boxes(server, project_id):
    """(image file name, label, box in image coordinates) of every annotation of a project."""
    store = server.store
    images = {i["id"]: i for i in store.images.list(project_id)}
    terms = {t["id"]: t["name"] for t in store.projects.terms(project_id)}
    rows, _ = store.annotations.list(AnnotationQuery(project=project_id))
    out = set()
    for row in rows:
        image = images[row["image_id"]]
        h = image["height"]
        out.add(
            (
                image["original_filename"],
                terms[row["terms"][0]["term_id"]],
                (row["minx"], h - row["maxy"], row["maxx"], h - row["miny"]),
            )
        )
    return out


def test_csv_of_boxes_with_auto_detected_columns(server, folder, tmp_path):
    csv_file = tmp_path / "boxes.csv"
    csv_file.write_text(
        "filename,cell_type,xmin,xmax,ymin,ymax\na.png,RBC,10,20,5,15\na.png,WBC,0,30,20,40\n"
        "b.png,RBC,50,70,30,45\nmissing.png,RBC,1,2,3,4\n"
    )
    report = import_folder(server.store, "csv", folder, csv_file)
    assert (report.images, report.annotations, report.terms) == (2, 3, 2) and report.missing_images == ["missing.png"]
    assert _boxes(server, report.project["id"]) == {
        ("a.png", "RBC", (10, 5, 20, 15)),
        ("a.png", "WBC", (0, 20, 30, 40)),
        ("b.png", "RBC", (50, 30, 60, 40)),  # cut to the 60 x 40 image
    }
    # Re-running skips the images already there instead of duplicating annotations.
    again = import_folder(server.store, "csv", folder, csv_file)
    assert (again.images, again.skipped_images, again.annotations) == (0, 2, 0)


def test_csv_with_wkt_and_named_columns(server, folder, tmp_path):
    csv_file = tmp_path / "polygons.csv"
    csv_file.write_text('img;what;shape\na.png;gland;"POLYGON ((1 1, 11 1, 11 6, 1 6, 1 1))"\n')
    report = import_folder(
        server.store, "wkt", folder, csv_file, columns=ColumnNames(image="img", label="what", geometry="shape")
    )
    assert _boxes(server, report.project["id"]) == {("a.png", "gland", (1, 1, 11, 6))}
    with pytest.raises(ConfigurationError, match="No label column"):
        read_annotations(csv_file, "csv", ColumnNames(image="img"))


def test_pascal_voc_folder(server, folder, tmp_path):
    voc = tmp_path / "Annotations"
    voc.mkdir()
    (voc / "a.xml").write_text(
        "<annotation><filename>a.png</filename><object><name>Platelets</name><bndbox>"
        "<xmin>3</xmin><ymin>4</ymin><xmax>13</xmax><ymax>24</ymax></bndbox></object>"
        "</annotation>"
    )
    report = import_folder(server.store, "voc", folder, voc, only_annotated=True)
    assert report.images == 1 and _boxes(server, report.project["id"]) == {("a.png", "Platelets", (3, 4, 13, 24))}


def test_geojson_per_image_with_qupath_labels(server, folder, tmp_path):
    geo = tmp_path / "geojson"
    geo.mkdir()
    (geo / "a.geojson").write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "geometry": {"type": "Polygon", "coordinates": [[[5, 5], [25, 5], [25, 15], [5, 15], [5, 5]]]},
                        "properties": {"classification": {"name": "Tumor", "color": [255, 0, 0]}},
                    },
                    {
                        "type": "Feature",
                        "geometry": {"type": "Point", "coordinates": [30, 10]},
                        "properties": {"label": "Mitosis"},
                    },
                ],
            }
        )
    )
    report = import_folder(server.store, "geojson", folder, geo)
    assert report.annotations == 2 and report.images == 2
    store = server.store
    rows, _ = store.annotations.list(AnnotationQuery(project=report.project["id"]))
    point = next(r for r in rows if r["location"].startswith("POINT"))
    assert shapely.from_wkt(point["location"]).equals(shapely.Point(30, 30))  # y: 40 - 10


def test_imported_project_serves_exact_crops(server, folder, tmp_path):
    csv_file = tmp_path / "boxes.csv"
    csv_file.write_text("filename,label,xmin,ymin,xmax,ymax\nb.png,x,7,9,27,19\n")
    report = import_folder(server.store, "crops", folder, csv_file, copy_to=tmp_path / "copies")
    assert (tmp_path / "copies" / "b.png").read_bytes() == (folder / "b.png").read_bytes()
    server.connect()
    annotation = AnnotationCollection(project=report.project["id"]).fetch()[0]
    assert annotation.dump(str(tmp_path / "crop.png"), max_size=20)
    expected = np.asarray(Image.open(folder / "b.png"))[9:19, 7:27]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "crop.png")), expected)


def test_import_errors_are_explained(server, folder, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("filename,label,xmin,xmax\na.png,x,1,2\n")
    with pytest.raises(ConfigurationError, match="no geometry"):
        import_folder(server.store, "bad", folder, bad)
    with pytest.raises(ConfigurationError, match="Cannot tell the annotation format"):
        import_folder(server.store, "bad", folder, tmp_path / "images")
    with pytest.raises(ConfigurationError, match="does not exist"):
        import_folder(server.store, "bad", tmp_path / "nowhere", None)


@pytest.mark.realdata
def test_bccd_import(server, shared_data, tmp_path):
    bccd = shared_data / "bccd"
    report = import_folder(server.store, "bccd", bccd / "JPEGImages", bccd / "boxes.csv")
    # 364 images, 4,888 boxes, two of which have zero size (refused, as a core refuses them).
    assert (report.images, report.annotations, report.refused_annotations) == (364, 4886, 2)
    terms = {t["name"] for t in server.store.projects.terms(report.project["id"])}
    assert terms == {"RBC", "WBC", "Platelets"}
    voc = import_folder(server.store, "bccd-voc", bccd / "JPEGImages", bccd / "Annotations")
    assert voc.annotations == 4886
    assert _boxes(server, voc.project["id"]) == _boxes(server, report.project["id"])


@pytest.mark.realdata
def test_bccd_sample_crops_match_the_jpeg_pixels(server, shared_data, tmp_path):
    seeded = seed_bccd_project(server, shared_data / "bccd", n_images=2)
    server.connect()
    annotations = AnnotationCollection(project=seeded.project_id, showTerm=True).fetch()
    by_id = {a.id: a for a in seeded.annotations}
    for annotation in list(annotations)[:10]:
        expected = seeded.crop_pixels(by_id[annotation.id])
        assert annotation.dump(str(tmp_path / f"{annotation.id}.png"), max_size=max(expected.shape[:2]))
        np.testing.assert_array_equal(np.asarray(Image.open(annotation.filename)), expected)
