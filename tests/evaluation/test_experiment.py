"""The leave-one-task-out experiment end to end, on a tiny synthetic pool (resnet18, 32 px, a few iterations)."""

from __future__ import annotations

import json
from pathlib import Path

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
        "learning_curve": {"fractions": [0.5, 1.0], "seeds": [0]},
    }
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def spied(pool, tmp_path_factory):
    """The tiny experiment, run once with spies on what each stage receives: the images given to
    feature extractors, the rows probes are fitted and scored on, what fine-tuners fit, validate and
    score on; each entry tagged with the stage ("selection" while run_loto runs, "final" after)."""
    from mtdp_core.transfer.features import FeatureExtractor
    from mtdp_core.transfer.finetune import FineTuner
    from mtdp_core.transfer.probes import Probe

    out = tmp_path_factory.mktemp("experiment")
    log: list[tuple] = []
    stage = ["setup"]
    real_loto = exp.run_loto
    transform, fit, score = FeatureExtractor.transform, Probe.fit, Probe.score
    ft_fit, ft_score = FineTuner.fit, FineTuner.score

    def loto(*args, **kwargs):
        stage[0] = "selection"
        try:
            return real_loto(*args, **kwargs)
        finally:
            stage[0] = "final"

    def spy_transform(self, X):
        log.append((stage[0], "features", {str(x) for x in X}))
        return transform(self, X)

    def spy_fit(self, X, y, groups=None):
        log.append((stage[0], "probe fit", len(y)))
        return fit(self, X, y, groups)

    def spy_score(self, X, y, sample_weight=None):
        log.append((stage[0], "probe score", len(y)))
        return score(self, X, y)

    def spy_ft_fit(self, X, y, groups=None, X_val=None, y_val=None):
        log.append((stage[0], "finetune fit", {str(x) for x in X}, {str(x) for x in X_val or []}))
        return ft_fit(self, X, y, groups, X_val, y_val)

    def spy_ft_score(self, X, y, sample_weight=None):
        log.append((stage[0], "finetune score", {str(x) for x in X}))
        return ft_score(self, X, y)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(exp, "run_loto", loto)
        mp.setattr(FeatureExtractor, "transform", spy_transform)
        mp.setattr(Probe, "fit", spy_fit)
        mp.setattr(Probe, "score", spy_score)
        mp.setattr(FineTuner, "fit", spy_ft_fit)
        mp.setattr(FineTuner, "score", spy_ft_score)
        result = run_experiment(tiny_config(pool, out))
    return result, out, log


@pytest.fixture(scope="module")
def finished(spied):
    result, out, _ = spied
    return result, out


def _split_images(pool, split):
    return {str(p) for task in pool for p in task.samples(split).paths}


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
def test_selection_reads_no_test_split_and_each_final_model_is_scored_on_test_once(spied, pool):
    result, _, log = spied
    test, val, train = (_split_images(pool, s) for s in ("test", "val", "train"))
    selection = [entry for entry in log if entry[0] == "selection"]
    final = [entry for entry in log if entry[0] == "final"]
    assert selection and final and not [entry for entry in log if entry[0] == "setup"]
    # Selection: no test image reached a feature extractor; SVMs fitted on train, scored on val.
    assert not test & set().union(*(e[2] for e in selection if e[1] == "features"))
    n_val = {t.name: t.n_samples("val") for t in pool}
    n_train = {t.name: t.n_samples("train") for t in pool}
    loto = [r for r in result.records if r["stage"] == "loto"]
    assert [e[2] for e in selection if e[1] == "probe score"] == [n_val[r["task"]] for r in loto]
    assert [e[2] for e in selection if e[1] == "probe fit"] == [n_train[r["task"]] for r in loto]
    assert all(r["scored_on"] == "val" for r in loto)
    # Final comparison: SVMs refit on train + val, scored on the test set; one score per final model
    # (multitask and baseline x tasks x seeds), then the learning curves (tasks x methods x fractions below 1:
    # at fraction 1 the curve is the final comparison's evaluation itself, not run twice).
    scores = [e[2] for e in final if e[1] == "probe score"]
    comparison = [r for r in result.records if r["stage"] == "comparison" and r["mode"] == "fe"]
    curves = [r for r in result.records if r["stage"] == "curve"]
    assert len(scores) == len(comparison) + len([r for r in curves if r["fraction"] < 1]) == 12 + 3 * 2
    by_run = {(r["method"], r["task"], r["seed"]): r["score"] for r in comparison}
    assert all(r["score"] == by_run[(r["method"], r["task"], r["seed"])] for r in curves if r["fraction"] == 1.0)
    n_test = {t.name: t.n_samples("test") for t in pool}
    assert scores[: len(comparison)] == [n_test[r["task"]] for r in comparison]
    assert all(r["scored_on"] == "test" and r["n_train"] == n_train[r["task"]] + n_val[r["task"]] for r in comparison)
    # Fine-tuning: trained on gamma's train split, learning rate and epoch chosen on its val split, test scored once.
    gamma = {s: {str(p) for p in pool["gamma"].samples(s).paths} for s in ("train", "val", "test")}
    ft_fits = [e for e in final if e[1] == "finetune fit"]
    assert len(ft_fits) == 2 and all(e[2] == gamma["train"] and e[3] == gamma["val"] for e in ft_fits)
    assert [e[2] for e in final if e[1] == "finetune score"] == [gamma["test"]] * 2
    assert all(
        r["validation"] == {"source": "given", "n": len(gamma["val"])} for r in result.records if r["mode"] == "ft"
    )
    assert not (train | val) & test


