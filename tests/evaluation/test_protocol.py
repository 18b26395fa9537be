import numpy as np
import pytest

from mtdp_core.backbones import create_backbone, save_backbone
from mtdp_core.errors import ConfigurationError
from mtdp_core.evaluation.protocol import (
    SHARED_POOL_LEFT_OUT_SETS,
    BackboneSpec,
    TaskData,
    check_left_out_sets,
    expand_seeds,
    groups_from_names,
    hyperparams_label,
    load_task_folder,
    parse_backbone_spec,
    run_loto,
    run_transfer,
)
from mtdp_core.evaluation.ranking import average_rank
from mtdp_core.transfer.finetune import FineTuner
from mtdp_core.transfer.probes import Probe
from tests.helpers.images import colour_task

FAST = dict(image_size=32, num_workers=0, device="cpu")
PROBE = Probe(param_grid={"C": [1e-3, 1e-1]}, n_splits=2)


def _task(tmp_path, name, seed):
    train, y_train = colour_task(tmp_path / name / "train", 6, seed)
    test, y_test = colour_task(tmp_path / name / "test", 3, seed + 500)
    return TaskData(name, train, y_train, test, y_test, train_groups=groups_from_names(train, r"img(\d+)"))


def test_left_out_sets_are_checked():
    tasks = ["oral_cancer", "herlev_papsmear", "bccd", "malaria", "nct_crc_he", "lc25000"]
    assert check_left_out_sets(SHARED_POOL_LEFT_OUT_SETS, tasks) == list(SHARED_POOL_LEFT_OUT_SETS)
    with pytest.raises(ConfigurationError, match="Unknown task 'kidney'"):
        check_left_out_sets([["kidney"]], tasks)
    with pytest.raises(ConfigurationError, match="two left-out sets"):
        check_left_out_sets([["bccd"], ["bccd", "malaria"]], tasks)
    with pytest.raises(ConfigurationError, match="empty"):
        check_left_out_sets([[]], tasks)


def test_backbone_specs_and_groups(tmp_path):
    spec = parse_backbone_spec("mtdp=densenet121:runs/seed{seed}.pth")
    assert spec == BackboneSpec("mtdp", "densenet121", "runs/seed{seed}.pth")
    assert [s.weights for s in expand_seeds([spec], [0, 1])] == ["runs/seed0.pth", "runs/seed1.pth"]
    assert parse_backbone_spec("resnet50:random").label == "resnet50:random"
    with pytest.raises(ConfigurationError, match="LABEL=ARCH:WEIGHTS"):
        parse_backbone_spec("imagenet")
    assert list(groups_from_names(["a/12_3.png", "b/12_4.png", "c/7_1.png"], "prefix")) == ["12", "12", "7"]
    with pytest.raises(ConfigurationError, match="does not match"):
        groups_from_names(["nounderscore.png"], "prefix")
    colour_task(tmp_path / "t" / "train", 3, 0)
    colour_task(tmp_path / "t" / "test", 2, 1)
    task = load_task_folder(tmp_path / "t", groups=r"img(\d+)")
    assert task.name == "t" and len(task.train_inputs) == 6 and set(task.test_labels) == {"red", "blue"}
    assert list(task.train_groups[:3]) == ["00", "01", "02"]


def test_run_transfer_compares_backbones_by_features_and_fine_tuning(tmp_path):
    tasks = [_task(tmp_path, "alpha", 0), _task(tmp_path, "beta", 50)]
    specs = expand_seeds([BackboneSpec("random18", "resnet18", "random")], [0, 1])
    tuner = FineTuner(image_size=32, epochs=1, batch_size=6, learning_rates=(1e-2,), num_workers=0, device="cpu")
    result = run_transfer(tasks[:1], specs[:1], modes=("fe", "ft"), probe=PROBE, finetuner=tuner, **FAST)
    assert result.table.methods == ["random18 fe", "random18 ft"]
    assert [r["mode"] for r in result.records] == ["fe", "ft"]
    result = run_transfer(tasks, specs, probe=PROBE, cache_dir=tmp_path / "cache", **FAST)
    assert result.table.scores.shape == (1, 2, 2)  # one method, two tasks, two seeds
    assert all(r["metric"] == "roc_auc" and 0 <= r["score"] <= 1 for r in result.records)
    # Colour tasks are easy for any features: far above chance.
    assert result.table.mean().min() > 0.8
    with pytest.raises(ConfigurationError, match="mode"):
        run_transfer(tasks, specs, modes=("zero-shot",))


def test_loto_pretrains_without_each_left_out_set_and_selects_without_the_targets_rank(tmp_path):
    tasks = {name: _task(tmp_path, name, seed) for name, seed in (("a", 0), ("b", 50), ("c", 90))}
    calls = []

    def pretrain_fn(excluded, hyperparams, seed):
        calls.append((excluded, hyperparams["init"], seed))
        path = tmp_path / "weights" / f"{'-'.join(excluded)}_{hyperparams['init']}_{seed}.pth"
        return save_backbone(
            create_backbone("efficientnet_lite0", weights="random", seed=100 * hyperparams["init"] + seed), path
        )

    # efficientnet_lite0: the smallest registered network (the fake pre-training writes 8 files).
    result = run_loto(
        tasks,
        [["a"], ["b", "c"]],
        [{"init": 1}, {"init": 2}],
        [0, 1],
        pretrain_fn,
        arch="efficientnet_lite0",
        probe=PROBE,
        **FAST,
    )
    assert calls == [(s, h, seed) for s in (("a",), ("b", "c")) for h in (1, 2) for seed in (0, 1)]
    assert result.table.methods == ["init=1", "init=2"] and result.table.tasks == ["a", "b", "c"]
    assert result.table.scores.shape == (2, 3, 2) and not np.isnan(result.table.scores).any()
    # Each record was made by a model that never saw its task's set.
    assert all(
        r["task"] in r["left_out"] and r["task"] in r["weights"].split("/")[-1].split("_")[0] for r in result.records
    )
    for task, chosen in result.selections.items():
        avg = average_rank(result.table, exclude=[task])
        assert chosen == result.table.methods[int(np.argmin(avg))]
    rows = result.selection_rows()
    assert [r["task"] for r in rows] == ["a", "b", "c"] and all(r["selected"] in ("init=1", "init=2") for r in rows)
    assert hyperparams_label({"lr": 1e-4, "warmup": True}) == "lr=0.0001,warmup=True"
