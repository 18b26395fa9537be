import json
import zipfile

import numpy as np
import pytest

from mtdp_core import __version__
from mtdp_core.backbones import create_backbone, save_backbone
from mtdp_core.errors import ConfigurationError, IncompatibleModelError, ModelFileError, TamperedModelError
from mtdp_core.transfer.features import FeatureExtractor
from mtdp_core.transfer.persistence import MODEL_FORMAT_VERSION, load_model, read_metadata, save_model
from mtdp_core.transfer.probes import Probe

FX = dict(image_size=32, num_workers=0, device="cpu")
RUN = dict(num_workers=0, device="cpu")


@pytest.fixture
def task(colour_splits):
    """Features of the colour task by a random resnet18, integer labels (Cytomine term ids)."""
    fx = FeatureExtractor("resnet18", "random", **FX)
    (train, names), (test, _test_names) = colour_splits["train"], colour_splits["test"]
    term = {"red": 101, "blue": 202}
    y = np.array([term[n] for n in names])
    return fx, fx.transform(train), y, fx.transform(test), test


def _rewrite(path, mutate):
    """Rewrite a model file after ``mutate(meta, arrays)``, keeping its recorded checksum."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(arrays.pop("__meta__").tobytes())
    mutate(meta, arrays)
    np.savez(path, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)


@pytest.mark.parametrize("kind", ["svm", "logreg", "rf"])
def test_a_probe_round_trips_with_its_identity(task, tmp_path, kind):
    fx, X, y, X_test, _ = task
    grid = {"max_features": ["sqrt"], "n_estimators": [20]} if kind == "rf" else {"C": [1e-3, 1e-1]}
    probe = Probe(kind, param_grid=grid, n_splits=2).fit(X, y)
    path = save_model(
        tmp_path / "model.npz",
        probe,
        features=fx,
        class_names={101: "red cells", 202: "blue cells"},
        extra={"project": 77},
    )
    model = load_model(path, expect_backbone=fx)
    assert model.kind == kind and list(model.labels) == [101, 202]
    assert [(c.name, c.id) for c in model.classes] == [("red cells", 101), ("blue cells", 202)]
    assert model.backbone["arch"] == "resnet18" and model.backbone["weights"]["seed"] == 0
    assert model.preprocessing == fx.get_preprocessing()
    assert model.training["best_params"] == probe.best_params_ and model.training["scoring"] == "roc_auc"
    assert model.extra == {"project": 77} and model.mtdp_version == __version__
    np.testing.assert_array_equal(model.estimator.predict(X_test), probe.predict(X_test))
    if kind == "svm":
        np.testing.assert_allclose(model.estimator.decision_function(X_test), probe.decision_function(X_test))
    else:
        np.testing.assert_allclose(model.estimator.predict_proba(X_test), probe.predict_proba(X_test))


def test_predicting_images_from_a_loaded_model(task, tmp_path):
    fx, X, y, X_test, test_paths = task
    probe = Probe(param_grid={"C": [1e-2]}, n_splits=2).fit(X, y)
    model = load_model(save_model(tmp_path / "m.npz", probe, features=fx))
    predictions = model.predict_images(test_paths, num_workers=0, device="cpu")
    np.testing.assert_array_equal(predictions.labels, probe.predict(X_test))
    assert predictions.ids == [int(v) for v in predictions.labels] and not predictions.is_probability
    assert predictions.scores.shape == (len(test_paths), 2)
    # The extractor rebuilt from the file gives the training features.
    np.testing.assert_allclose(model.feature_extractor(**RUN).transform(test_paths), X_test, atol=1e-5)
    with pytest.raises(ConfigurationError, match="fixed by the model"):
        model.feature_extractor(image_size=64)


def test_a_fine_tuned_network_round_trips(colour_splits, tmp_path):
    from mtdp_core.transfer.finetune import FineTuner

    (train, y_train), (test, _) = colour_splits["train"], colour_splits["test"]
    tuner = FineTuner(
        "resnet18", "random", image_size=32, epochs=1, batch_size=8, learning_rates=(1e-2,), num_workers=0, device="cpu"
    ).fit(train, y_train, X_val=train[:4] + train[-4:], y_val=y_train[:4] + y_train[-4:])
    model = load_model(save_model(tmp_path / "ft.npz", tuner))
    assert model.kind == "finetune" and model.training["best_lr"] == 1e-2
    predictions = model.predict_images(test, num_workers=0, device="cpu")
    np.testing.assert_allclose(predictions.scores, tuner.predict_proba(test), atol=1e-5)
    assert predictions.is_probability and list(predictions.labels) == list(tuner.predict(test))


def test_a_model_for_other_features_is_refused(task, tmp_path):
    fx, X, y, _, _ = task
    path = save_model(tmp_path / "m.npz", Probe(param_grid={"C": [1e-2]}, n_splits=2).fit(X, y), features=fx)
    with pytest.raises(IncompatibleModelError, match="trained on resnet18 features, not resnet34"):
        load_model(path, expect_backbone=FeatureExtractor("resnet34", "random", **FX))
    with pytest.raises(IncompatibleModelError, match="other weights"):
        load_model(path, expect_backbone=create_backbone("resnet18", weights="random", seed=3))
    with pytest.raises(IncompatibleModelError, match="image size 32"):
        load_model(path, expect_backbone=FeatureExtractor("resnet18", "random", **{**FX, "image_size": 64}))
    load_model(path, expect_backbone=create_backbone("resnet18", weights="random", seed=0))  # the right one passes


def test_a_model_on_weights_from_a_file_needs_that_file(tmp_path, colour_splits):
    ckpt = save_backbone(create_backbone("resnet18", weights="random", seed=5), tmp_path / "mine.pth")
    fx = FeatureExtractor("resnet18", str(ckpt), **FX)
    train, names = colour_splits["train"]
    path = save_model(
        tmp_path / "m.npz", Probe(param_grid={"C": [1e-2]}, n_splits=2).fit(fx.transform(train), names), features=fx
    )
    model = load_model(path)
    with pytest.raises(IncompatibleModelError, match="mine.pth"):
        model.feature_extractor()
    assert (
        model.feature_extractor(weights=ckpt, **RUN).get_backbone().weights_info.sha256
        == model.backbone["weights"]["sha256"]
    )


def test_tampered_files_are_rejected(task, tmp_path):
    fx, X, y, _, _ = task
    path = save_model(tmp_path / "m.npz", Probe(param_grid={"C": [1e-2]}, n_splits=2).fit(X, y), features=fx)

    def change_coef(meta, arrays):
        arrays["coef"] = arrays["coef"] * 1.01

    def rename_class(meta, arrays):
        meta["classes"][0]["name"] = "tumour"

    for mutate in (change_coef, rename_class):
        copy = tmp_path / f"{mutate.__name__}.npz"
        copy.write_bytes(path.read_bytes())
        _rewrite(copy, mutate)
        with pytest.raises(TamperedModelError, match="modified after it was saved"):
            load_model(copy)


def test_files_that_are_not_models_are_rejected_without_unpickling(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(ModelFileError, match="not an mtdp model file"):
        load_model(junk)
    plain = tmp_path / "plain.npz"
    np.savez(plain, coef=np.zeros(3))
    with pytest.raises(ModelFileError, match="no __meta__"):
        load_model(plain)
    # An object array (pickle inside): loading must refuse it and never run its payload.
    marker = tmp_path / "pwned"
    evil = np.empty(1, dtype=object)
    evil[0] = _Payload(str(marker))
    pickled = tmp_path / "evil.npz"
    np.savez(pickled, __meta__=np.frombuffer(b"{}", dtype=np.uint8), coef=evil)
    with pytest.raises(ModelFileError, match="non-numeric"):
        load_model(pickled)
    assert not marker.exists()
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "absent.npz")


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_format_versions_and_size_limits(task, tmp_path):
    fx, X, y, _, _ = task
    path = save_model(tmp_path / "m.npz", Probe(param_grid={"C": [1e-2]}, n_splits=2).fit(X, y), features=fx)
    meta = read_metadata(path)
    assert meta["format_version"] == MODEL_FORMAT_VERSION and meta["backbone"]["weights"]["source"] == "random"
    newer = tmp_path / "newer.npz"
    newer.write_bytes(path.read_bytes())
    _rewrite(newer, lambda m, a: m.update(format_version=MODEL_FORMAT_VERSION + 1, mtdp_version="9.0"))
    with pytest.raises(IncompatibleModelError, match="upgrade mtdp"):
        load_model(newer)
    with pytest.raises(ModelFileError, match="limit"):
        load_model(path, max_bytes=100)
    with zipfile.ZipFile(path) as archive:  # only .npy members: arrays and the JSON as bytes
        assert all(n.endswith(".npy") for n in archive.namelist())


def test_saving_checks_its_inputs(task, tmp_path):
    fx, X, y, _, _ = task
    probe = Probe(param_grid={"C": [1e-2]}, n_splits=2).fit(X, y)
    with pytest.raises(ModelFileError, match="features="):
        save_model(tmp_path / "m.npz", probe)
    with pytest.raises(ModelFileError, match="takes 512 features but the backbone resnet50 gives 2048"):
        save_model(tmp_path / "m.npz", probe, features=FeatureExtractor("resnet50", "random", **FX))
    with pytest.raises(ModelFileError, match="Cannot save a dict"):
        save_model(tmp_path / "m.npz", {"not": "a model"}, features=fx)


def test_the_training_resolution_is_recorded(task, tmp_path):
    from sklearn.linear_model import LogisticRegression

    fx, X, y, _, _ = task
    clf = LogisticRegression().fit(X, y)
    assert load_model(save_model(tmp_path / "a.npz", clf, features=fx, mpp=0.5)).mpp == 0.5
    assert read_metadata(tmp_path / "a.npz")["resolution"] == {"mpp": 0.5}
    # Files saved before models recorded it (no "resolution" key at all) still load, without one.
    path = save_model(tmp_path / "old.npz", clf, features=fx)

    def resolution(value):
        def mutate(meta, arrays):
            from mtdp_core.transfer.persistence import _checksum

            if value is None:
                del meta["resolution"]
            else:
                meta["resolution"] = value
            meta["checksum"] = _checksum(meta, arrays)

        return mutate

    _rewrite(path, resolution(None))
    assert "resolution" not in read_metadata(path) and load_model(path).mpp is None
    with pytest.raises(ConfigurationError, match="training resolution"):
        save_model(tmp_path / "b.npz", clf, features=fx, mpp=-1)
    _rewrite(tmp_path / "a.npz", resolution({"mpp": "fast"}))
    with pytest.raises(ModelFileError, match="invalid training resolution 'fast'"):
        load_model(tmp_path / "a.npz")