@pytest.mark.slow
def test_selection_excludes_the_target_and_the_multitask_models_are_the_selected_ones(finished):
    result, _ = finished
    assert result.loto.table.tasks == ["alpha", "beta", "gamma"]
    assert set(result.loto.selections) == {"alpha", "beta", "gamma"}
    final = [r for r in result.records if r["stage"] == "comparison" and r["method"] == "multitask fe"]
    for task, chosen in result.loto.selections.items():
        assert chosen in result.loto.table.methods
        selected = {r["seed"]: r["weights"] for r in result.loto.records if r["task"] == task and r["method"] == chosen}
        assert {r["seed"]: r["weights"] for r in final if r["task"] == task} == selected
        assert all(r["hyperparams"] == chosen for r in final if r["task"] == task)
        np.testing.assert_array_equal(
            result.fe.runs("multitask fe", task),
            [r["score"] for r in sorted(final, key=lambda r: r["seed"]) if r["task"] == task],
        )
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
        "learning_curves/learning_curves.md",
        "learning_curves/learning_curves.png",
        "learning_curves/curve_differences.csv",
    ]:
        assert (out / rel).is_file(), rel
    assert list((out / "comparison_fe").glob("differences_*.png"))
    text = (out / "results.md").read_text()
    assert "## Hyper-parameter selection" in text and "## Fine-tuning" in text and "multitask fe" in text
    assert "## Learning curves" in text and "ddof=1" in text and "validation scores" in text
    lines = (out / "records.jsonl").read_text().splitlines()
    assert len(lines) == len(result.records) and all(
        json.loads(line)["stage"] in ("loto", "comparison", "curve") for line in lines
    )
    curves = [r for r in result.records if r["stage"] == "curve"]
    assert {(r["method"], r["fraction"]) for r in curves} == {
        (m, f) for m in ("multitask fe", "random fe") for f in (0.5, 1.0)
    }


