"""The slide app end to end on the local server with the official client: svm-train on square
annotations of a generated slide (its model records 2 µm/px), then slide-classify maps the slide
(blocks at the model's zoom, or the downloaded file), pushes the map back once, and fails cleanly
on bad input with nothing pushed."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import shapely

from mtdp_core.server.backends import AnnotationQuery
from mtdp_core.server.importers import import_folder
from mtdp_core.slides.testing import write_slide
from mtdp_core.transfer.persistence import load_model
from tests.helpers.apps import FAILED, FAST, SUCCESS, Apps
from tests.helpers.paths import REPO_ROOT as ROOT
from tests.helpers.slides import make_probe, two_tissue_pixels

WIDTH, HEIGHT = 720, 560  # 1 µm/px; tissue on [40, 680) x [40, 520), pink left of x = 360, purple right
TRAIN = {**FAST, "cv_folds": 3, "crop_max_size": 64}
MAP = {"batch_size": 8, "n_workers": 0, "min_area": 0}


def _square(x: int, y: int, label: str | None, side: int = 64) -> dict:
    ring = [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]
    properties = {"objectType": "annotation"}
    if label:
        properties["classification"] = {"name": label}
    return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": properties}


def _features() -> list[dict]:
    """64 px squares (64 µm: 2 µm/px at the network's 32 px) in each tissue, and an unclassified ROI."""
    squares = [_square(x, y, "pink") for x in (60, 150, 240) for y in (80, 220, 360)]
    squares += [_square(x, y, "purple") for x in (420, 510, 600) for y in (80, 220, 360)]
    return squares + [_square(40, 40, None, side=300)]  # a region of interest over the pink tissue


@pytest.fixture
def slides(tmp_path) -> Path:
    folder = tmp_path / "slides"
    folder.mkdir()
    write_slide(folder / "case.svs", two_tissue_pixels(), levels=3, tile=128, fmt="svs", mpp=1.0)
    (folder / "case.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": _features()}))
    return folder


@pytest.fixture
def slide_apps(server, slides, tmp_path, monkeypatch) -> Apps:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MTDP_CACHE_DIR", str(tmp_path / "cache"))
    report = import_folder(server.store, "slides", slides, slides)
    software = {
        app: server.register_app(ROOT / "descriptors" / f"{app}.json")["id"] for app in ("svm_train", "slide_classify")
    }
    return Apps(server, SimpleNamespace(project_id=report.project["id"]), software)


@pytest.fixture
def trained(slide_apps) -> dict:
    terms = {t["name"]: t["id"] for t in slide_apps.server.store.projects.terms(slide_apps.project.project_id)}
    job = slide_apps.run("svm_train", **TRAIN, cytomine_id_terms=[terms["pink"], terms["purple"]])
    assert job["status"] == SUCCESS, job["status_comment"]
    return job


def _pushed(apps: Apps) -> list[dict]:
    """The algo annotations of the project, with their terms."""
    rows, _ = apps.server.store.annotations.list(AnnotationQuery(project=apps.project.project_id, kind="algo"))
    return rows


def _term_names(apps: Apps) -> dict[int, str]:
    return {t["id"]: t["name"] for t in apps.server.store.projects.terms(apps.project.project_id)}


@pytest.mark.slow
def test_the_map_is_pushed_once_with_the_model_resolution(slide_apps, trained):
    model = load_model(slide_apps.files(trained)["mtdp-model.npz"])
    assert model.mpp == pytest.approx(2.0)  # 64 px squares of a 1 µm/px slide, seen at 32 px
    job = slide_apps.run("slide_classify", cytomine_id_job=trained["id"], pixels="windows", **MAP)
    assert job["status"] == SUCCESS, job["status_comment"]
    assert job["status_comment"].startswith("1 images mapped") and "at 2 µm/px" in job["status_comment"]
    names = slide_apps.file_names(job)
    images = [i["id"] for i in slide_apps.server.store.images.list(slide_apps.project.project_id)]
    assert {"maps.csv", f"{images[0]}-case.geojson", f"{images[0]}-case-overlay.png"} <= set(names)
    pushed = _pushed(slide_apps)
    terms = _term_names(slide_apps)
    areas = {"pink": 0.0, "purple": 0.0}  # each class's area on its own side, minus on the other
    for row in pushed:
        geometry, term = shapely.from_wkt(row["location"]), terms[row["terms"][0]["term_id"]]
        assert 0 <= geometry.bounds[1] and geometry.bounds[3] <= HEIGHT - 40  # Cytomine's y: tissue ends 40 px up
        side = "pink" if geometry.centroid.x < WIDTH / 2 else "purple"
        areas[term] += geometry.area if term == side else -geometry.area
    assert areas["pink"] > 40_000 and areas["purple"] > 40_000
    rows = list(csv.DictReader(open(slide_apps.files(job)["maps.csv"])))
    assert {r["class"] for r in rows} == {"pink", "purple"} and sum(int(r["pushed"]) for r in rows) == len(pushed)
    geojson = json.loads(next(p for n, p in slide_apps.files(job).items() if n.endswith(".geojson")).read_text())
    tiles = [f for f in geojson["features"] if f["properties"]["objectType"] == "tile"]
    assert tiles and all(0 <= c[1] <= HEIGHT for f in tiles for c in f["geometry"]["coordinates"][0])

    again = slide_apps.run("slide_classify", cytomine_id_job=trained["id"], pixels="download", **MAP)
    assert again["status"] == SUCCESS, again["status_comment"]
    assert "0 annotations created" in again["status_comment"] and len(_pushed(slide_apps)) == len(pushed)


