import hashlib

import numpy as np
import pytest
from PIL import Image

from mtdp_core.cli import main
from mtdp_core.data.pools import load_pool
from mtdp_core.data.sources import build_shared_pool, build_task, list_sources, read_manifest
from mtdp_core.errors import ChecksumMismatchError, DataError
from tests.helpers.images import make_image


def _manifest(folder, rows):
    lines = ["path\tsplit\tlabel\tsha256"]
    for path, split, label in rows:
        digest = hashlib.sha256((folder / path).read_bytes()).hexdigest()
        lines.append(f"{path}\t{split}\t{label}\t{digest}")
    (folder / "MANIFEST.tsv").write_text("\n".join(lines) + "\n")


@pytest.fixture
def fake_shared(tmp_path):
    """A shared-data folder with a malaria-like set (no splits, smear ids) and a BCCD-like one."""
    root = tmp_path / "shared"
    malaria = root / "mini" / "malaria"
    rows = []
    for i in range(24):
        label = ("Parasitized", "Uninfected")[i % 2]
        name = f"{label}___C{i // 4}P{i // 4}ThinF_IMG_2015_cell_{i}_1.png"
        make_image(malaria / name, size=(30, 34), seed=i)
        rows.append((name, "", ""))
    _manifest(malaria, rows)
    bccd = root / "bccd"
    rows, boxes = [], ["filename,cell_type,xmin,xmax,ymin,ymax"]
    for i in range(6):
        name = f"BloodImage_{i:05d}.jpg"
        make_image(bccd / "JPEGImages" / name, size=(64, 48), seed=i)
        rows.append((f"JPEGImages/{name}", "", ""))
        boxes += [
            f"{name},RBC,2,20,3,30",
            f"{name},WBC,30,60,10,40",
            f"{name},Platelets,40,50,0,8",
            f"{name},RBC,5,6,5,30",
        ]
    _manifest(bccd, rows)
    (bccd / "boxes.csv").write_text("\n".join(boxes) + "\n")
    (bccd / "ImageSets" / "Main").mkdir(parents=True)
    for split, ids in (("train", [0, 1, 2, 3]), ("val", [4]), ("test", [5])):
        (bccd / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(f"BloodImage_{i:05d}" for i in ids) + "\n")
    return root


def test_set_without_splits_gets_grouped_stratified_splits(fake_shared, tmp_path):
    task = build_task("malaria", fake_shared, tmp_path / "pool", seed=0)
    assert task.classes == ("Parasitized", "Uninfected") and task.metric == "roc_auc" and task.group_kind == "slide"
    samples = task.samples("all")
    assert set(samples.splits) == {"train", "val", "test"}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not set(samples.groups[samples.splits == a]) & set(samples.groups[samples.splits == b])
    assert all(p.is_file() for p in samples.paths)  # images are referenced, not copied
    assert not (tmp_path / "pool" / "malaria" / "img").exists()
    again = build_task("malaria", fake_shared, tmp_path / "pool2", seed=0)
    assert np.array_equal(again.samples("all").splits, samples.splits)  # seeded


def test_bccd_boxes_become_cached_crops(fake_shared, tmp_path):
    task = build_task("bccd", fake_shared, tmp_path / "pool")
    assert task.classes == ("Platelets", "RBC", "WBC") and task.metric == "accuracy" and task.group_kind == "image"
    samples = task.samples("all")
    assert len(samples) == 18  # 4 boxes per image, the 1-pixel-wide one dropped
    assert dict(zip(*np.unique(samples.splits, return_counts=True))) == {
        "train": 12,
        "val": 3,
        "test": 3,
    }  # BCCD's own split
    with Image.open(samples.paths[0]) as crop:
        assert crop.size == (18, 27)
    stamp = task.folder / "crops" / "crops.json"
    mtimes = {p: p.stat().st_mtime_ns for p in samples.paths}
    build_task("bccd", fake_shared, tmp_path / "pool")  # second build: crops reused
    assert {p: p.stat().st_mtime_ns for p in samples.paths} == mtimes and stamp.is_file()
    (fake_shared / "bccd" / "boxes.csv").write_text(
        (fake_shared / "bccd" / "boxes.csv").read_text().replace(",2,20,", ",2,22,")
    )
    rebuilt = build_task("bccd", fake_shared, tmp_path / "pool").samples("all")
    with Image.open(rebuilt.paths[0]) as crop:
        assert crop.size == (20, 27)  # boxes changed: crops redone


def test_checksums_are_verified(fake_shared, tmp_path):
    first = min((fake_shared / "mini" / "malaria").glob("*.png"))
    make_image(first, size=(30, 34), seed=999)
    with pytest.raises(ChecksumMismatchError, match="the file changed"):
        build_task("malaria", fake_shared, tmp_path / "pool")
    build_task("malaria", fake_shared, tmp_path / "pool", verify=False)
    with pytest.raises(DataError, match="does not exist"):
        build_task("oral_cancer", fake_shared, tmp_path / "pool")