@pytest.mark.slow
def test_reports_are_rewritten_from_the_records_alone(finished, monkeypatch):
    result, out = finished
    before = (out / "results.md").read_text()
    (out / "results.md").unlink()
    monkeypatch.setattr("mtdp_core.training.train", lambda config: pytest.fail("report_experiment trained"))
    monkeypatch.setattr(
        "mtdp_core.evaluation.experiment.evaluate_feature_extraction", lambda *a, **k: pytest.fail("evaluated")
    )
    monkeypatch.setattr(
        "mtdp_core.evaluation.experiment.evaluate_learning_curve", lambda *a, **k: pytest.fail("evaluated a curve")
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
    fe = [r for r in result.records if r["mode"] == "fe"]  # selection (val) and final (test) evaluations
    curves = {(r["method"], r["task"], r["seed"]) for r in result.records if r["stage"] == "curve"}
    assert summary["evaluations_reused"] == len(fe) + len(curves) == 12 + 12 + 6


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
        ({"baselines": [{"label": "r", "weights": "random", "modes": ["zero-shot"]}]}, "has modes"),
        ({"val_split": "train"}, "val_split 'train' is also"),
        ({"test_split": "train"}, "test_split 'train' is also"),
        ({"learning_curve": {"fractions": [0]}}, "learning_curve fractions"),
        ({"learning_curve": {"seeds": [0]}}, "learning_curve ="),
        ({"learning_curve": {"fractions": [0.5], "seeds": [7]}}, "not pre-trained"),
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


def test_baselines_can_be_limited_to_a_mode(pool, tmp_path):
    config = ExperimentConfig.from_dict(
        tiny_config(
            pool,
            tmp_path,
            baselines=[
                {"label": "imagenet", "weights": "imagenet"},
                {"label": "scratch", "weights": "random", "modes": ["ft"]},
            ],
        )
    )
    assert [b["label"] for b in config.baselines_for("fe")] == ["imagenet"]
    assert [b["label"] for b in config.baselines_for("ft")] == ["imagenet", "scratch"]
    default = ExperimentConfig(pool="p")  # the paper's baselines: no random-init features
    assert [b["label"] for b in default.baselines_for("fe")] == ["imagenet"]
    assert [b["label"] for b in default.baselines_for("ft")] == ["imagenet", "scratch"]
    assert (default.train_splits, default.val_split, default.test_split) == (["train"], "val", "test")


def test_test_set_evaluations_keep_the_journal_key_they_always_had(pool, tmp_path):
    # Journals written before validation splits existed are still read: a test-set evaluation's key is
    # exactly the one the earlier code wrote (so the pre-trainings' test evaluations are reused), while
    # the selection's validation evaluations and fine-tuning (whose validation changed) get new keys.
    from mtdp_core.evaluation.protocol import BackboneSpec

    task = task_data_from_pool(pool["gamma"], ["train"], "test", "val")
    spec = BackboneSpec("imagenet", "resnet18", "random", seed=1)
    settings = {"image_size": 32, "probe": {"C": 1}}
    legacy = json.dumps(
        {
            "task": "gamma",
            "n": [len(task.train_inputs), len(task.test_inputs)],
            "mode": "fe",
            "arch": "resnet18",
            "weights": "random",
            "sha256": None,
            "seed": 1,
            "settings": settings,
        },
        sort_keys=True,
    )
    assert exp.EvaluationJournal.key(task, spec, "fe", settings) == legacy
    journal = exp.EvaluationJournal(tmp_path / "evaluations.jsonl")
    seen = []
    journal.run = lambda key, label, compute: seen.append(key) or {}
    evaluate = journal.feature_extraction(type("P", (), {"get_params": lambda self: {"C": 1}})(), {"image_size": 32})
    evaluate(task, spec, split="test")
    evaluate(task, spec, split="val")
    assert seen[0] == legacy and json.loads(seen[1])["scored_on"] == "val"
    assert json.loads(seen[1])["n_val"] == pool["gamma"].n_samples("val")


def test_an_empty_pool_folder_is_built_not_refused(pool, tmp_path, monkeypatch):
    # A build that failed midway (e.g. a wrong build_pool_from) used to leave an empty folder, and the
    # next run said "holds no task folder" instead of building the pool.
    from mtdp_core.data import sources

    target = tmp_path / "pools" / "shared"
    target.mkdir(parents=True)
    built = []

    def fake_build(shared, out, **kwargs):
        built.append((shared, Path(out)))
        return make_tiny_pool(Path(out))

    monkeypatch.setattr(sources, "build_shared_pool", fake_build)
    config = ExperimentConfig.from_dict(
        {**tiny_config(pool, tmp_path / "out"), "pool": str(target), "build_pool_from": "data"}
    )
    assert exp._open_pool(config).names == ["alpha", "beta", "gamma"]
    assert built == [("data", target)]


@pytest.mark.parametrize("name", ["loto_shared_small.json", "loto_gpu_h200.json"])
def test_shipped_experiment_configs_are_valid(name):
    config = ExperimentConfig.from_file(Path(__file__).resolve().parents[2] / "training" / "configs" / name)
    assert (config.train_splits, config.val_split, config.test_split) == (["train"], "val", "test")
    assert [b["label"] for b in config.baselines_for("fe")] == ["imagenet"]
    assert set(config.learning_curve["seeds"]) <= set(config.seeds) and 1.0 in config.learning_curve["fractions"]
