"""Transfer on real microscopy images (../shared/data; skipped when absent)."""

import numpy as np
import pytest

from mtdp_core.transfer import FeatureExtractor, Probe, load_model, save_model

pytestmark = pytest.mark.realdata


def _prefix_labelled(folder, pattern):
    paths = sorted(folder.glob(pattern))
    return paths, np.array([p.name.split("___")[0] for p in paths])


def test_imagenet_features_and_the_svm_protocol_on_malaria_cells(shared_data, tmp_path):
    paths, labels = _prefix_labelled(shared_data / "mini" / "malaria", "*.png")
    assert len(paths) == 40 and set(labels) == {"Parasitized", "Uninfected"}
    fx = FeatureExtractor(
        "efficientnet_lite0", "imagenet", image_size=96, num_workers=0, device="cpu", cache_dir=tmp_path / "cache"
    )
    X = fx.transform(paths)
    assert X.shape == (40, 1280) and np.isfinite(X).all()
    probe = Probe("svm", n_splits=4).fit(X, labels)
    # Parasitized cells carry stained parasites: ImageNet features separate them well.
    assert probe.scoring_ == "roc_auc" and probe.best_score_ > 0.85, probe.cv_table()
    model = load_model(save_model(tmp_path / "malaria.npz", probe, features=fx), expect_backbone=fx)
    predictions = model.predict_images(paths[:6], num_workers=0, device="cpu", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(predictions.labels, probe.predict(X[:6]))


def test_random_features_are_worse_than_imagenet_on_lung_and_colon_tissue(shared_data):
    paths, labels = _prefix_labelled(shared_data / "mini" / "lc25000", "*.jpeg")
    assert len(paths) == 100 and len(set(labels)) == 5
    scores = {}
    for weights in ("imagenet", "random"):
        fx = FeatureExtractor("efficientnet_lite0", weights, image_size=96, num_workers=0, device="cpu")
        scores[weights] = Probe("svm", n_splits=4).fit(fx.transform(paths), labels).best_score_
    # 5 balanced classes: chance is 0.2. Measured: ImageNet 0.79, random weights 0.41.
    assert scores["imagenet"] > 0.7 and scores["imagenet"] > scores["random"] + 0.2, scores
