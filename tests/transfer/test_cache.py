import json
import os

import numpy as np
import pytest
import torch

from mtdp_core.backbones import Backbone, create_backbone
from mtdp_core.data.images import list_images
from mtdp_core.transfer.cache import FeatureCache, fingerprint_inputs
from mtdp_core.transfer.features import FeatureExtractor
from tests.helpers.images import make_image


def _extractor(cache_dir, **kw):
    params = dict(
        backbone="resnet18",
        weights="random",
        image_size=32,
        num_workers=0,
        device="cpu",
        batch_size=2,
        cache_dir=cache_dir,
        chunk_size=3,
    )
    params.update(kw)
    return FeatureExtractor(**params)


def test_a_second_run_reads_the_cache_without_running_the_model(tiny_image_folder, tmp_path):
    paths = list_images(tiny_image_folder)
    fx = _extractor(tmp_path / "cache")
    first, stats1 = fx.extract(paths)
    second, stats2 = fx.extract(paths)
    assert (stats1["n_computed"], stats1["n_cached"]) == (8, 0)
    assert (stats2["n_computed"], stats2["n_cached"]) == (0, 8)
    np.testing.assert_array_equal(first, second)
    # Bounded memory: the result maps the file; it is not a copy in RAM.
    assert isinstance(second, np.memmap) and not second.flags.writeable
    uncached = _extractor(None).transform(paths)
    np.testing.assert_allclose(second, uncached, atol=1e-5)


@pytest.mark.parametrize("change", ["image_size", "resize", "seed", "weights_file"])
def test_anything_that_changes_the_features_changes_the_entry(tiny_image_folder, tmp_path, change):
    paths = list_images(tiny_image_folder)
    cache = tmp_path / "cache"
    base = _extractor(cache)
    if change == "weights_file":
        # Same architecture, same file name, different weights: the sha256 differs.
        from mtdp_core.backbones import save_backbone

        ckpt = tmp_path / "w.pth"
        save_backbone(create_backbone("resnet18", weights="random", seed=1), ckpt)
        base = _extractor(cache, weights=str(ckpt))
        base.transform(paths)
        os.utime(ckpt, ns=(0, 0))  # even keeping the old mtime
        save_backbone(create_backbone("resnet18", weights="random", seed=2), ckpt)
        other = _extractor(cache, weights=str(ckpt))
    else:
        base.transform(paths)
        new_value = {"image_size": 40, "resize": "stretch", "seed": 1}[change]
        other = _extractor(cache, **{change: new_value})
    features, stats = other.extract(paths)
    assert stats["n_computed"] == 8
    assert len(FeatureCache(cache).entries()) == 2


def test_a_modified_input_file_is_not_served_from_the_cache(tiny_image_folder, tmp_path):
    paths = list_images(tiny_image_folder)
    fx = _extractor(tmp_path / "cache")
    before = fx.transform(paths)
    make_image(paths[0], size=(40, 32), color=(0, 255, 0), seed=99)  # same name, new pixels
    after, stats = fx.extract(paths)
    assert stats["n_computed"] == 8
    assert not np.allclose(after[0], before[0]) and np.allclose(after[1:], before[1:], atol=1e-5)


def test_content_fingerprints_ignore_a_touched_file(tiny_image_folder, tmp_path):
    paths = list_images(tiny_image_folder)
    fx = _extractor(tmp_path / "cache", fingerprint="content")
    fx.transform(paths)
    os.utime(paths[0], ns=(1, 1))
    assert fx.extract(paths)[1]["n_computed"] == 0
    assert fingerprint_inputs(paths, "stat") != fingerprint_inputs(paths[::-1], "stat")


class _Interrupted(Backbone):
    """resnet18 (random, seed 0) that is interrupted after a number of batches."""

    def __init__(self, batches_before_interrupt: int) -> None:
        super().__init__()
        self.inner = create_backbone("resnet18", weights="random", seed=0)
        self.arch, self.n_features, self.weights_info = "resnet18", 512, self.inner.weights_info
        self.left = batches_before_interrupt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        return self.inner(x)


def test_an_interrupted_extraction_resumes_from_its_completed_chunks(tiny_image_folder, tmp_path):
    paths = list_images(tiny_image_folder)  # 8 images, chunks of 3 -> [0:3] [3:6] [6:8], batches of 2
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        _extractor(cache, backbone=_Interrupted(batches_before_interrupt=3)).transform(paths)
    # 3 batches = 6 images = chunks 0 and 1 complete, recorded in the index.
    (entry,) = FeatureCache(cache).entries()
    assert not entry["complete"]
    assert json.loads((tmp_path / "cache" / os.path.basename(entry["path"]) / "index.json").read_text())["done"] == [
        0,
        1,
    ]
    resumed, stats = _extractor(cache).extract(paths)  # the plain registered resnet18: same identity
    assert (stats["n_cached"], stats["n_computed"]) == (6, 2)
    np.testing.assert_allclose(resumed, _extractor(None).transform(paths), atol=1e-5)


def test_a_damaged_index_is_rebuilt_not_trusted(tiny_image_folder, tmp_path):
    paths = list_images(tiny_image_folder)
    fx = _extractor(tmp_path / "cache")
    fx.transform(paths)
    (entry,) = FeatureCache(tmp_path / "cache").entries()
    (tmp_path / "cache" / os.path.basename(entry["path"]) / "index.json").write_text("{broken")
    assert fx.extract(paths)[1]["n_computed"] == 8


def test_cache_listing_and_clearing(tiny_image_folder, tmp_path):
    paths = list_images(tiny_image_folder)
    _extractor(tmp_path / "cache").transform(paths)
    cache = FeatureCache(tmp_path / "cache")
    (entry,) = cache.entries()
    assert entry["arch"] == "resnet18" and entry["shape"] == [8, 512] and entry["complete"]
    assert entry["bytes"] >= 8 * 512 * 4
    assert cache.clear() == 1 and cache.entries() == []
