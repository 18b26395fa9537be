"""Model codecs: one per kind, public scikit-learn API only, forests predicted exactly, old files read."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from mtdp_core.errors import ModelFileError
from mtdp_core.transfer import codecs
from mtdp_core.transfer.codecs import ForestPredictor, ModelCodec, codec_for, get_codec, list_codecs, register_codec
from mtdp_core.transfer.persistence import load_model, save_model

DATA = Path(__file__).parent / "data"
IDENTITY = {
    "arch": "resnet18",
    "n_features": 6,
    "weights": {"source": "random", "seed": 0},
    "preprocessing": {"size": 32, "resize": "center_crop", "mean": [0.5] * 3, "std": [0.25] * 3},
}


def test_one_codec_per_kind():
    assert list_codecs() == ["finetune", "logreg", "rf", "svm"]
    assert codec_for(RandomForestClassifier()).kind == "rf" and get_codec("svm").kind == "svm"
    with pytest.raises(ModelFileError, match="Unknown model kind 'knn'.*finetune, logreg, rf, svm"):
        get_codec("knn")
    with pytest.raises(ValueError, match="registered twice"):
        register_codec("svm")(ModelCodec)


def test_codecs_use_public_scikit_learn_api_only():
    # Private modules (sklearn.tree._tree...) change between releases and rebuilt forests through them.
    for module in (codecs, __import__("mtdp_core.transfer.persistence", fromlist=["_"])):
        tree = ast.parse(Path(module.__file__).read_text())
        names = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        private = [n for n in names if n.startswith("sklearn") and any(p.startswith("_") for p in n.split("."))]
        assert private == [], f"{module.__name__} imports {private}"
        assert "__setstate__" not in Path(module.__file__).read_text()


def _forest_data(seed=0, n=200, nan=False):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] * X[:, 2] + rng.normal(scale=0.7, size=n) > 0).astype(int) + (X[:, 3] > 1)
    if nan:
        X[rng.random(X.shape) < 0.1] = np.nan
    return X, np.array(["a", "b", "c"])[y]


@pytest.mark.parametrize("nan", [False, True])
def test_a_saved_forest_predicts_exactly_as_the_fitted_one(tmp_path, nan):
    X, y = _forest_data(nan=nan)
    forest = RandomForestClassifier(n_estimators=25, min_samples_leaf=3, random_state=0).fit(X[:150], y[:150])
    model = load_model(save_model(tmp_path / "rf.npz", forest, features=IDENTITY))
    assert isinstance(model.estimator, ForestPredictor) and model.kind == "rf"
    np.testing.assert_array_equal(model.estimator.predict_proba(X[150:]), forest.predict_proba(X[150:]))
    np.testing.assert_array_equal(model.estimator.predict(X[150:]), forest.predict(X[150:]))
    np.testing.assert_array_equal(model.decision_scores(X[150:]), forest.predict_proba(X[150:]))
    with pytest.raises(ModelFileError, match="loaded from a model file"):
        save_model(tmp_path / "again.npz", model.estimator, features=IDENTITY)


def test_a_forest_saved_by_format_1_through_sklearn_internals_still_loads():
    # Written by the previous mtdp (trees read with Tree.__getstate__), scikit-learn 1.9.
    model = load_model(DATA / "rf-format1-sklearn1.9.npz")
    expected = np.load(DATA / "rf-format1-expected.npz")
    assert model.format_version == 1 and [c.name for c in model.classes] == ["seven", "nine"]
    np.testing.assert_array_equal(model.estimator.predict_proba(expected["X"]), expected["proba"])


def test_damaged_trees_are_refused(tmp_path):
    X, y = _forest_data()
    forest = RandomForestClassifier(n_estimators=3, random_state=0).fit(X, y)
    path = save_model(tmp_path / "rf.npz", forest, features=IDENTITY)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays["__meta__"].tobytes())
    info, classes = meta["estimator"], np.array(["a", "b", "c"])
    codec = get_codec("rf")
    looping = dict(arrays)
    looping["tree.left_child"] = np.where(arrays["tree.left_child"] > 0, 0, -1)  # back to the root: no end
    with pytest.raises(ModelFileError, match="invalid node indices"):
        codec.decode(looping, info, classes, 6)
    outside = dict(arrays)
    outside["tree.feature"] = np.where(arrays["tree.left_child"] > 0, 99, arrays["tree.feature"])
    with pytest.raises(ModelFileError, match="invalid node indices"):
        codec.decode(outside, info, classes, 6)
    with pytest.raises(ModelFileError, match="offsets"):
        codec.decode({**arrays, "tree.offsets": arrays["tree.offsets"][:-1]}, info, classes, 6)
    with pytest.raises(ModelFileError, match="expects 6 features, backbone gives 5"):
        codec.decode(arrays, info, classes, 5)
