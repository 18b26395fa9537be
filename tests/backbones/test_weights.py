import argparse
import hashlib
from dataclasses import replace

import pytest
import torch
from torchvision import models as tvm

from mtdp_core.backbones import create_backbone, save_backbone
from mtdp_core.backbones import weights as W
from mtdp_core.errors import ChecksumMismatchError, IncompatibleWeightsError, WeightsNotFoundError


def _features_torchvision_resnet(net, x):
    net.fc = torch.nn.Identity()
    return net.eval()(x)


def test_missing_imagenet_file_names_file_and_folder(weights_dir):
    with pytest.raises(WeightsNotFoundError) as info:
        create_backbone("resnet50", weights="imagenet")
    message = str(info.value)
    assert message.startswith("Missing weights file resnet50-0676ba61.pth")
    assert str(weights_dir / "resnet50-0676ba61.pth") in message
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in message
    assert "MTDP_WEIGHTS_DIR" in message


def test_missing_mtdp_file(weights_dir):
    with pytest.raises(WeightsNotFoundError, match="densenet121-mh-best-191205-141200.pth"):
        create_backbone("densenet121", weights="mtdp")


def test_missing_local_path(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        create_backbone("resnet18", weights=str(tmp_path / "nope.pth"))


def test_checksum_mismatch_prints_both_hashes(weights_dir):
    bad = weights_dir / "resnet18-f37072fd.pth"
    torch.save({"x": torch.zeros(1)}, bad)
    actual = hashlib.sha256(bad.read_bytes()).hexdigest()
    with pytest.raises(ChecksumMismatchError) as info:
        create_backbone("resnet18", weights="imagenet")
    assert actual in str(info.value) and "f37072fd" in str(info.value)


def test_sha256_argument_is_checked_for_local_files(tmp_path):
    path = save_backbone(create_backbone("resnet18", weights="random"), tmp_path / "r18.pth")
    with pytest.raises(ChecksumMismatchError, match="expected 00ff"):
        create_backbone("resnet18", weights=path, sha256="00ff" * 16)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert create_backbone("resnet18", weights=path, sha256=digest).weights_info.sha256 == digest


def test_catalogue_file_is_found_verified_and_loaded(weights_dir, monkeypatch):
    net = tvm.resnet18()
    path = weights_dir / "resnet18-f37072fd.pth"
    torch.save(net.state_dict(), path)  # torchvision layout, fc included
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = W.get_weight_spec("resnet18", "imagenet")
    monkeypatch.setitem(W._CATALOGUE, ("resnet18", "imagenet"), replace(spec, sha256=digest))
    model = create_backbone("resnet18", weights="imagenet")
    assert model.weights_info.source == "imagenet" and model.weights_info.sha256 == digest
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _features_torchvision_resnet(net, x))


def test_size_is_checked_before_hash(weights_dir, monkeypatch):
    spec = replace(W.get_weight_spec("efficientnet_lite0", "imagenet"), package_module=None)
    monkeypatch.setitem(W._CATALOGUE, ("efficientnet_lite0", "imagenet"), spec)
    (weights_dir / spec.file_name).write_bytes(b"truncated")
    with pytest.raises(ChecksumMismatchError, match="size is 9 bytes, expected 18826032"):
        create_backbone("efficientnet_lite0", weights="imagenet")


