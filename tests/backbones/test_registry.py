import pytest
import torch

from mtdp_core.backbones import Backbone, create_backbone, get_backbone_entry, list_backbones, register_backbone
from mtdp_core.backbones.weights import IMAGENET_MEAN, IMAGENET_STD
from mtdp_core.errors import UnknownNameError

REQUIRED = {
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "densenet121",
    "densenet169",
    "densenet201",
    "efficientnet_lite0",
}


def test_required_backbones_are_registered():
    assert REQUIRED <= set(list_backbones())


def test_list_backbones_filters():
    assert list_backbones("densenet*") == ["densenet121", "densenet161", "densenet169", "densenet201"]
    assert list_backbones(weights="mtdp") == ["densenet121", "resnet50"]
    assert "efficientnet_lite0" in list_backbones(weights="imagenet")


@pytest.mark.parametrize("name", sorted(REQUIRED | {"densenet161"}))
def test_every_backbone_gives_pooled_flat_features(name):
    model = create_backbone(name, weights="random", seed=0)
    assert isinstance(model, Backbone)
    assert model.arch == name
    assert model.n_features == get_backbone_entry(name).n_features
    assert model.normalization == (IMAGENET_MEAN, IMAGENET_STD)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, model.n_features)
        assert model.train()(x).shape == (2, model.n_features)
    # Parameter names are the reference implementation's, without the classifier.
    assert not any(k.startswith(model.head_prefixes) for k in model.state_dict())


def test_non_square_and_odd_input_sizes():
    for name in ("resnet18", "densenet121", "efficientnet_lite0"):
        model = create_backbone(name, weights="random")
        with torch.no_grad():
            assert model(torch.randn(1, 3, 45, 71)).shape == (1, model.n_features)


def test_random_weights_are_seeded():
    a = create_backbone("resnet18", weights="random", seed=3)
    b = create_backbone("resnet18", weights=None, seed=3)
    c = create_backbone("resnet18", weights="random", seed=4)
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    assert a.weights_info.key() == "random-seed3"
    # The global RNG is left alone.
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    create_backbone("resnet18", weights="random", seed=9)
    assert torch.equal(torch.rand(1), expected)


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(UnknownNameError) as info:
        create_backbone("resnet05")
    message = str(info.value)
    assert "resnet05" in message and "resnet50" in message and "densenet121" in message
    assert "Did you mean 'resnet50'" in message


def test_unknown_weight_source_lists_sources():
    with pytest.raises(UnknownNameError) as info:
        create_backbone("resnet18", weights="mtdp")
    message = str(info.value)
    assert "'mtdp'" in message and "imagenet" in message and "random" in message


def test_register_backbone_rejects_duplicates():
    with pytest.raises(ValueError):
        register_backbone("resnet18", n_features=1, family="x")(lambda: None)


def test_identity_changes_with_weights():
    a = create_backbone("resnet18", weights="random", seed=1)
    b = create_backbone("resnet18", weights="random", seed=2)
    assert a.identity_key() != b.identity_key()
    assert a.identity()["arch"] == "resnet18"
