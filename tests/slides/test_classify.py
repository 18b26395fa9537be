"""Classifying slides end to end with tiny models: the training resolution, the right classes in
the right places, the cache, fine-tuned networks, and the errors (resolution, backbone)."""

from __future__ import annotations

import numpy as np
import pytest

from mtdp_core.errors import IncompatibleModelError, MissingResolutionError
from mtdp_core.slides.classify import classify_slide
from mtdp_core.slides.reader import open_slide
from mtdp_core.transfer.features import FeatureExtractor
from mtdp_core.transfer.persistence import load_model
from tests.helpers.slides import MODEL_MPP, MODEL_SIZE, SIZE, make_probe, training_tiles, two_tissue_pixels

RUNTIME = dict(num_workers=0, device="cpu", progress=False)


def _side_accuracy(result) -> float:
    """Accuracy on the tiles that lie wholly in the pink (left) or the purple (right) tissue (the
    model never saw glass nor the border between the two)."""
    x0 = result.grid.positions[:, 0]
    x1 = x0 + result.grid.size0
    mid = SIZE[0] / 2
    clear = ((x1 <= mid) | (x0 >= mid)) & (result.grid.tissue_fraction > 0.9)
    expected = np.where(x1 <= mid, "pink", "purple")
    assert clear.sum() >= 0.7 * len(x0)
    return float((np.array(result.names)[clear] == expected[clear]).mean())


def test_probe_classifies_tiles_at_the_training_resolution(probe_model, two_tissue_slide):
    result = classify_slide(probe_model, two_tissue_slide, **RUNTIME)
    grid = result.grid
    assert grid.tile_size == MODEL_SIZE
    assert grid.downsample == pytest.approx(MODEL_MPP / 1.0)  # the model's 2 µm/px on a 1 µm/px slide
    assert grid.size0 == pytest.approx(64)
    assert result.model["training_mpp"] == MODEL_MPP
    assert [c.name for c in result.classes] == ["pink", "purple"]
    assert result.probabilities.shape == (len(grid), 2)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1, atol=1e-5)
    assert _side_accuracy(result) >= 0.95
    assert sum(result.counts().values()) == len(grid)


def test_explicit_resolution_overrides_the_model(probe_model, two_tissue_slide):
    result = classify_slide(probe_model, two_tissue_slide, resolution="4", tissue=None, **RUNTIME)
    assert result.grid.downsample == pytest.approx(4.0)
    assert result.model["resolution"] == {"mpp": 4.0}


def test_cached_outputs_are_reused(probe_model, two_tissue_slide, tmp_path):
    first = classify_slide(probe_model, two_tissue_slide, cache_dir=tmp_path, chunk_size=16, **RUNTIME)
    second = classify_slide(probe_model, two_tissue_slide, cache_dir=tmp_path, chunk_size=16, **RUNTIME)
    assert first.stats["n_computed"] == len(first.grid) and second.stats["n_computed"] == 0
    np.testing.assert_allclose(first.scores, second.scores)
    uncached = classify_slide(probe_model, two_tissue_slide, **RUNTIME)
    np.testing.assert_allclose(first.scores, uncached.scores, rtol=1e-4, atol=1e-5)


def test_workers_give_the_same_predictions(probe_model, two_tissue_slide):
    one = classify_slide(probe_model, two_tissue_slide, **RUNTIME)
    two = classify_slide(probe_model, two_tissue_slide, num_workers=2, device="cpu", progress=False)
    np.testing.assert_allclose(one.scores, two.scores, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_finetuned_network(two_tissue_slide, tmp_path):
    from mtdp_core.transfer.finetune import FineTuner
    from mtdp_core.transfer.persistence import save_model

    images, labels = training_tiles(8)
    tuner = FineTuner(
        "resnet18", "random", image_size=MODEL_SIZE, learning_rates=[1e-3], epochs=1, batch_size=8, device="cpu"
    ).fit(images, labels)
    path = save_model(tmp_path / "ft.npz", tuner, mpp=MODEL_MPP)
    result = classify_slide(path, two_tissue_slide, cache_dir=tmp_path / "cache", **RUNTIME)
    assert result.model["kind"] == "finetune"
    assert result.probabilities.shape == (len(result.grid), 2)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1, atol=1e-5)
    again = classify_slide(path, two_tissue_slide, cache_dir=tmp_path / "cache", **RUNTIME)
    assert again.stats["n_computed"] == 0
    np.testing.assert_allclose(again.probabilities, result.probabilities, atol=1e-6)


def test_model_without_resolution_needs_one(two_tissue_slide, tmp_path):
    path = make_probe(tmp_path / "old.npz", mpp=None)  # as files saved before models recorded it
    assert load_model(path).mpp is None
    with pytest.raises(MissingResolutionError, match="does not record the resolution"):
        classify_slide(path, two_tissue_slide, **RUNTIME)
    assert classify_slide(path, two_tissue_slide, resolution="2", **RUNTIME).grid.downsample == pytest.approx(2)


