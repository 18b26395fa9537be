import numpy as np
import pytest

from mtdp_core.backbones import create_backbone, save_backbone
from mtdp_core.errors import ConfigurationError
from mtdp_core.evaluation.protocol import (
    SHARED_POOL_LEFT_OUT_SETS,
    BackboneSpec,
    TaskData,
    check_left_out_sets,
    evaluate_feature_extraction,
    evaluate_fine_tuning,
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


def _task_with_val(tmp_path, name, seed):
    """train (6 per class), val (3 per class), test (3 per class), in separate folders."""
    train, y_train = colour_task(tmp_path / name / "train", 6, seed)
    val, y_val = colour_task(tmp_path / name / "val", 3, seed + 300)
    test, y_test = colour_task(tmp_path / name / "test", 3, seed + 500)
    return TaskData.from_splits(
        name,
        (train, y_train),
        (test, y_test),
        val=(val, y_val),
        train_groups=[f"t{g}" for g in groups_from_names(train, r"img(\d+)")],
        val_groups=[f"v{g}" for g in groups_from_names(val, r"img(\d+)")],
    )


@pytest.fixture
def spy(monkeypatch):
    """Records what each stage receives: the images given to feature extractors, the number of rows
    probes are fitted and scored on, and what fine-tuners fit, validate and score on."""
    from mtdp_core.transfer.features import FeatureExtractor

    log = {"features": [], "fit": [], "score": [], "ft_fit": [], "ft_score": []}
    transform, fit, score = FeatureExtractor.transform, Probe.fit, Probe.score
    ft_fit, ft_score = FineTuner.fit, FineTuner.score

    def spy_transform(self, X):
        log["features"].append([str(x) for x in X])
        return transform(self, X)

    def spy_fit(self, X, y, groups=None):
        log["fit"].append(len(y))
        return fit(self, X, y, groups)

    def spy_score(self, X, y, sample_weight=None):
        log["score"].append(len(y))
        return score(self, X, y)

    def spy_ft_fit(self, X, y, groups=None, X_val=None, y_val=None):
        log["ft_fit"].append(([str(x) for x in X], None if X_val is None else [str(x) for x in X_val]))
        return ft_fit(self, X, y, groups, X_val, y_val)

    def spy_ft_score(self, X, y, sample_weight=None):
        log["ft_score"].append([str(x) for x in X])
        return ft_score(self, X, y)

    monkeypatch.setattr(FeatureExtractor, "transform", spy_transform)
    monkeypatch.setattr(Probe, "fit", spy_fit)
    monkeypatch.setattr(Probe, "score", spy_score)
    monkeypatch.setattr(FineTuner, "fit", spy_ft_fit)
    monkeypatch.setattr(FineTuner, "score", spy_ft_score)
    return log


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


@pytest.mark.parametrize("own_val", [False, True], ids=["hold-out", "val-split"])
def test_loto_selection_never_reads_a_test_split(tmp_path, spy, own_val):
    make = _task_with_val if own_val else _task
    tasks = {name: make(tmp_path, name, seed) for name, seed in (("a", 0), ("b", 50))}
    test_images = {str(p) for t in tasks.values() for p in t.test_inputs}

    def pretrain_fn(excluded, hyperparams, seed):
        path = tmp_path / "weights" / f"{'-'.join(excluded)}_{hyperparams['init']}_{seed}.pth"
        return save_backbone(create_backbone("efficientnet_lite0", weights="random", seed=hyperparams["init"]), path)

    result = run_loto(
        tasks,
        [["a"], ["b"]],
        [{"init": 1}, {"init": 2}],
        [0],
        pretrain_fn,
        arch="efficientnet_lite0",
        probe=PROBE,
        **FAST,
    )
    # What the selection stage received: no test image reached a feature extractor or a probe...
    assert spy["features"] and not test_images & {p for call in spy["features"] for p in call}
    assert all(len(call) == len(tasks["a"].train_inputs) for call in spy["features"])
    assert len(spy["score"]) == 4 and all(r["scored_on"] == "val" for r in result.records)
    if own_val:  # ...each SVM was fitted on the 12 training-split images and scored on the 6 of the val split.
        assert spy["fit"] == [12] * 4 and spy["score"] == [6] * 4
        assert all(r["n_train"] == 12 and r["n_test"] == 6 for r in result.records)
    else:  # ...or on a hold-out of the training images.
        n = len(tasks["a"].train_inputs)
        assert all(fit + scored == n for fit, scored in zip(spy["fit"], spy["score"]))
    assert set(result.selections) == {"a", "b"}


def test_feature_extraction_fits_on_train_for_val_and_refits_on_train_plus_val_for_test(tmp_path, spy):
    task = _task_with_val(tmp_path, "a", 0)
    spec = BackboneSpec("r", "efficientnet_lite0", "random")
    val = evaluate_feature_extraction(task, spec, split="val", probe=PROBE, **FAST)
    assert (val["scored_on"], val["n_train"], val["n_test"]) == ("val", 12, 6)
    assert spy["fit"] == [12] and spy["score"] == [6] and len(spy["features"]) == 1  # test images not read
    test = evaluate_feature_extraction(task, spec, split="test", probe=PROBE, **FAST)
    assert (test["scored_on"], test["n_train"], test["n_test"]) == ("test", 18, 6)
    assert spy["fit"][-1] == 18 and spy["features"][-1] == [str(p) for p in task.test_inputs]
    with pytest.raises(ConfigurationError, match="Invalid split 'train'"):
        evaluate_feature_extraction(task, spec, split="train", probe=PROBE, **FAST)
    # A task without a validation split: a seeded grouped hold-out of its training images plays its part.
    plain = _task(tmp_path, "plain", 0)
    fit, held = plain.fit_and_validation(seed=0)
    assert len(held) and not set(fit) & set(held) and len(fit) + len(held) == len(plain.train_inputs)
    assert not set(np.asarray(plain.train_groups)[fit]) & set(np.asarray(plain.train_groups)[held])
    rec = evaluate_feature_extraction(plain, spec, split="val", probe=PROBE, **FAST)
    assert rec["n_train"] == len(fit) and rec["n_test"] == len(held)


def test_fine_tuning_chooses_on_the_tasks_validation_split_and_scores_on_test_once(tmp_path, spy):
    task = _task_with_val(tmp_path, "a", 0)
    tuner = FineTuner(image_size=32, epochs=1, batch_size=6, learning_rates=(1e-2,), num_workers=0, device="cpu")
    rec = evaluate_fine_tuning(task, BackboneSpec("r", "resnet18", "random"), finetuner=tuner)
    ((fitted, validated),) = spy["ft_fit"]
    mask = np.asarray(task.val_mask)
    assert fitted == [str(p) for p, v in zip(task.train_inputs, mask) if not v]
    assert validated == [str(p) for p, v in zip(task.train_inputs, mask) if v]
    assert spy["ft_score"] == [[str(p) for p in task.test_inputs]]
    assert rec["validation"] == {"source": "given", "n": 6} and rec["n_train"] == 12 and rec["scored_on"] == "test"
    # Without a validation split: the FineTuner's grouped hold-out of the training images.
    plain = _task(tmp_path, "plain", 0)
    rec = evaluate_fine_tuning(plain, BackboneSpec("r", "resnet18", "random"), finetuner=tuner)
    assert spy["ft_fit"][-1][1] is None and rec["validation"]["source"] == "holdout"
    assert rec["n_train"] + rec["validation"]["n"] == 12


def test_task_data_validation_split(tmp_path):
    task = _task_with_val(tmp_path, "a", 0)
    assert task.has_validation and len(task.train_inputs) == 18 and int(np.sum(task.val_mask)) == 6
    fit, val = task.fit_and_validation()
    assert list(fit) == list(range(12)) and list(val) == list(range(12, 18))
    with pytest.raises(ConfigurationError, match="one bool per training image"):
        TaskData("x", task.train_inputs, task.train_labels, task.test_inputs, task.test_labels, val_mask=[True])
    with pytest.raises(ConfigurationError, match="every training image is in the validation split"):
        TaskData("x", task.train_inputs, task.train_labels, task.test_inputs, task.test_labels, val_mask=[True] * 18)
    none = TaskData("x", task.train_inputs, task.train_labels, task.test_inputs, task.test_labels, val_mask=[0] * 18)
    assert not none.has_validation
    # A task folder's val/ is its validation split.
    colour_task(tmp_path / "t" / "train", 3, 0)
    colour_task(tmp_path / "t" / "val", 2, 7)
    colour_task(tmp_path / "t" / "test", 2, 1)
    folder = load_task_folder(tmp_path / "t", groups=r"img(\d+)")
    assert len(folder.train_inputs) == 10 and int(np.sum(folder.val_mask)) == 4
    assert all("/val/" in str(p) for p, v in zip(folder.train_inputs, folder.val_mask) if v)


def test_learning_curves_give_every_backbone_the_same_subsets(tmp_path, monkeypatch):
    from mtdp_core.transfer import probes

    drawn = []
    real = probes.stratified_subset

    def spy_subset(y, fraction, seed, min_per_class=2):
        out = real(y, fraction, seed, min_per_class)
        drawn.append((fraction, seed, tuple(out)))
        return out

    monkeypatch.setattr(probes, "stratified_subset", spy_subset)
    task = _task_with_val(tmp_path, "a", 0)
    specs = expand_seeds(
        [BackboneSpec("r18", "resnet18", "random"), BackboneSpec("eff", "efficientnet_lite0", "random")], [0, 1]
    )
    result = run_transfer([task], specs, probe=PROBE, curve_fractions=[0.5, 1.0], **FAST)
    assert len(result.curves) == 4 * 2  # specs x fractions
    assert {r["method"] for r in result.curves} == {"r18 fe", "eff fe"}
    # Only the 50% subsets are drawn: at 100% the curve is the test-set evaluation itself.
    assert len(drawn) == 4 and {d[0] for d in drawn} == {0.5}
    final = {(r["method"], r["seed"]): r["score"] for r in result.records}
    assert all(r["score"] == final[(r["method"], r["seed"])] for r in result.curves if r["fraction"] == 1.0)
    by_seed = {}
    for spec, subset in zip(specs, drawn):
        by_seed.setdefault(spec.seed, []).append(subset)
    for a, b in by_seed.values():
        assert a == b  # both backbones, same seed: the same subsets
    assert by_seed[0][0] != by_seed[1][0]  # another seed: other subsets
    # 9 training images per class (train + val); half of each: round(4.5) = 4, so 8 images.
    assert {r["n_train"] for r in result.curves if r["fraction"] == 0.5} == {8}
    assert {r["n_train"] for r in result.curves if r["fraction"] == 1.0} == {18}
    assert all(r["scored_on"] == "test" and r["mode"] == "curve" for r in result.curves)