def test_weights_dirs_order(monkeypatch, tmp_path):
    monkeypatch.setenv("MTDP_WEIGHTS_DIR", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    monkeypatch.setenv("TORCH_MODEL_ZOO", str(tmp_path / "zoo"))
    dirs = W.weights_dirs()
    assert dirs[:2] == [tmp_path / "a", tmp_path / "b"]
    assert tmp_path / "zoo" in dirs
    assert dirs[2].name == "checkpoints"


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save(argparse.Namespace(a=1), path)
    with pytest.raises(IncompatibleWeightsError, match="weights_only"):
        create_backbone("resnet18", weights=path)


def test_checkpoint_of_another_architecture_is_named(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(tvm.resnet18().state_dict(), path)
    with pytest.raises(IncompatibleWeightsError) as info:
        create_backbone("resnet34", weights=path)
    message = str(info.value)
    assert "does not fit backbone resnet34" in message and "looks like a resnet18 checkpoint" in message
    with pytest.raises(IncompatibleWeightsError, match="does not fit backbone densenet121"):
        create_backbone("densenet121", weights=path)


def test_exported_backbone_round_trip(tmp_path):
    model = create_backbone("densenet121", weights="random", seed=5)
    with torch.no_grad():
        model.features.norm5.weight.mul_(3.0)  # something that is not the random init
    path = save_backbone(model, tmp_path / "sub" / "dn.pth", metadata={"iterations": 10})
    loaded = create_backbone("densenet121", weights=path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert loaded.weights_info.source == "file" and loaded.weights_info.file == "dn.pth"
    assert loaded.weights_info.extra == {"iterations": 10}
    with pytest.raises(IncompatibleWeightsError, match="is a densenet121 backbone, not resnet18"):
        create_backbone("resnet18", weights=path)


def test_exported_normalisation_is_kept(tmp_path):
    model = create_backbone("resnet18", weights="random")
    model.weights_info = replace(model.weights_info, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    loaded = create_backbone("resnet18", weights=save_backbone(model, tmp_path / "m.pth"))
    assert loaded.normalization == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_ddp_prefix_and_wrapped_state_dicts(tmp_path):
    net = tvm.resnet18()
    path = tmp_path / "ddp.pth"
    torch.save({"epoch": 3, "model": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    model = create_backbone("resnet18", weights=path)
    torch.testing.assert_close(model.conv1.weight, net.conv1.weight)


def test_legacy_densenet_key_names(tmp_path):
    net = tvm.densenet121()
    legacy = {}
    for key, value in net.state_dict().items():
        for old, new in (("norm1", "norm.1"), ("norm2", "norm.2"), ("conv1", "conv.1"), ("conv2", "conv.2")):
            if ".denselayer" in key and f".{old}." in key:
                key = key.replace(f".{old}.", f".{new}.")
        legacy[key] = value
    assert any(".norm.1." in k for k in legacy)
    path = tmp_path / "legacy.pth"
    torch.save(legacy, path)
    model = create_backbone("densenet121", weights=path)
    torch.testing.assert_close(
        model.features.denseblock1.denselayer1.norm1.weight, net.features.denseblock1.denselayer1.norm1.weight
    )


def test_efficientnet_lite0_imagenet_ships_in_a_wheel():
    model = create_backbone("efficientnet_lite0", weights="imagenet")
    assert model.weights_info.sha256 == W.get_weight_spec("efficientnet_lite0", "imagenet").sha256


def test_efficientnet_lite0_imagenet_classifies_chelsea_as_a_cat():
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    from mtdp_core.data.images import Preprocessing

    model = create_backbone("efficientnet_lite0", weights="imagenet")
    spec = W.get_weight_spec("efficientnet_lite0", "imagenet")
    classifier = W.load_state_file(W.find_weights_file(spec))
    prep = Preprocessing.for_backbone(model, size=224, resize="stretch")
    x = prep.normalize(prep.load(Image.fromarray(skimage_data.chelsea()))[None])
    with torch.no_grad():
        logits = model(x) @ classifier["_fc.weight"].T + classifier["_fc.bias"]
    probabilities = logits.softmax(dim=1)[0]
    top = int(probabilities.argmax())
    assert 281 <= top <= 285, f"ImageNet class {top} is not a cat"  # tabby .. Egyptian cat
    assert float(probabilities[top]) > 0.5


def test_a_fetched_file_is_readable_by_other_users(weights_dir, tmp_path, monkeypatch):
    """Fetched as root in an image's build, a 0600 file could not be read by the image's uid 1000."""
    from mtdp_core.backbones import cli

    published = tmp_path / "published.pth"
    published.write_bytes(b"weights")
    spec = replace(
        W.get_weight_spec("resnet18", "imagenet"),
        url=published.as_uri(),
        sha256=hashlib.sha256(b"weights").hexdigest(),
        size_bytes=None,
    )
    monkeypatch.setattr(cli, "get_weight_spec", lambda arch, source: spec)
    args = argparse.Namespace(arch="resnet18", source="imagenet", dir=weights_dir)
    assert cli._cmd_weights_fetch(args) == 0
    fetched = weights_dir / spec.file_name
    assert fetched.read_bytes() == b"weights" and fetched.stat().st_mode & 0o777 == 0o644
