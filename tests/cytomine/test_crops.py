"""Crop downloads against the local server: exact pixels, cache, stale geometry, failures, retries."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mtdp_core.cytomine.annotations import AnnotationFilters, list_annotations
from mtdp_core.cytomine.crops import CropSpec, CropStore, check_crop_resolution, download_crops, native_size
from mtdp_core.cytomine.errors import CropDownloadError, CytomineRequestError, ParameterError
from mtdp_core.server.geometry import box_in_cytomine


@pytest.fixture
def records(admin_session, seeded):
    return list_annotations(admin_session, AnnotationFilters(seeded.project_id))


def test_crops_are_exact_and_cached(admin_session, seeded, records, tmp_path):
    store = CropStore(tmp_path, admin_session.server_url, CropSpec())
    report = download_crops(admin_session, records, store, threads=4)
    assert report.n_downloaded == len(records) == 8 and not report.failures
    by_id = {r.id: p for r, p in zip(records, report.paths)}
    for annotation in seeded.annotations:
        pixels = np.asarray(Image.open(by_id[annotation.id]).convert("RGB"))
        assert np.array_equal(pixels, seeded.crop_pixels(annotation))  # native size, sent explicitly
    again = download_crops(admin_session, records, store, threads=4)
    assert again.n_cached == 8 and again.n_downloaded == 0 and again.paths == report.paths


def test_edited_annotation_is_downloaded_again(admin_session, client, seeded, records, tmp_path):
    store = CropStore(tmp_path, admin_session.server_url, CropSpec())
    first = download_crops(admin_session, records, store)
    annotation = seeded.annotations[0]
    height = seeded.images[0]["height"]
    moved = box_in_cytomine(0, 0, 10, 12, height).wkt
    admin_session.put_json(f"annotation/{annotation.id}.json", {"location": moved})
    edited = list_annotations(admin_session, AnnotationFilters(seeded.project_id))
    report = download_crops(admin_session, edited, store)
    assert report.n_downloaded == 1 and report.n_cached == 7
    new_path = report.paths[[r.id for r in edited].index(annotation.id)]
    assert new_path != first.paths[[r.id for r in records].index(annotation.id)]
    assert Image.open(new_path).size == (10, 12)


def test_other_crop_parameters_use_other_files(admin_session, records, tmp_path):
    small = download_crops(admin_session, records, CropStore(tmp_path, admin_session.server_url, CropSpec(max_size=32)))
    assert small.n_downloaded == 8
    assert all(max(Image.open(p).size) == 32 for p in small.paths)


def test_failed_crops_are_counted_and_retries_recover(admin_session, records, tmp_path, monkeypatch):
    calls: dict[str, int] = {}
    original = admin_session.request_once
    gone, flaky = records[0].id, records[1].id

    def fake(method, path, **kwargs):
        if f"/{gone}/crop" in path:
            raise CytomineRequestError("HTTP 404: not found", status=404)
        if f"/{flaky}/crop" in path:
            calls[path] = calls.get(path, 0) + 1
            if calls[path] <= 2:
                raise CytomineRequestError("HTTP 503: busy", status=503)
        return original(method, path, **kwargs)

    monkeypatch.setattr(admin_session, "request_once", fake)
    report = download_crops(admin_session, records, CropStore(tmp_path, admin_session.server_url, CropSpec()))
    assert [a for a, _ in report.failures] == [gone]
    assert report.paths[0] is None and report.paths[1] is not None and sum(calls.values()) == 3
    assert "7 of 8 crops" in report.summary() and "1 failed" in report.summary()
    with pytest.raises(CropDownloadError, match="1 of 8 crops failed"):
        report.check(max_failed_fraction=0.1)
    report.check(max_failed_fraction=0.2)


def test_truncated_images_are_not_cached(admin_session, records, tmp_path, monkeypatch):
    original = admin_session.request_once

    class Broken:
        content = b"\x89PNG\r\n\x1a\nnot really"

    monkeypatch.setattr(
        admin_session,
        "request_once",
        lambda m, p, **k: Broken() if f"/{records[0].id}/crop" in p else original(m, p, **k),
    )
    admin_session.retries = 1
    store = CropStore(tmp_path, admin_session.server_url, CropSpec())
    report = download_crops(admin_session, records, store)
    assert report.failures and "unreadable image" in report.failures[0][1]
    assert not store.path(records[0]).exists()


def test_no_download_uses_only_files_present(admin_session, records, tmp_path):
    store = CropStore.flat_folder(tmp_path / "in", CropSpec())
    download_crops(admin_session, records[:3], store)
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == sorted(f"{r.id}.png" for r in records[:3])
    report = download_crops(None, records, store, download=False)
    assert report.n_cached == 3 and report.n_failed == 5 and "--no_download" in report.failures[0][1]


def test_crop_spec_checks_and_native_size():
    assert native_size("POLYGON ((0 0, 30 0, 30 10, 0 10, 0 0))", zoom=1, increase_area=2.0) == 30
    assert native_size("POINT (5 5)") == 100
    assert CropSpec(max_size=64, increase_area=1.5).params("POINT (1 1)") == {"maxSize": 64, "increaseArea": 1.5}
    for bad in ({"zoom": -1}, {"max_size": 4}, {"increase_area": 0.5}, {"format": "gif"}):
        with pytest.raises(ParameterError):
            CropSpec(**bad)


def test_a_zoom_that_leaves_a_few_pixels_is_refused(records):
    # Issue 11 item 11: crop_zoom=8 gave 1 x 1 crops (scaled up to max_size) without a word.
    check_crop_resolution(records, CropSpec(zoom=0))
    with pytest.raises(
        ParameterError, match=r"^Lower crop_zoom to at most \d: at zoom 8 the crops would be 1 pixel wide"
    ):
        check_crop_resolution(records, CropSpec(zoom=8, max_size=256))