def test_a_failed_pool_build_leaves_nothing_that_stops_the_next_one(fake_shared, tmp_path):
    out = tmp_path / "pools" / "shared"
    with pytest.raises(DataError, match="does not exist: check --shared-data"):
        build_shared_pool(tmp_path / "wrong", out, tasks=["malaria", "bccd"], progress=False)
    assert not out.exists()  # was: an empty folder, then "Task pool ... holds no task folder"
    # Failing on the second task: the first is kept in the staging folder, out still absent.
    (fake_shared / "bccd" / "boxes.csv").rename(fake_shared / "boxes.csv")
    with pytest.raises((DataError, OSError)):
        build_shared_pool(fake_shared, out, tasks=["malaria", "bccd"], progress=False)
    assert not out.exists() and (tmp_path / "pools" / ".shared.building" / "malaria").is_dir()
    (fake_shared / "boxes.csv").rename(fake_shared / "bccd" / "boxes.csv")
    pool = build_shared_pool(fake_shared, out, tasks=["malaria", "bccd"], progress=False)
    assert pool.names == ["malaria", "bccd"] and pool.name == "shared"
    assert not (tmp_path / "pools" / ".shared.building").exists()
    assert all(p.is_file() for task in pool for p in task.samples("all").paths)  # roots valid after the move
    assert load_pool(out).names == ["malaria", "bccd"]
    # An empty folder (left by an older version, or made by hand) is built into, not refused.
    from mtdp_core.data.sources import pool_needs_building

    empty = tmp_path / "empty"
    empty.mkdir()
    assert pool_needs_building(empty) and pool_needs_building(tmp_path / "absent") and not pool_needs_building(out)
    assert build_shared_pool(fake_shared, empty, tasks=["malaria"], progress=False).names == ["malaria"]
    # Rebuilding an existing pool happens in place.
    assert build_shared_pool(fake_shared, out, tasks=["malaria"], progress=False).names == ["malaria"]


@pytest.fixture(scope="module")
def shared_pool(tmp_path_factory):
    from tests.helpers.paths import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (set MTDP_SHARED_DATA)")
    return build_shared_pool(SHARED_DATA, tmp_path_factory.mktemp("pools") / "shared", progress=False)


@pytest.mark.realdata
def test_every_shared_set_becomes_a_task(shared_pool, shared_data):
    assert shared_pool.names == list_sources()
    expected = {"oral_cancer": 1224, "herlev_papsmear": 917, "nct_crc_he": 70, "lc25000": 100, "malaria": 40}
    for name, n in expected.items():
        assert shared_pool[name].n_samples("all") == n
    assert shared_pool["bccd"].n_samples("all") == 4888 - 2  # two degenerate boxes
    assert [shared_pool[n].metric for n in list_sources()] == [
        "roc_auc",
        "accuracy",
        "accuracy",
        "accuracy",
        "roc_auc",
        "accuracy",
    ]
    nct = shared_pool["nct_crc_he"].samples("all")
    assert nct.class_counts() == {c: 10 for c in ("ADI", "LYM", "MUC", "MUS", "NORM", "STR", "TUM")}
    assert all(p.name.startswith(nct.classes[label] + "___") for p, label in zip(nct.paths, nct.labels))
    # The MANIFEST's train/test split is kept; val comes out of train.
    oral = {r.path: r.split for r in read_manifest(shared_data / "oral_cancer")}
    samples = shared_pool["oral_cancer"].samples("all")
    for path, split in zip(samples.paths, samples.splits):
        assert (split == "test") == (
            oral[path.relative_to((shared_data / "oral_cancer").resolve()).as_posix()] == "test"
        )
    for name in ("herlev_papsmear", "bccd", "malaria"):
        s = shared_pool[name].samples("all")
        assert not set(s.groups[s.splits == "val"]) & set(s.groups[s.splits == "train"]), name
    for task in shared_pool:  # every class in every split
        for split in ("train", "val", "test"):
            assert min(task.samples(split).class_counts().values()) > 0, (task.name, split)


@pytest.mark.realdata
def test_pool_commands(shared_pool, capsys, tmp_path, shared_data):
    assert main(["pool", "info", str(shared_pool.path), "--check"]) == 0
    out = capsys.readouterr().out
    assert "herlev_papsmear" in out and "accuracy" in out and "slide" in out
    assert (
        main(
            [
                "pool",
                "build",
                "--shared-data",
                str(shared_data),
                "--out",
                str(tmp_path / "p"),
                "--tasks",
                "malaria",
                "lc25000",
            ]
        )
        == 0
    )
    assert load_pool(tmp_path / "p").names == ["malaria", "lc25000"]
    assert main(["pool", "info", str(tmp_path / "missing")]) == 1
