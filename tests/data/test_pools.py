import json

import numpy as np
import pytest

from mtdp_core.data.pools import (
    SampleRow,
    Task,
    TaskInfo,
    assign_splits,
    holdout_mask,
    load_pool,
    write_pool_index,
    write_task,
)
from mtdp_core.errors import ConfigurationError, DataError, UnknownNameError
from tests.data.pool_factory import make_tiny_pool
from tests.helpers.images import make_image


def test_write_then_load_round_trip(tmp_path):
    pool = make_tiny_pool(tmp_path / "pool")
    assert pool.names == ["alpha", "beta", "gamma"]
    beta = pool["beta"]
    assert beta.classes == ("class0", "class1", "class2") and beta.metric == "accuracy" and beta.group_kind == "image"
    train = beta.samples("train")
    assert len(train) == 9 and train.labels.dtype == np.int64
    assert all(p.is_absolute() and p.is_file() for p in train.paths)
    assert list(train.labels[:3]) == [0, 1, 2] and train.groups[0] == "g0"
    assert len(beta.samples(["val", "test"])) == 6 and len(beta.samples("all")) == 15
    assert beta.splits == ("train", "val", "test")
    assert pool["alpha"].metric == "roc_auc"


def test_loading_reads_only_the_index(tmp_path):
    make_tiny_pool(tmp_path / "pool")
    # With pool.json, nothing else is read until samples are asked for.
    for task in ("alpha", "beta", "gamma"):
        (tmp_path / "pool" / task / "task.json").unlink()
    pool = load_pool(tmp_path / "pool")
    assert pool["gamma"].classes == ("class0", "class1") and pool["gamma"].n_samples("train") == 24
    assert pool["gamma"]._table is None  # samples.tsv not read yet
    (tmp_path / "pool" / "gamma" / "samples.tsv").unlink()
    assert pool["gamma"].n_samples("val") == 8  # from the index counts
    with pytest.raises(DataError, match="neither samples.tsv nor"):
        pool["gamma"].samples("train")


def test_pool_without_index_discovers_task_folders(tmp_path):
    make_tiny_pool(tmp_path / "pool", index=False)
    (tmp_path / "pool" / "notes").mkdir()  # not a task
    pool = load_pool(tmp_path / "pool")
    assert pool.names == ["alpha", "beta", "gamma"]
    write_pool_index(tmp_path / "pool")
    assert json.loads((tmp_path / "pool" / "pool.json").read_text())["tasks"][2]["info"]["counts"] == {
        "train": 24,
        "val": 8,
        "test": 8,
    }


def test_class_folder_layout_with_group_pattern(tmp_path):
    root = tmp_path / "pool" / "folders"
    for split, n in (("train", 4), ("test", 2)):
        for c in ("benign", "malignant"):
            for i in range(n):
                make_image(root / split / c / f"patient{i % 2}_{c}_{i}.png", seed=i)
    (root / "task.json").write_text(
        json.dumps(
            {
                "name": "folders",
                "classes": ["benign", "malignant"],
                "group_kind": "patient",
                "group_pattern": r"^(patient\d+)_",
            }
        )
    )
    task = load_pool(tmp_path / "pool")["folders"]
    assert task.layout == "folders" and task.metric == "roc_auc"  # binary -> ROC AUC by default
    train = task.samples("train")
    assert len(train) == 8 and set(train.groups) == {"patient0", "patient1"}
    assert task.splits == ("train", "test")


def test_class_folder_layout_without_task_json(tmp_path):
    for c in ("a", "b", "c"):
        make_image(tmp_path / "pool" / "t" / "train" / c / "x.png")
    task = load_pool(tmp_path / "pool")["t"]
    assert task.classes == ("a", "b", "c") and task.metric == "accuracy" and task.group_kind == "none"
    assert task.samples("train").groups is None


def test_subset_and_unknown_names(tmp_path):
    pool = make_tiny_pool(tmp_path / "pool")
    assert pool.subset(exclude=["beta"]).names == ["alpha", "gamma"]
    assert pool.subset(include=["gamma", "alpha"]).names == ["alpha", "gamma"]  # pool order kept
    with pytest.raises(UnknownNameError, match="Did you mean 'gamma'"):
        pool.subset(exclude=["gama"])
    with pytest.raises(ConfigurationError, match="No task left"):
        pool.subset(exclude=pool.names)
    with pytest.raises(UnknownNameError):
        pool["delta"]


