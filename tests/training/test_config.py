import json
from pathlib import Path

import pytest

from mtdp_core.backbones import create_backbone
from mtdp_core.errors import ConfigurationError
from mtdp_core.multitask import MultiTaskModel
from mtdp_core.training.config import TrainConfig
from mtdp_core.training.optim import build_optimizer, enter_phase, learning_rates, phase_at

REPO = Path(__file__).resolve().parents[2]


def test_from_dict_coerces_and_validates():
    config = TrainConfig.from_dict(
        {
            "pool": "p",
            "lr": "1e-4",
            "iterations": "5e4",
            "hflip": "false",
            "tasks": "a,b",
            "val_max_samples": "none",
            "_comment": "ignored",
        }
    )
    assert config.lr == 1e-4 and config.iterations == 50000 and config.hflip is False and config.tasks == ["a", "b"]
    assert config.val_max_samples is None
    with pytest.raises(ConfigurationError, match="Did you mean 'head_lr_multiplier'"):
        TrainConfig.from_dict({"pool": "p", "head_lr_multiplyer": 5})
    with pytest.raises(ConfigurationError, match="use one of constant, cosine"):
        TrainConfig.from_dict({"pool": "p", "lr_schedule": "step"})
    with pytest.raises(ConfigurationError, match="expected int"):
        TrainConfig.from_dict({"pool": "p", "iterations": 1.5})
    with pytest.raises(ConfigurationError, match="warmup_iterations"):
        TrainConfig.from_dict({"pool": "p", "iterations": 10, "warmup_iterations": 20})
    with pytest.raises(ConfigurationError, match="No task pool"):
        TrainConfig.from_dict({})


@pytest.mark.parametrize("name", ["shared_small", "paper_densenet121", "paper_resnet50"])
def test_shipped_configs_are_valid(name):
    config = TrainConfig.from_file(REPO / "training" / "configs" / f"{name}.json")
    assert config.momentum == 0.9
    if name.startswith("paper"):
        assert (config.iterations, config.batch_size, config.warmup_iterations, config.warmup_lr) == (
            50000,
            64,
            5000,
            1e-3,
        )
        assert config.train_splits == ["train", "val", "test"]  # the released models used every image
    if name == "paper_densenet121":
        assert (config.backbone, config.lr, config.head_lr_multiplier) == ("densenet121", 1e-4, 5.0)
    if name == "paper_resnet50":
        assert (config.backbone, config.lr, config.head_lr_multiplier) == ("resnet50", 1e-3, 1.0)


def test_learning_rates_per_phase():
    config = TrainConfig.from_dict(
        {
            "pool": "p",
            "iterations": 100,
            "warmup_iterations": 10,
            "warmup_lr": 1e-3,
            "lr": 1e-4,
            "head_lr_multiplier": 5,
        }
    )
    assert phase_at(config, 9) == "warmup" and phase_at(config, 10) == "full"
    assert learning_rates(config, 0) == {"backbone": 0.0, "heads": 1e-3}
    assert learning_rates(config, 10) == pytest.approx({"backbone": 1e-4, "heads": 5e-4})
    assert learning_rates(config, 99) == pytest.approx({"backbone": 1e-4, "heads": 5e-4})  # constant, as in the paper
    cosine = config.replace(lr_schedule="cosine")
    assert learning_rates(cosine, 10)["backbone"] == pytest.approx(1e-4)
    assert learning_rates(cosine, 55)["backbone"] == pytest.approx(0.5e-4)
    assert learning_rates(cosine, 99)["heads"] < 1e-6


def test_optimizer_groups_and_phase_modes():
    model = MultiTaskModel(create_backbone("resnet18", weights="random"), {"a": 2, "b": 3})
    config = TrainConfig.from_dict({"pool": "p", "lr": 1e-3, "head_lr_multiplier": 10})
    optimizer = build_optimizer(model, config)
    backbone_group, heads_group = optimizer.param_groups
    assert backbone_group["name"] == "backbone" and heads_group["lr"] == pytest.approx(1e-2)
    assert {id(p) for p in heads_group["params"]} == {id(p) for p in model.heads.parameters()}
    assert optimizer.defaults["momentum"] == 0.9
    enter_phase(model, "warmup")
    assert not any(p.requires_grad for p in model.backbone.parameters()) and not model.backbone.training
    assert all(p.requires_grad for p in model.heads.parameters()) and model.heads.training
    enter_phase(model, "full", bn_mode="frozen")
    assert (
        all(p.requires_grad for p in model.backbone.parameters())
        and model.backbone.training
        and not model.backbone.bn1.training
    )
    enter_phase(model, "full")
    assert model.backbone.bn1.training


def test_config_round_trips_through_json(tmp_path):
    config = TrainConfig.from_dict({"pool": "p", "tasks": ["a"], "lr": 3e-4})
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config.to_dict()))
    assert TrainConfig.from_file(path) == config
    (tmp_path / "c.toml").write_text('pool = "p"\nlr = 3e-4\ntasks = ["a"]\n')
    assert TrainConfig.from_file(tmp_path / "c.toml") == config
    (tmp_path / "bad.json").write_text("{lr: 1")
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        TrainConfig.from_file(tmp_path / "bad.json")