@pytest.mark.slow
def test_tiles_are_pushed_one_annotation_each(slide_apps, trained):
    job = slide_apps.run("slide_classify", cytomine_id_job=trained["id"], map_as="tiles", **MAP)
    assert job["status"] == SUCCESS, job["status_comment"]
    properties = slide_apps.properties(job)
    assert properties["resolution"] == "2 µm/px"
    pushed = _pushed(slide_apps)
    assert len(pushed) == int(properties["n_tiles"]) > 40
    for row in pushed:  # 32 px tiles at 2 µm/px: 64 x 64 level-0 squares, in Cytomine's coordinates
        minx, miny, maxx, maxy = shapely.from_wkt(row["location"]).bounds
        assert (maxx - minx, maxy - miny) == (64, 64) and 40 <= miny and maxy <= HEIGHT - 40


@pytest.mark.slow
def test_regions_of_interest_limit_the_map(slide_apps, trained):
    store = slide_apps.server.store
    roi = next(
        r
        for r in store.annotations.list(AnnotationQuery(project=slide_apps.project.project_id))[0]
        if r["area"] > 80_000
    )
    params = {**MAP, "cytomine_id_job": trained["id"], "cytomine_id_roi_annotations": [roi["id"]]}
    job = slide_apps.server.launch("slide_classify", slide_apps.project.project_id, params, timeout=300)
    assert job["status"] == SUCCESS, job["status_comment"]  # launched as Cytomine does: from the descriptor
    region = shapely.from_wkt(roi["location"]).buffer(1)
    assert _pushed(slide_apps) and all(region.contains(shapely.from_wkt(r["location"])) for r in _pushed(slide_apps))


def _model_job(apps: Apps, model: Path) -> dict:
    """A finished job of the project with ``model`` attached, as a training job leaves it."""
    store = apps.server.store
    admin = store.users.find_by_username("admin")
    job, _ = store.jobs.create(apps.project.project_id, apps.software["svm_train"], admin)
    store.meta.add_attached_file("be.cytomine.processing.Job", job["id"], "mtdp-model.npz", model.read_bytes())
    return job


@pytest.mark.slow
def test_a_model_without_resolution_needs_a_resolution(slide_apps, tmp_path):
    job = _model_job(slide_apps, make_probe(tmp_path / "probe.npz", mpp=None))
    failed = slide_apps.run("slide_classify", cytomine_id_job=job["id"], **MAP)
    assert failed["status"] == FAILED and failed["status_comment"].startswith("Set resolution to the µm per pixel")
    done = slide_apps.run("slide_classify", cytomine_id_job=job["id"], resolution="2", **MAP)
    assert done["status"] == SUCCESS, done["status_comment"]
    assert "without a term to push" in done["status_comment"]  # a local model's classes have no Cytomine term


@pytest.mark.slow
def test_annotations_of_different_sizes_record_no_resolution(slide_apps):
    store = slide_apps.server.store
    terms = {t["name"]: t["id"] for t in store.projects.terms(slide_apps.project.project_id)}
    image = store.images.list(slide_apps.project.project_id)[0]
    big = shapely.box(420, 100, 620, 300).wkt  # a 200 px purple square among the 64 px ones
    store.annotations.create(
        {"location": big, "image": image["id"], "term": [terms["purple"]]}, store.users.find_by_username("admin")
    )
    job = slide_apps.run("svm_train", **TRAIN, cytomine_id_terms=[terms["pink"], terms["purple"]])
    model = load_model(slide_apps.files(job)["mtdp-model.npz"])
    assert model.mpp is None and "different resolutions" in model.extra["source"]["resolution"]["why"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"backbone": "resnet34"}, "Leave backbone and weights empty"),
        ({"cytomine_id_roi_annotations": [999999]}, "Select existing annotations in cytomine_id_roi_annotations"),
    ],
)
def test_bad_parameters_fail_clearly(slide_apps, trained, change, message):
    job = slide_apps.run("slide_classify", cytomine_id_job=trained["id"], **{**MAP, **change})
    assert job["status"] == FAILED and job["status_comment"].startswith(message), job["status_comment"]
    assert not _pushed(slide_apps)


def _add_image(apps: Apps, path: Path) -> dict:
    return apps.server.store.images.add(path, apps.project.project_id)


