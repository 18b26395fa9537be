"""The tasks under the local App Engine on real images: blood-smear cells of the shipped BCCD sample
(demo/data/bccd_sample, in the repository) picked as annotations, as a person picks them in the
viewer; the real whole slide of ../shared/data/wsi when present."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import pytest
from shapely.geometry import box, mapping, shape

from mtdp_core.appengine.local import run_local
from mtdp_core.appengine.tasks import get_task

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "demo" / "data" / "bccd_sample"


def cells() -> dict[str, list[tuple[str, tuple[int, int, int, int]]]]:
    """image file -> [(cell type, box)] from the sample's boxes.csv (pixel edges, top-left origin)."""
    out = defaultdict(list)
    with open(SAMPLE / "boxes.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            xyxy = (int(row["xmin"]), int(row["ymin"]), int(row["xmax"]), int(row["ymax"]))
            out[row["filename"]].append((row["cell_type"], xyxy))
    return dict(sorted(out.items()))


@pytest.mark.slow
def test_train_on_annotated_cells_then_classify_held_out_cells(tmp_path):
    by_image = cells()
    names = list(by_image)
    train_images, test_images = names[:8], names[40:41]
    entries, labels = [], []
    for name in train_images:
        features = [{"type": "Feature", "geometry": mapping(box(*xyxy))} for _, xyxy in by_image[name]]
        geojson = tmp_path / f"{name}.geojson"
        geojson.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        entries += [("input", "images", f"@{SAMPLE / 'images' / name}"), ("annotation", "images", f"@{geojson}")]
        labels += [kind for kind, _ in by_image[name]]
    entries += [("input", "labels", label) for label in labels]
    entries += [("input", "balanced_classes", "true"), ("input", "n_workers", "0")]
    trained = run_local(get_task("train"), entries, folder=tmp_path / "train", engine="inline")
    assert trained.ok, trained.reason
    assert trained.outputs["classes"] == ["Platelets", "RBC", "WBC"]
    assert trained.outputs["n_examples"] == len(labels)
    assert trained.outputs["cv_score"] > 0.8  # efficientnet_lite0 ImageNet features separate these cells well
    model = trained.outputs["model"]

    right = total = 0
    for name in test_images:
        for kind, xyxy in by_image[name]:
            polygon = box(*xyxy).wkt
            result = run_local(
                get_task("classify"),
                [
                    ("input", "model", f"@{model}"),
                    ("input", "image", f"@{SAMPLE / 'images' / name}"),
                    ("annotation", "image", polygon),
                    ("input", "n_workers", "0"),
                ],
                folder=tmp_path / f"classify-{total}",
                engine="inline",
            )
            assert result.ok, result.reason
            feature = json.loads(result.geojson.read_text())["features"][0]
            assert shape(feature["geometry"]).equals(box(*xyxy))  # drawn back where the cell is
            right += result.outputs["classes"][0] == kind
            total += 1
    assert total >= 4 and right / total >= 0.75, (right, total)


def _annotated_images(names: list[str], tmp_path: Path) -> tuple[list[tuple[str, str, str]], list[str]]:
    """--input/--annotation entries for the cells of ``names`` (one GeoJSON per image), and their labels."""
    by_image = cells()
    entries, labels = [], []
    for name in names:
        features = [{"type": "Feature", "geometry": mapping(box(*xyxy))} for _, xyxy in by_image[name]]
        geojson = tmp_path / f"{name}.geojson"
        geojson.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        entries += [("input", "images", f"@{SAMPLE / 'images' / name}"), ("annotation", "images", f"@{geojson}")]
        labels += [kind for kind, _ in by_image[name]]
    return entries, labels


@pytest.mark.slow
def test_extract_features_of_annotated_cells(tmp_path):
    import numpy as np

    entries, labels = _annotated_images(list(cells())[:2], tmp_path)
    entries += [("input", "labels", label) for label in labels] + [("input", "n_workers", "0")]
    result = run_local(get_task("extract_features"), entries, folder=tmp_path / "run", engine="inline")
    assert result.ok, result.reason
    assert result.outputs["n_images"] == len(labels) and result.outputs["n_features"] == 1280
    with np.load(result.outputs["features"], allow_pickle=False) as data:
        assert data["features"].shape == (len(labels), 1280)
        assert sorted(data["labels"].tolist()) == sorted(labels)


@pytest.mark.slow
def test_finetune_on_annotated_cells(tmp_path):
    entries, labels = _annotated_images(list(cells())[:4], tmp_path)
    entries += [("input", "labels", label) for label in labels]
    # one short epoch at 64 px: the task's flow on real cells, not the network's accuracy
    entries += [("input", k, v) for k, v in {"epochs": "1", "image_size": "64", "n_workers": "0"}.items()]
    result = run_local(get_task("finetune"), entries, folder=tmp_path / "run", engine="inline")
    assert result.ok, result.reason
    assert result.outputs["classes"] == ["Platelets", "RBC", "WBC"] and result.outputs["best_epoch"] == 1
    assert 0 <= result.outputs["validation_score"] <= 1
