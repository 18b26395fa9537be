import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from mtdp_core.backbones import create_backbone
from mtdp_core.errors import CheckpointError, ConfigurationError, DataError
from mtdp_core.training import TrainConfig, train
from mtdp_core.training.checkpoint import load_checkpoint
from tests.data.pool_factory import make_tiny_pool


def _state(path):
    return load_checkpoint(path)


def _assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(fast_config, tmp_path):
    # efficientnet_lite0 with its real ImageNet weights: BN adaptation runs, and stochastic
    # depth draws from the global RNG during training (restored from the checkpoint).
    config = {
        **fast_config,
        "backbone": "efficientnet_lite0",
        "weights": "imagenet",
        "bn_adapt_batches": 2,
        "iterations": 5,
        "warmup_iterations": 2,
        "lr": 0.003,
    }
    whole = train({**config, "output_dir": str(tmp_path / "whole")})
    assert whole.completed and whole.iteration == 5

    pieces = {**config, "output_dir": str(tmp_path / "pieces"), "num_workers": 1}  # workers do not matter
    first = train({**pieces, "stop_after": 1})  # inside the warm-up
    assert not first.completed and first.iteration == 1 and first.backbone_path is None
    second = train({**pieces, "stop_after": 3})  # past the end of the warm-up
    assert second.iteration == 3
    last = train(pieces)
    assert last.completed and last.iteration == 5

    a, b = _state(whole.checkpoint), _state(last.checkpoint)
    _assert_same_tensors(a["model"], b["model"])
    for group_a, group_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(group_a["momentum_buffer"], group_b["momentum_buffer"])
    _assert_same_tensors(
        torch.load(whole.backbone_path, weights_only=True)["state_dict"],
        torch.load(last.backbone_path, weights_only=True)["state_dict"],
    )
    # The loss curve of the resumed run is the uninterrupted one.
    losses = [
        [e["loss"] for e in map(json.loads, open(r.output_dir / "metrics.jsonl")) if e["event"] == "train"]
        for r in (whole, last)
    ]
    assert losses[0] == losses[1] and len(losses[0]) == 5


@pytest.mark.slow
def test_logging_validation_and_checkpoints_do_not_change_the_run(fast_config, tmp_path):
    # EfficientNet's stochastic depth draws from the global RNG while training: nothing done
    # between steps (validation loaders, checkpoints, logs) may draw from it.
    config = {**fast_config, "backbone": "efficientnet_lite0", "iterations": 3}
    quiet = train(
        {**config, "output_dir": str(tmp_path / "quiet"), "log_every": 3, "val_every": 0, "checkpoint_every": 100}
    )
    busy = train(
        {**config, "output_dir": str(tmp_path / "busy"), "log_every": 1, "val_every": 1, "checkpoint_every": 1}
    )
    _assert_same_tensors(_state(quiet.checkpoint)["model"], _state(busy.checkpoint)["model"])


def test_warmup_freezes_the_backbone_and_its_bn_statistics(fast_config):
    result = train({**fast_config, "iterations": 3, "warmup_iterations": 3, "warmup_lr": 0.1})
    initial = create_backbone("resnet18", weights="random", seed=0).state_dict()
    trained = _state(result.checkpoint)["model"]
    for key, value in initial.items():
        assert torch.equal(trained[f"backbone.{key}"], value), key  # weights, running stats, counters
    heads = [k for k in trained if k.startswith("heads.")]
    assert heads and all(not torch.equal(trained[k], torch.zeros_like(trained[k])) for k in heads)


def test_after_warmup_the_whole_network_trains(fast_config, tmp_path):
    frozen = train({**fast_config, "iterations": 3, "warmup_iterations": 2})
    trained = _state(frozen.checkpoint)["model"]
    initial = create_backbone("resnet18", weights="random", seed=0).state_dict()
    assert not torch.equal(trained["backbone.conv1.weight"], initial["conv1.weight"])
    assert not torch.equal(trained["backbone.bn1.running_mean"], initial["bn1.running_mean"])
    assert int(trained["backbone.bn1.num_batches_tracked"]) == 1  # one full iteration, BN in train mode
    optimizer = _state(frozen.checkpoint)["optimizer"]
    assert [g["name"] for g in optimizer["param_groups"]] == ["backbone", "heads"]


@pytest.mark.slow
def test_exported_backbone_loads_through_the_registry(fast_config):
    result = train(fast_config)
    backbone = create_backbone("resnet18", weights=result.backbone_path)
    state = _state(result.checkpoint)["model"]
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, state[f"backbone.{key}"]), key
    info = backbone.weights_info
    assert info.source == "file" and info.sha256 == result.summary["backbone_sha256"]
    assert [t["name"] for t in info.extra["tasks"]] == ["alpha", "beta", "gamma"] and info.extra["iterations"] == 4
    x = torch.randn(2, 3, 32, 32)
    assert backbone(x).shape == (2, 512)


def test_outputs_config_metrics_and_summary(fast_config):
    config = {**fast_config, "val_every": 2, "iterations": 4}
    result = train(config)
    out = result.output_dir
    saved = TrainConfig.from_file(out / "config.json")  # the resolved config reruns as it is
    assert saved == TrainConfig.from_dict(config)
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 1 and [t["train_samples"] for t in run["tasks"]] == [6, 9, 24]
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_events = [e for e in events if e["event"] == "train"]
    assert [e["iteration"] for e in train_events] == [1, 2, 3, 4]
    assert all(e["images_per_second"] > 0 and e["lr_heads"] == pytest.approx(0.05) for e in train_events)
    val = [e for e in events if e["event"] == "val"]
    assert [e["iteration"] for e in val] == [2, 4]
    tasks = val[-1]["tasks"]
    assert {t: tasks[t]["n"] for t in tasks} == {"alpha": 2, "beta": 3, "gamma": 8}
    assert tasks["beta"]["metric"] == "accuracy" and tasks["gamma"]["metric"] == "roc_auc"
    assert all(0.0 <= tasks[t]["accuracy"] <= 1.0 for t in tasks)
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["iterations"] == 4
        and summary["validation"]["gamma"]["n"] == 8
        and result.validation == summary["validation"]
    )