@pytest.mark.slow
def test_bad_slides_fail_with_nothing_pushed(slide_apps, trained, tmp_path):
    blank = np.full((HEIGHT, WIDTH, 3), 243, dtype=np.uint8)
    _add_image(slide_apps, write_slide(tmp_path / "blank.tif", blank, levels=2, tile=128, mpp=1.0))
    job = slide_apps.run("slide_classify", cytomine_id_job=trained["id"], **MAP)
    assert job["status_comment"].startswith("Select images with tissue, or lower min_tissue: ")
    assert "-blank (1 of 2 images mapped, nothing pushed): No tissue found" in job["status_comment"]
    assert job["status"] == FAILED and not _pushed(slide_apps)


@pytest.mark.slow
def test_a_slide_without_resolution_needs_slide_mpp(slide_apps, trained, tmp_path):
    image = _add_image(slide_apps, write_slide(tmp_path / "nompp.tif", two_tissue_pixels(), levels=2, mpp=None))
    params = {**MAP, "cytomine_id_job": trained["id"], "cytomine_id_images": [image["id"]]}
    job = slide_apps.run("slide_classify", **params)
    assert job["status"] == FAILED and job["status_comment"].startswith("Set slide_mpp"), job["status_comment"]
    job = slide_apps.run("slide_classify", **params, slide_mpp=1.0)
    assert job["status"] == SUCCESS, job["status_comment"]


@pytest.mark.slow
def test_an_unreadable_file_fails_clearly(slide_apps, trained, tmp_path):
    path = write_slide(tmp_path / "damaged.tif", two_tissue_pixels(), levels=2, mpp=1.0)
    image = _add_image(slide_apps, path)
    path.write_bytes(b"no longer a slide")
    job = slide_apps.run("slide_classify", cytomine_id_job=trained["id"], cytomine_id_images=[image["id"]], **MAP)
    assert job["status"] == FAILED and job["status_comment"].startswith("Check image"), job["status_comment"]
    assert not _pushed(slide_apps)


@pytest.mark.slow
@pytest.mark.realdata
def test_the_real_cmu_slide_is_mapped(server, shared_data, tmp_path, monkeypatch):
    path = shared_data / "wsi" / "CMU-1-Small-Region.svs"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MTDP_CACHE_DIR", str(tmp_path / "cache"))
    report = import_folder(server.store, "cmu", path)
    software = {"slide_classify": server.register_app(ROOT / "descriptors" / "slide_classify.json")["id"]}
    apps = Apps(server, SimpleNamespace(project_id=report.project["id"]), software)
    software["svm_train"] = software["slide_classify"]  # any software: the job only holds the model
    training = _model_job(apps, make_probe(tmp_path / "probe.npz", mpp=4.0))  # 32 px tiles of 128 scan pixels
    job = apps.run("slide_classify", cytomine_id_job=training["id"], resolution="4", **MAP)
    assert job["status"] == SUCCESS, job["status_comment"]
    assert int(apps.properties(job)["n_tiles"]) > 20


def test_local_mode_maps_a_folder_of_slides(slides, tmp_path):
    from tests.helpers.apps import load_workflow

    model = make_probe(tmp_path / "probe.npz")  # records 2 µm/px
    out = tmp_path / "maps"
    argv = ["--local", "--model", str(model), "--infolder", str(slides), "--outfolder", str(out), "--n_workers", "0"]
    assert load_workflow("slide_classify").main(argv) == 0
    rows = list(csv.DictReader(open(out / "maps.csv")))
    assert {r["image"] for r in rows} == {"case"} and sum(int(r["tiles"]) for r in rows) > 40
    assert (out / "case.geojson").is_file() and (out / "case-overlay.png").is_file()


def test_local_mode_maps_tiles_at_a_magnification(slides, tmp_path):
    """map_as tiles: one piece per tile; resolution 5x on a slide of 1 µm/px without objective power
    reads 2 µm/px tiles (10 µm/px at 1x), the model's own resolution: the same tiles."""
    from tests.helpers.apps import load_workflow

    model = make_probe(tmp_path / "probe.npz")  # records 2 µm/px
    argv = ["--local", "--model", str(model), "--infolder", str(slides), "--n_workers", "0"]
    out = {mode: tmp_path / mode for mode in ("regions", "tiles")}
    main = load_workflow("slide_classify").main
    assert main([*argv, "--outfolder", str(out["regions"])]) == 0
    tiles_at_5x = ["--map_as", "tiles", "--resolution", "5x", "--min_area", "0"]
    assert main([*argv, "--outfolder", str(out["tiles"]), *tiles_at_5x]) == 0
    rows = {mode: list(csv.DictReader(open(folder / "maps.csv"))) for mode, folder in out.items()}
    assert [r["tiles"] for r in rows["tiles"]] == [r["tiles"] for r in rows["regions"]]
    assert all(r["pieces"] == r["tiles"] for r in rows["tiles"])
    assert sum(int(r["pieces"]) for r in rows["regions"]) < sum(int(r["tiles"]) for r in rows["regions"])
    assert json.loads((out["tiles"] / "properties.json").read_text())["resolution"] == "5x"
