"""The leave-one-task-out experiment end to end, on a tiny synthetic pool (resnet18, 32 px, a few iterations)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mtdp_core.errors import ConfigurationError, DataError
from mtdp_core.evaluation import experiment as exp
from mtdp_core.evaluation.experiment import (
    ExperimentConfig,
    default_left_out_sets,
    report_experiment,
    run_experiment,
    task_data_from_pool,
)
from mtdp_core.evaluation.protocol import SHARED_POOL_LEFT_OUT_SETS
from tests.data.pool_factory import make_tiny_pool


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return make_tiny_pool(tmp_path_factory.mktemp("pool") / "pool")


def tiny_config(pool, out, **overrides) -> dict:
    config = {
        "pool": str(pool.path),
        "output_dir": str(out),
        "left_out_sets": [["alpha"], ["beta", "gamma"]],
        "pretrain": {
            "backbone": "resnet18",
            "weights": "random",
            "image_size": 32,
            "batch_size": 8,
            "iterations": 2,
            "bn_adapt_batches": 0,
            "num_workers": 0,
            "device": "cpu",
            "val_split": None,
            "checkpoint_every": 100,
            "progress": False,
        },
        "hyperparams": [{"lr": 0.01}, {"lr": 0.001, "head_lr_multiplier": 5}],
        "seeds": [0, 1],
        "num_workers": 0,
        "device": "cpu",
        "baselines": [{"label": "random", "weights": "random"}],
        "finetune_tasks": ["gamma"],
        "finetune_seeds": [0],
        "finetune": {"learning_rates": [0.01], "epochs": 1, "batch_size": 8, "num_workers": 0},
    }
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def finished(pool, tmp_path_factory):
    out = tmp_path_factory.mktemp("experiment")
    return run_experiment(tiny_config(pool, out)), out


@pytest.mark.slow
def test_every_set_hyperparameters_and_seed_is_pretrained_without_its_left_out_tasks(finished):
    _, out = finished
    configs = [json.loads(p.read_text()) for p in sorted((out / "pretrain").glob("*/*/seed*/config.json"))]
    assert len(configs) == 2 * 2 * 2  # sets x hyper-parameter sets x seeds
    excluded = sorted({tuple(c["exclude_tasks"]) for c in configs})
    assert excluded == [("alpha",), ("beta", "gamma")]
    assert {c["seed"] for c in configs} == {0, 1} and {c["lr"] for c in configs} == {0.01, 0.001}
    for c in configs:  # the grid's values override the shared settings; the rest is shared
        assert c["head_lr_multiplier"] == (5 if c["lr"] == 0.001 else 1) and c["iterations"] == 2


@pytest.mark.slow
def test_selection_excludes_the_target_and_the_multitask_scores_are_the_selected_runs(finished):
    result, _ = finished
    assert result.loto.table.tasks == ["alpha", "beta", "gamma"]
    assert set(result.loto.selections) == {"alpha", "beta", "gamma"}
    for task, chosen in result.loto.selections.items():
        assert chosen in result.loto.table.methods
        np.testing.assert_array_equal(result.fe.runs("multitask fe", task), result.loto.table.runs(chosen, task))
    assert result.fe.methods == ["multitask fe", "random fe"]
    assert result.fe.scores.shape == (2, 3, 2) and not np.isnan(result.fe.scores).any()
    # Fine-tuning: the selected multi-task model (pre-trained without gamma's set) and the baseline.
    assert result.ft.methods == ["multitask ft", "random ft"] and result.ft.tasks == ["gamma"]
    ft_mt = [r for r in result.records if r["method"] == "multitask ft"]
    assert len(ft_mt) == 1 and "without_beta+gamma" in str(
        next(
            r["weights"]
            for r in result.records
            if r["stage"] == "loto"
            and r["task"] == "gamma"
            and r["seed"] == 0
            and r["method"] == result.loto.selections["gamma"]
        )
    )


@pytest.mark.slow
def test_outputs_are_written(finished):
    result, out = finished
    for rel in [
        "results.md",
        "records.jsonl",
        "experiment.json",
        "summary.json",
        "loto/scores.csv",
        "loto/summary.csv",
        "loto/selection.csv",
        "loto/selection.md",
        "comparison_fe/comparison.md",
        "comparison_fe/scores.csv",
        "comparison_ft/comparison.md",
    ]:
        assert (out / rel).is_file(), rel
    assert list((out / "comparison_fe").glob("differences_*.png"))
    text = (out / "results.md").read_text()
    assert "## Hyper-parameter selection" in text and "## Fine-tuning" in text and "multitask fe" in text
    lines = (out / "records.jsonl").read_text().splitlines()
    assert len(lines) == len(result.records) and all(
        json.loads(line)["stage"] in ("loto", "comparison") for line in lines
    )


@pytest.mark.slow
def test_reports_are_rewritten_from_the_records_alone(finished, monkeypatch):
    result, out = finished
    before = (out / "results.md").read_text()
    (out / "results.md").unlink()
    monkeypatch.setattr("mtdp_core.training.train", lambda config: pytest.fail("report_experiment trained"))
    monkeypatch.setattr(
        "mtdp_core.evaluation.experiment.evaluate_feature_extraction", lambda *a, **k: pytest.fail("evaluated")
    )
    again = report_experiment(out)
    assert (out / "results.md").read_text() == before
    assert again.loto.selections == result.loto.selections
    np.testing.assert_array_equal(again.fe.scores, result.fe.scores)
    np.testing.assert_array_equal(again.ft.scores, result.ft.scores)


def test_a_finished_experiment_is_needed_to_rewrite_reports(tmp_path):
    with pytest.raises(ConfigurationError, match="not a finished experiment"):
        report_experiment(tmp_path)


@pytest.mark.slow
def test_running_again_reuses_completed_pretrainings(finished, pool, monkeypatch):
    result, out = finished

    def no_training(config):
        raise AssertionError("a completed pre-training was trained again")

    monkeypatch.setattr("mtdp_core.training.train", no_training)
    again = run_experiment(tiny_config(pool, out, finetune_tasks=[]))
    np.testing.assert_array_equal(again.loto.table.scores, result.loto.table.scores)
    assert again.loto.selections == result.loto.selections and again.ft is None


@pytest.mark.slow
def test_running_again_redoes_only_the_evaluations_whose_settings_changed(finished, pool, monkeypatch):
    result, out = finished
    with open(out / "evaluations.jsonl", "a") as fh:
        fh.write('{"key": "cut short by an interrup')  # an interrupted write: ignored, not an error
    monkeypatch.setattr(
        "mtdp_core.evaluation.experiment.evaluate_feature_extraction",
        lambda *a, **k: pytest.fail("a finished feature evaluation ran again"),
    )
    calls = []
    real = exp.evaluate_fine_tuning
    monkeypatch.setattr(
        "mtdp_core.evaluation.experiment.evaluate_fine_tuning",
        lambda task, spec, finetuner: (
            calls.append((task.name, spec.label, finetuner.epochs)) or real(task, spec, finetuner=finetuner)
        ),
    )
    config = tiny_config(pool, out)
    config["finetune"] = {**config["finetune"], "epochs": 2}
    again = run_experiment(config)
    assert sorted(calls) == [("gamma", "multitask", 2), ("gamma", "random", 2)]
    np.testing.assert_array_equal(again.fe.scores, result.fe.scores)
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["evaluations_reused"]
        == len([r for r in result.records if r["mode"] == "fe" and r["stage"] == "loto"]) + 3 * 2
    )


@pytest.mark.slow
def test_a_completed_pretraining_with_other_settings_is_not_reused(finished, pool):
    _, out = finished
    config = tiny_config(pool, out)
    config["pretrain"] = {**config["pretrain"], "iterations": 3}
    with pytest.raises(ConfigurationError, match="completed with other settings.*iterations"):
        run_experiment(config)


def test_task_data_from_pool_trains_on_the_given_splits(pool):
    task = pool["gamma"]
    data = task_data_from_pool(task, ["train", "val"], "test")
    assert len(data.train_inputs) == task.n_samples(["train", "val"]) and len(data.test_inputs) == task.n_samples(
        "test"
    )
    assert set(data.train_labels) <= set(task.classes) and data.train_groups is not None
    assert not set(data.train_inputs) & set(data.test_inputs)


def test_default_left_out_sets():
    shared = [t for s in SHARED_POOL_LEFT_OUT_SETS for t in s]
    assert default_left_out_sets(shared[::-1]) == [list(s) for s in SHARED_POOL_LEFT_OUT_SETS]
    assert default_left_out_sets(["a", "b"]) == [["a"], ["b"]]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"colour": 1}, "Unknown key"),
        ({"hyperparams": [{"seed": 3}]}, "sets these per run"),
        ({"hyperparams": [{"learning_rate": 3}]}, "Unknown training option"),
        ({"hyperparams": []}, "hyperparams is empty"),
        ({"seeds": [0, 0]}, "without repeats"),
        ({"baselines": [{"label": "multitask", "weights": "random"}]}, "reserved"),
        ({"baselines": [{"weights": "random"}]}, "baselines\\[0\\]"),
    ],
)
def test_config_errors_say_what_to_fix(pool, tmp_path, overrides, message):
    with pytest.raises(ConfigurationError, match=message):
        ExperimentConfig.from_dict(tiny_config(pool, tmp_path, **overrides))


def test_unknown_finetune_task_and_missing_pool_are_clear_errors(pool, tmp_path):
    with pytest.raises(ConfigurationError, match="Unknown task 'delta' in finetune_tasks"):
        run_experiment(tiny_config(pool, tmp_path, finetune_tasks=["delta"]))
    with pytest.raises(DataError, match="does not exist"):
        run_experiment({**tiny_config(pool, tmp_path), "pool": str(tmp_path / "nowhere")})


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        ExperimentConfig.from_file(bad)
    with pytest.raises(ConfigurationError, match="does not exist"):
        ExperimentConfig.from_file(tmp_path / "none.json")


@pytest.mark.slow
def test_the_script_reports_a_finished_experiment_and_exits_1_on_a_bad_config(finished, tmp_path, capsys, caplog):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "training" / "loto.py"
    spec = importlib.util.spec_from_file_location("loto_script", script)
    loto = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loto)
    _, out = finished
    assert loto.main(["--config", str(out / "experiment.json"), "--report-only"]) == 0
    assert capsys.readouterr().out.strip() == str(out / "results.md")
    bad = tmp_path / "bad.json"
    bad.write_text('{"pool": "p", "colour": 1}')
    assert loto.main(["--config", str(bad)]) == 1
    assert "Unknown key(s) ['colour']" in caplog.text