def test_manifest_errors_name_the_line(tmp_path):
    make_tiny_pool(tmp_path / "pool", index=False)
    manifest = tmp_path / "pool" / "alpha" / "samples.tsv"
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(lines[:2] + ["img/000.png\ttrian\tclass0\tg0"]) + "\n")
    with pytest.raises(DataError, match=r"samples.tsv:3: unknown split 'trian'"):
        load_pool(tmp_path / "pool")["alpha"].samples("train")
    manifest.write_text("\n".join(lines[:2] + ["img/000.png\ttrain\tclass9\tg0"]) + "\n")
    with pytest.raises(DataError, match="class9"):
        load_pool(tmp_path / "pool")["alpha"].samples("train")
    manifest.write_text("file\tsplit\tlabel\n")
    with pytest.raises(DataError, match="must start with the header"):
        load_pool(tmp_path / "pool")["alpha"].samples("train")


def test_write_task_validates_rows(tmp_path):
    info = TaskInfo("t", ("a", "b"), "roc_auc", group_kind="patient")
    with pytest.raises(DataError, match="no group id"):
        write_task(tmp_path / "t", info, [SampleRow("x.png", "train", "a"), SampleRow("y.png", "train", "b")])
    with pytest.raises(DataError, match=r"no training sample of class\(es\) \['b'\]"):
        write_task(
            tmp_path / "t", info, [SampleRow("x.png", "train", "a", "p1"), SampleRow("y.png", "test", "b", "p2")]
        )
    with pytest.raises(DataError, match="ROC AUC needs a binary task"):
        TaskInfo("t", ("a", "b", "c"), "roc_auc")
    with pytest.raises(DataError, match="Invalid task name"):
        TaskInfo("train", ("a", "b"), "roc_auc")  # would clash with nn.Module.train in the heads
    with pytest.raises(DataError, match="Invalid task name"):
        TaskInfo("a.b", ("a", "b"), "roc_auc")


def test_a_task_folder_is_not_a_pool(tmp_path):
    pool = make_tiny_pool(tmp_path / "pool")
    with pytest.raises(DataError, match="is a task folder, not a pool"):
        load_pool(pool["alpha"].folder)
    with pytest.raises(DataError, match="does not exist"):
        load_pool(tmp_path / "missing")


def test_check_files_lists_missing_images(tmp_path):
    pool = make_tiny_pool(tmp_path / "pool")
    (pool["alpha"].folder / "img" / "003.png").unlink()
    assert [p.name for p in Task(pool["alpha"].folder).check_files()] == ["003.png"]


# --------------------------------------------------------------------------- splits


def _toy(n_groups=40, per_group=5, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"p{i}" for i in range(n_groups)], per_group)
    labels = np.repeat(rng.integers(0, 3, n_groups), per_group)  # a patient's samples share a label
    return labels, groups


def test_holdout_is_grouped_stratified_and_seeded():
    labels, groups = _toy()
    mask = holdout_mask(labels, groups, 0.2, seed=3)
    assert not set(groups[mask]) & set(groups[~mask])  # no patient on both sides
    assert 0.1 < mask.mean() < 0.3
    assert set(labels[mask]) == set(labels)  # every class held out
    assert np.array_equal(mask, holdout_mask(labels, groups, 0.2, seed=3))
    assert not np.array_equal(mask, holdout_mask(labels, groups, 0.2, seed=4))


def test_holdout_without_groups_is_exactly_stratified():
    labels = np.array([0] * 50 + [1] * 20 + [2] * 3)
    mask = holdout_mask(labels, None, 0.2, seed=0)
    assert [int(mask[labels == c].sum()) for c in range(3)] == [10, 4, 1]
    with pytest.raises(ConfigurationError):
        holdout_mask(labels, None, 1.5, seed=0)
    with pytest.raises(DataError, match="share one group"):
        holdout_mask(labels, np.array(["p"] * len(labels)), 0.2, seed=0)


def test_assign_splits_keeps_existing_and_carves_val_from_train():
    labels, groups = _toy()
    existing = np.where(np.isin(groups, [f"p{i}" for i in range(10)]), "test", "train").astype(object)
    out = assign_splits(labels, groups, existing, val_fraction=0.25, seed=0)
    assert np.array_equal(out == "test", existing == "test")  # test untouched
    val, train = set(groups[out == "val"]), set(groups[out == "train"])
    assert val and not val & train
    fresh = assign_splits(labels, groups, None, val_fraction=0.2, test_fraction=0.2, seed=1)
    assert set(fresh) == {"train", "val", "test"}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not set(groups[fresh == a]) & set(groups[fresh == b])
    assert set(assign_splits(labels, None, None, val_fraction=0, test_fraction=0.2)) == {"train", "test"}