def test_val_max_samples_subsamples_each_task(fast_config):
    result = train({**fast_config, "iterations": 1, "val_max_samples": 2})
    assert {t: r["n"] for t, r in result.validation.items()} == {"alpha": 2, "beta": 2, "gamma": 2}


@pytest.mark.slow
def test_resume_refuses_a_changed_trajectory(fast_config):
    train({**fast_config, "stop_after": 2})
    with pytest.raises(CheckpointError, match="lr was 0.01 there and is 0.02 now"):
        train({**fast_config, "lr": 0.02})
    with pytest.raises(ConfigurationError, match="already holds a run"):
        train({**fast_config, "resume": "never"})
    result = train({**fast_config, "log_every": 2, "iterations": 5})  # more iterations: allowed
    assert result.completed and result.iteration == 5


def test_leave_one_task_out_and_empty_splits(fast_config, tiny_pool):
    result = train({**fast_config, "exclude_tasks": ["beta"], "iterations": 1})
    assert [t["name"] for t in _state(result.checkpoint)["tasks"]] == ["alpha", "gamma"]
    with pytest.raises(DataError, match="no sample in split"):
        pool = make_tiny_pool(tiny_pool.path.parent / "no_val_pool")
        manifest = pool["alpha"].folder / "samples.tsv"
        manifest.write_text(
            "\n".join(line for line in manifest.read_text().splitlines() if "\ttrain\t" not in line) + "\n"
        )
        (pool.path / "pool.json").unlink()
        train({**fast_config, "pool": str(pool.path), "output_dir": fast_config["output_dir"] + "2"})


def test_amp_on_cpu_is_refused(fast_config):
    with pytest.raises(ConfigurationError, match="CUDA-only"):
        train({**fast_config, "amp": "bf16"})


# --------------------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, config: dict) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(1)
    train(config)


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path):
    # Six tasks and a global batch of 6: every batch leaves some heads out, on one rank or on
    # both, which exercises DDP's handling of unused parameters. BN layers keep their running
    # statistics (bn_mode=frozen): with batch statistics, DDP ranks normalise over their own
    # half-batch (SyncBatchNorm has no CPU kernel), which is standard DDP but not the same
    # computation as one process. Everything else (sampling, augmentation, Eq. 1, gradient
    # averaging, head-gradient rescaling with global counts, warm-up) must match.
    pool = make_tiny_pool(tmp_path / "pool", specs=[(f"t{i}", 2 + i % 3, 6 + 3 * i) for i in range(6)])
    config = {
        "pool": str(pool.path),
        "backbone": "resnet18",
        "weights": "random",
        "image_size": 32,
        "batch_size": 6,
        "iterations": 3,
        "warmup_iterations": 1,
        "lr": 0.05,
        "head_lr_multiplier": 5.0,
        "bn_mode": "frozen",
        "num_workers": 0,
        "device": "cpu",
        "val_every": 0,
        "val_split": None,
        "progress": False,
    }
    single = train({**config, "output_dir": str(tmp_path / "single")})
    mp.spawn(_ddp_worker, args=(2, _free_port(), {**config, "output_dir": str(tmp_path / "ddp")}), nprocs=2, join=True)
    a = _state(single.checkpoint)
    b = _state(tmp_path / "ddp" / "checkpoints" / "last.pt")
    assert b["world_size"] == 2 and len(b["rng"]) == 2
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=1e-5, atol=1e-6, msg=key)
    moved = [k for k in a["model"] if k.startswith("backbone.") and k.endswith("weight")]
    initial = create_backbone("resnet18", weights="random", seed=0).state_dict()
    assert any(not torch.equal(a["model"][k], initial[k[len("backbone.") :]]) for k in moved)  # it did train
    # The exported backbone (written by rank 0) is identical too.
    exported = torch.load(tmp_path / "ddp" / "backbone.pt", weights_only=True)["state_dict"]
    for key, value in torch.load(single.backbone_path, weights_only=True)["state_dict"].items():
        torch.testing.assert_close(exported[key], value, rtol=1e-5, atol=1e-6)


def test_an_empty_pool_folder_is_built_when_build_pool_from_is_set(tmp_path, monkeypatch):
    # A failed build used to leave an empty folder that the next run refused ("holds no task folder").
    from mtdp_core.data import sources
    from mtdp_core.training.distributed import DistContext
    from mtdp_core.training.trainer import _open_pool

    target = tmp_path / "pools" / "shared"
    target.mkdir(parents=True)
    built = []
    monkeypatch.setattr(
        sources, "build_shared_pool", lambda shared, out, **kw: built.append(shared) or make_tiny_pool(out)
    )
    config = TrainConfig(pool=str(target), build_pool_from="data", exclude_tasks=["alpha"])
    assert _open_pool(config, DistContext()).names == ["beta", "gamma"] and built == ["data"]
    assert _open_pool(config, DistContext()).names == ["beta", "gamma"] and built == ["data"]  # built once