def test_slide_without_resolution_needs_one(probe_model, tmp_path):
    from PIL import Image

    png = tmp_path / "scan.png"
    Image.fromarray(two_tissue_pixels()).save(png)
    with pytest.raises(MissingResolutionError, match="scan.png has no resolution.*--slide-mpp"):
        classify_slide(probe_model, png, **RUNTIME)
    result = classify_slide(probe_model, png, slide_mpp=1.0, **RUNTIME)
    assert result.slide["mpp_source"] == "user"
    assert _side_accuracy(result) >= 0.95


def test_features_of_another_backbone_are_refused(probe_model, two_tissue_slide):
    other = FeatureExtractor("resnet18", "random", seed=1, image_size=MODEL_SIZE)
    with pytest.raises(IncompatibleModelError, match="other weights"):
        classify_slide(probe_model, two_tissue_slide, features=other, **RUNTIME)
    wider = FeatureExtractor("resnet34", "random", image_size=MODEL_SIZE)
    with pytest.raises(IncompatibleModelError, match="trained on resnet18 features, not resnet34"):
        classify_slide(probe_model, two_tissue_slide, features=wider, **RUNTIME)


def test_weights_file_of_another_backbone_is_refused(two_tissue_slide, tmp_path):
    from sklearn.linear_model import LogisticRegression

    from mtdp_core.backbones import create_backbone, save_backbone
    from mtdp_core.transfer.persistence import save_model

    mine = save_backbone(create_backbone("resnet18", weights="random", seed=0), tmp_path / "mine.pth")
    other = save_backbone(create_backbone("resnet18", weights="random", seed=5), tmp_path / "other.pth")
    images, labels = training_tiles(4)
    fx = FeatureExtractor("resnet18", mine, image_size=MODEL_SIZE, num_workers=0, device="cpu")
    path = save_model(tmp_path / "m.npz", LogisticRegression().fit(fx.transform(images), labels), features=fx, mpp=2.0)
    with pytest.raises(IncompatibleModelError, match="pass that file as weights"):
        classify_slide(path, two_tissue_slide, **RUNTIME)
    with pytest.raises(IncompatibleModelError, match="pass the weights file it was trained with"):
        classify_slide(path, two_tissue_slide, weights=other, **RUNTIME)
    assert len(classify_slide(path, two_tissue_slide, weights=mine, **RUNTIME).grid) > 0


def test_an_open_slide_stays_open(probe_model, two_tissue_slide):
    with open_slide(two_tissue_slide) as slide:
        classify_slide(probe_model, slide, **RUNTIME)
        assert slide.read_region((0, 0, 10, 10), (10, 10)).size == (10, 10)


@pytest.mark.realdata
@pytest.mark.slow
def test_real_slide_end_to_end(real_slide, tmp_path):
    """The real Aperio slide with a 224 px model at 0.5 µm/px: every tissue tile classified."""
    from sklearn.linear_model import LogisticRegression

    from mtdp_core.transfer.persistence import save_model

    images, labels = training_tiles(4)
    fx = FeatureExtractor("resnet18", "random", image_size=224, num_workers=0, device="cpu")
    model = save_model(tmp_path / "m.npz", LogisticRegression().fit(fx.transform(images), labels), features=fx, mpp=0.5)
    result = classify_slide(model, real_slide, **RUNTIME)
    assert result.grid.downsample == pytest.approx(0.5 / 0.499)
    assert 30 <= len(result.grid) <= 80  # a strip of tissue in a 2220 x 2967 px region
    assert (result.grid.positions + result.grid.size0 <= np.array([2220, 2967]) + 1e-6).all()
    assert result.probabilities.shape == (len(result.grid), 2)


def test_the_engines_classify_alike_and_probes_need_no_torch(probe_model, two_tissue_slide, tmp_path):
    import json

    from tests.inference.test_engines import _run_without_torch

    runtime = {k: v for k, v in RUNTIME.items() if k != "device"}
    by_torch = classify_slide(probe_model, two_tissue_slide, engine="torch", **RUNTIME)
    by_onnx = classify_slide(probe_model, two_tissue_slide, engine="onnxruntime", **runtime)
    np.testing.assert_allclose(by_onnx.probabilities, by_torch.probabilities, atol=1e-4)
    cached = classify_slide(probe_model, two_tissue_slide, engine="onnxruntime", cache_dir=tmp_path, **runtime)
    np.testing.assert_allclose(cached.probabilities, by_onnx.probabilities, atol=1e-6)
    result = _run_without_torch(
        """
        import json, sys
        from mtdp_core.slides.classify import classify_slide
        result = classify_slide(sys.argv[1], sys.argv[2], num_workers=0, progress=False)
        assert "torch" not in sys.modules, "torch was imported"
        print(json.dumps(result.probabilities.tolist()))
        """,
        str(probe_model),
        str(two_tissue_slide),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_allclose(json.loads(result.stdout.splitlines()[-1]), by_onnx.probabilities, atol=1e-6)
