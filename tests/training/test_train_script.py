import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mtdp_core.backbones import create_backbone

SCRIPT = Path(__file__).resolve().parents[2] / "training" / "train_multitask.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_multitask", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flags_override_the_config_file(script, tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"pool": "somewhere", "lr": 0.1, "iterations": 10}))
    assert (
        script.main(["--config", str(config), "--lr", "0.2", "--no-hflip", "--tasks", "a", "b", "--print-config"]) == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert (
        printed["lr"] == 0.2
        and printed["iterations"] == 10
        and printed["hflip"] is False
        and printed["tasks"] == ["a", "b"]
    )
    assert printed["head_lr_multiplier"] == 1.0  # defaults fill the rest


def test_help_lists_every_option_with_its_default():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True).stdout
    for flag in (
        "--head-lr-multiplier",
        "--warmup-iterations",
        "--rescale-head-grads",
        "--bn-adapt-batches",
        "--stop-after",
        "--amp",
    ):
        assert flag in out
    assert "Supplementary C" in out and "(default: 0.9)" in out


@pytest.mark.slow
def test_a_run_prints_the_exported_backbone(script, fast_config, tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({**fast_config, "iterations": 2}))
    assert script.main(["--config", str(config)]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.name == "backbone.pt" and create_backbone("resnet18", weights=path).n_features == 512


def test_errors_exit_with_status_1(script, tmp_path, caplog):
    assert script.main(["--pool", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "o"), "--no-progress"]) == 1
    assert "does not exist" in caplog.text
    assert script.main(["--config", str(tmp_path / "nope.json")]) == 1
