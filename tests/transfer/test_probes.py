import logging

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.svm import LinearSVC

from mtdp_core.errors import ConfigurationError, UnknownNameError
from mtdp_core.transfer.linear_svm import linear_svm_path
from mtdp_core.transfer.probes import (
    PAPER_C_GRID,
    LearningCurve,
    Probe,
    fit_probe,
    get_probe_kind,
    list_probes,
    make_cv,
    resolve_scoring,
    stratified_subset,
)


def blobs(n=120, d=16, k=3, seed=0, spread=1.5):
    """Overlapping Gaussian classes (not separable: the C grid matters), with group ids."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    centers = rng.normal(0, 1, (k, d))
    X = centers[y] + rng.normal(0, spread, (n, d))
    groups = rng.integers(0, 12, n)
    return X.astype(np.float32), y, groups


def test_the_c_grid_is_the_papers():
    assert PAPER_C_GRID == (1e-10, 1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    assert get_probe_kind("svm").param_grid == {"C": PAPER_C_GRID}
    X, y, g = blobs(k=2)
    probe = Probe().fit(X, y, g)
    assert [p["C"] for p in probe.cv_results_["params"]] == list(PAPER_C_GRID)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_folds_never_split_a_group(seed):
    X, y, groups = blobs(seed=seed)
    plan = make_cv(y, groups, 5, seed=seed)
    assert plan.grouped and plan.n_splits == 5
    seen_in_test = []
    for train, test in plan.folds(y):
        assert not set(groups[train]) & set(groups[test])
        seen_in_test.extend(test)
    assert sorted(seen_in_test) == list(range(len(y)))  # every sample tested once


def test_too_few_groups_fall_back_with_a_warning(caplog):
    _, y, _ = blobs()
    with caplog.at_level(logging.WARNING):
        plan = make_cv(y, np.zeros(len(y)), 5)
    assert not plan.grouped and plan.n_splits == 5 and "falling back to 5-fold stratified" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        plan = make_cv(y, np.arange(len(y)) % 3, 5)
    assert plan.grouped and plan.n_splits == 3 and "only 3 groups" in caplog.text
    assert make_cv(y, None, 5).grouped is False


def test_cv_refuses_what_cannot_be_cross_validated():
    with pytest.raises(ConfigurationError, match="Only one class"):
        make_cv(np.zeros(10), None)
    with pytest.raises(ConfigurationError, match="single training sample"):
        make_cv(np.array([0, 0, 0, 1]), None)
    with pytest.raises(ConfigurationError, match="group ids for"):
        make_cv(np.array([0, 1] * 5), np.arange(3))
    # A rare class limits the number of folds.
    assert make_cv(np.array([0] * 10 + [1] * 3), None, 5).n_splits == 3


def test_fast_metrics_equal_scikit_learns():
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    from mtdp_core.transfer.probes import score_from_decisions

    rng = np.random.default_rng(0)
    y2 = np.array(["neg", "pos"])[rng.integers(0, 2, 200)]
    d = np.round(rng.normal(size=200), 1)  # rounded: many ties
    classes2 = np.array(["neg", "pos"])
    assert score_from_decisions("roc_auc", y2, d, classes2) == pytest.approx(roc_auc_score(y2 == "pos", d), abs=1e-12)
    assert score_from_decisions("accuracy", y2, d, classes2) == accuracy_score(y2, classes2[(d > 0).astype(int)])
    y3, d3 = rng.integers(0, 3, 200), rng.normal(size=(200, 3))
    pred = d3.argmax(1)
    assert score_from_decisions("accuracy", y3, d3, np.arange(3)) == accuracy_score(y3, pred)
    assert score_from_decisions("balanced_accuracy", y3, d3, np.arange(3)) == pytest.approx(
        balanced_accuracy_score(y3, pred)
    )
    assert np.isnan(score_from_decisions("roc_auc", np.array(["pos"] * 3), d[:3], classes2))


def test_binary_tasks_are_scored_by_roc_auc_and_multiclass_by_accuracy():
    assert resolve_scoring("auto", 2) == "roc_auc" and resolve_scoring("auto", 5) == "accuracy"
    with pytest.raises(ConfigurationError):
        resolve_scoring("roc_auc", 3)
    X, y, g = blobs(k=2)
    probe = Probe(param_grid={"C": [0.01]}).fit(X, y, g)
    assert probe.scoring_ == "roc_auc"
    # The CV score is the mean over folds of ROC AUC computed from decision values.
    plan = make_cv(y, g, 5, seed=0)
    expected = np.mean(
        [
            roc_auc_score(y[te], LinearSVC(C=0.01, max_iter=5000).fit(X[tr], y[tr]).decision_function(X[te]))
            for tr, te in plan.folds(y)
        ]
    )
    assert probe.best_score_ == pytest.approx(expected, abs=1e-4)
    assert probe.score(X, y) == pytest.approx(roc_auc_score(y, probe.decision_function(X)))
    assert Probe(param_grid={"C": [0.01]}).fit(*blobs(k=3)[:2]).scoring_ == "accuracy"


@pytest.mark.parametrize("k,class_weight", [(2, None), (3, None), (3, "balanced"), (2, "balanced")])
def test_the_batched_solver_agrees_with_liblinear(k, class_weight):
    X, y, g = blobs(k=k, n=150)
    if class_weight:
        keep = (y != 0) | (np.arange(len(y)) % 3 == 0)  # imbalanced classes
        X, y, g = X[keep], y[keep], g[keep]
    # Coefficients on one training set, against LinearSVC solved to a tight tolerance, with
    # both preconditioners (a low rank below the feature count, so both parts of it act).
    for preconditioner in ("lowrank", "diagonal"):
        coef, classes = linear_svm_path(
            X,
            y,
            [np.arange(len(y))],
            [1e-3, 0.1, 1.0],
            class_weight=class_weight,
            tol=1e-8,
            preconditioner=preconditioner,
            rank=4,
        )
        for i, C in enumerate([1e-3, 0.1, 1.0]):
            ref = LinearSVC(C=C, class_weight=class_weight, dual=False, tol=1e-10, max_iter=100000).fit(X, y)
            expected = np.hstack([ref.coef_, ref.intercept_[:, None]])
            np.testing.assert_allclose(coef[i, 0], expected, atol=1e-5 * np.abs(expected).max())
    # Whole grid search: the same scores and the same choice as GridSearchCV(LinearSVC).
    batched = Probe(class_weight=class_weight, engine="batched").fit(X, y, g)
    plain = Probe(class_weight=class_weight, engine="sklearn").fit(X, y, g)
    np.testing.assert_allclose(batched.cv_results_["mean_test_score"], plain.cv_results_["mean_test_score"], atol=2e-3)
    assert batched.best_params_ == plain.best_params_


def test_roc_auc_ties_are_broken_by_accuracy_then_by_the_larger_c():
    X, y, g = blobs(k=2, spread=0.3)  # separable: every C reaches ROC AUC 1.0
    X = X + 5.0  # all-positive features (like post-ReLU CNN features): tiny C predicts one class
    probe = Probe().fit(X, y, g)
    r = probe.cv_results_
    assert np.all(r["mean_test_score"] == 1.0)
    tied_acc = r["mean_test_accuracy"]
    assert tied_acc[probe.best_index_] == tied_acc.max() and tied_acc[0] < tied_acc.max()
    best_positions = np.flatnonzero(tied_acc == tied_acc.max())
    assert probe.best_index_ == best_positions[-1]  # the largest C among the equals
    assert probe.score(X, y) == 1.0 and (probe.predict(X) == y).mean() == 1.0


def test_the_model_is_refitted_on_all_training_data():
    X, y, g = blobs()
    probe = fit_probe(X, y, g, kind="svm")
    ref = LinearSVC(C=probe.best_params_["C"], max_iter=5000, random_state=0).fit(X, y)
    np.testing.assert_allclose(probe.estimator_.coef_, ref.coef_, rtol=1e-6)
    np.testing.assert_array_equal(probe.predict(X), ref.predict(X))
    assert list(probe.classes_) == [0, 1, 2]
    assert "<- best" in probe.cv_table() and "accuracy" in probe.cv_table()


@pytest.mark.parametrize("kind", ["logreg", "rf"])
def test_other_probes_give_probabilities(kind):
    X, y, g = blobs(n=90)
    grid = {"max_features": ["sqrt", 0.5], "n_estimators": [30]} if kind == "rf" else None
    probe = Probe(kind, n_jobs=1, param_grid=grid).fit(X, y, g)
    assert probe.best_params_ in probe.cv_results_["params"]
    proba = probe.predict_proba(X)
    assert proba.shape == (90, 3) and np.allclose(proba.sum(1), 1)
    assert probe.score(X, y) > 0.5
    assert not hasattr(Probe("svm"), "predict_proba")  # a LinearSVC has no probabilities


def test_unknown_probe_and_bad_grid_are_clear_errors():
    X, y, _ = blobs()
    with pytest.raises(UnknownNameError, match="svm"):
        Probe("knn").fit(X, y)
    with pytest.raises(ConfigurationError, match="batched engine"):
        Probe("logreg", engine="batched").fit(X, y)
    assert list_probes() == ["logreg", "rf", "svm"]


def test_a_probe_on_features_in_a_pipeline_with_groups(tiny_image_folder):
    from sklearn.pipeline import Pipeline

    from mtdp_core.data.images import list_images
    from mtdp_core.transfer.features import FeatureExtractor

    paths = list_images(tiny_image_folder)
    labels = np.array([p.parent.name for p in paths])
    groups = np.arange(len(paths)) // 2
    pipe = Pipeline(
        [
            ("features", FeatureExtractor("resnet18", "random", image_size=32, num_workers=0, device="cpu")),
            ("probe", Probe(n_splits=2)),
        ]
    )
    pipe.fit(paths, labels, probe__groups=groups)
    assert pipe.named_steps["probe"].cv_.startswith("2-fold stratified CV grouped")
    assert (pipe.predict(paths) == labels).mean() == 1.0


def test_learning_curve_trains_on_growing_stratified_subsets():
    X, y, g = blobs(n=300, k=3, spread=1.0)
    subset = stratified_subset(y[:200], 0.1, seed=0, min_per_class=4)
    assert np.bincount(y[:200][subset]).min() >= 4
    curve = LearningCurve(Probe(param_grid={"C": [1e-3, 1e-1]}, n_splits=3), fractions=(0.05, 0.5, 1.0), seeds=(0, 1))
    rows = curve.run(X[:200], y[:200], X[200:], y[200:], groups=g[:200])
    assert [(r["fraction"], r["seed"]) for r in rows] == [(0.05, 0), (0.05, 1), (0.5, 0), (0.5, 1), (1.0, 0), (1.0, 1)]
    sizes = [r["n_train"] for r in rows]
    assert sizes[0] < sizes[2] < sizes[4] == 200
    assert all(0 <= r["test_score"] <= 1 and r["metric"] == "accuracy" for r in rows)
    # More data helps on this task (on average over seeds).
    assert np.mean([r["test_score"] for r in rows[4:]]) > np.mean([r["test_score"] for r in rows[:2]])


@pytest.mark.parametrize("k", [2, 3])
def test_calibrate_keeps_the_out_of_fold_decisions_of_the_chosen_c(k):
    from mtdp_core.transfer.calibration import fit_softmax_scale

    X, y, groups = blobs(k=k, seed=4)
    probe = Probe(calibrate=True, param_grid={"C": [1e-4, 1e-2, 1.0]}).fit(X, y, groups)
    # Each sample's decision comes from LinearSVC refitted without its fold, at the chosen C.
    folds = make_cv(y, groups, 5, seed=0).folds(y)
    expected = np.zeros(probe.oof_decisions_.shape)
    for train, test in folds:
        svc = LinearSVC(C=probe.best_params_["C"], max_iter=20000, tol=1e-8).fit(X[train], y[train])
        expected[test] = svc.decision_function(X[test])
    np.testing.assert_allclose(probe.oof_decisions_, expected, atol=2e-3)
    assert probe.oof_decisions_.shape == ((len(y),) if k == 2 else (len(y), k))
    scale, nll = fit_softmax_scale(probe.oof_decisions_, np.searchsorted(probe.classes_, y))
    assert probe.calibration_ == {"method": "softmax_scale", "scale": scale, "oof_nll": nll} and scale > 0
    # The sklearn engine refits the chosen parameters on the same folds: the same decisions.
    slow = Probe(calibrate=True, engine="sklearn", param_grid={"C": [probe.best_params_["C"]]}).fit(X, y, groups)
    np.testing.assert_allclose(slow.oof_decisions_, probe.oof_decisions_, atol=2e-3)
    assert not hasattr(Probe(param_grid={"C": [1e-2]}).fit(X, y, groups), "oof_decisions_")


def test_a_probe_without_decision_values_cannot_calibrate():
    X, y, groups = blobs(k=2)
    with pytest.raises(ConfigurationError, match="calibrate only svm or logreg"):
        Probe("rf", calibrate=True, param_grid={"max_features": ["sqrt"], "n_estimators": [5]}).fit(X, y, groups)
