import numpy as np
import torch

from mtdp_core.backbones import create_backbone
from mtdp_core.data.images import Preprocessing, list_images
from mtdp_core.transfer.features import extract_features


def test_extract_features_matches_a_direct_forward(tiny_image_folder):
    paths = list_images(tiny_image_folder)
    backbone = create_backbone("resnet18", weights="random")
    prep = Preprocessing.for_backbone(backbone, size=32)
    feats = extract_features(backbone, paths, prep, batch_size=3, num_workers=0, device="cpu", progress=False)
    assert feats.shape == (len(paths), 512) and feats.dtype == np.float32
    with torch.no_grad():
        direct = backbone(prep.normalize(torch.stack([prep.load(p) for p in paths])))
    np.testing.assert_allclose(feats, direct.numpy(), rtol=1e-4, atol=1e-5)
