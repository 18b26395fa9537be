"""The engines on real microscopy images (../shared/data; skipped when absent): the same features,
the same SVM decisions."""

from __future__ import annotations

import numpy as np
import pytest

from mtdp_core.inference.graphs import compare_features, within_tolerance
from mtdp_core.inference.onnx_backbone import OnnxBackbone
from mtdp_core.transfer import FeatureExtractor, Probe

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def _extractors(**kwargs) -> tuple[FeatureExtractor, FeatureExtractor]:
    common = dict(num_workers=0, device="cpu", **kwargs)
    return (
        FeatureExtractor("efficientnet_lite0", "imagenet", engine="torch", **common),
        FeatureExtractor("efficientnet_lite0", "imagenet", engine="onnxruntime", **common),
    )


def test_the_same_features_on_real_tiles_small_and_large(shared_data):
    oral = sorted((shared_data / "oral_cancer" / "train").glob("*/*.jpg"))[::40][:24]  # 224 px tiles
    lung = sorted((shared_data / "mini" / "lc25000").glob("*.jpeg"))[::10]  # 768 px tiles
    torch_fx, onnx_fx = _extractors(image_size=224)
    assert isinstance(onnx_fx.get_backbone(), OnnxBackbone)
    for paths in (oral, lung):
        stats = compare_features(torch_fx.transform(paths), onnx_fx.transform(paths))
        assert within_tolerance(stats), stats


def test_an_svm_trained_on_torch_features_decides_the_same_on_onnxruntime_features(shared_data):
    # Herlev Pap smears, 7 classes: the SVM's decision values, not only its labels, must agree.
    root = shared_data / "herlev_papsmear"
    train = sorted((root / "train").glob("*/*.jpg"))[::6]
    test = sorted((root / "test").glob("*/*.jpg"))[::3]
    y_train = np.array([p.parent.name for p in train])
    torch_fx, onnx_fx = _extractors(image_size=128)
    probe = Probe("svm", n_splits=3).fit(torch_fx.transform(train), y_train)
    by_torch, by_onnx = torch_fx.transform(test), onnx_fx.transform(test)
    np.testing.assert_array_equal(probe.predict(by_onnx), probe.predict(by_torch))
    d_torch, d_onnx = probe.decision_function(by_torch), probe.decision_function(by_onnx)
    assert np.abs(d_torch - d_onnx).max() <= 1e-3 * np.abs(d_torch).max()
