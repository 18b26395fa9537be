"""Loading checkpoints saved in the layout of the original multitask-dipath code.

The original wraps a torchvision DenseNet/ResNet subclass whose forward returns the last
feature map (for DenseNet: ``self.features(x)``, i.e. before torchvision's final ReLU) in a
``MultiHead`` with one ``Head`` (global average pooling + 1x1 conv) per task, and saves the
whole ``MultiHead.state_dict()``: keys ``features.<backbone keys>`` and
``heads.<task>.linear.{weight,bias}``. These classes rebuild that layout.
"""

import pytest
import torch
from torch import nn
from torchvision import models as tvm

from mtdp_core.backbones import create_backbone


class NoHeadDenseNet(tvm.DenseNet):
    def forward(self, x):
        return self.features(x)


class NoHeadResNet(tvm.ResNet):
    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class Head(nn.Module):
    def __init__(self, n_features, n_classes):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Conv2d(n_features, n_classes, kernel_size=1)

    def forward(self, x):
        return self.linear(self.pool(x)).flatten(1)


class MultiHead(nn.Module):
    def __init__(self, features, n_features, tasks):
        super().__init__()
        self.features = features
        self.heads = nn.ModuleDict({name: Head(n_features, n) for name, n in tasks.items()})


def _original(arch):
    torch.manual_seed(0)
    if arch == "densenet121":
        features = NoHeadDenseNet(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64)
        n_features = 1024
    else:
        features = NoHeadResNet(tvm.resnet.Bottleneck, [3, 4, 6, 3])
        n_features = 2048
    model = MultiHead(features, n_features, {"glomeruli": 2, "bonemarrow": 8})
    # Non-trivial batch-norm statistics, so that eval-mode equality means something.
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model.features(torch.rand(4, 3, 32, 32) * 2)
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["densenet121", "resnet50"])
def test_original_multihead_checkpoint_loads_exactly(arch, tmp_path, weights_dir):
    original = _original(arch)
    state = original.state_dict()
    assert any(k.startswith("heads.glomeruli.linear.") for k in state)
    if arch == "densenet121":
        assert any(k.startswith("features.features.denseblock1.") for k in state)
    path = tmp_path / f"{arch}-mh-best-191205-141200.pth"
    torch.save(state, path)

    ours = create_backbone(arch, weights=path)
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        feature_map = original.features(x)
        expected = feature_map.mean(dim=(2, 3))
        got = ours(x)
        torch.testing.assert_close(got, expected)
        # The original heads give the same logits on our features.
        head = original.heads["bonemarrow"].linear
        logits = got @ head.weight.flatten(1).T + head.bias
        torch.testing.assert_close(logits, original.heads["bonemarrow"](feature_map))
    if arch == "densenet121":
        # Pre-ReLU: some pooled features are negative, unlike torchvision's post-ReLU output.
        assert (got < 0).any()

    # The same file placed in the weights folder is the `mtdp` weight source.
    (weights_dir / path.name).write_bytes(path.read_bytes())
    via_source = create_backbone(arch, weights="mtdp")
    assert via_source.weights_info.source == "mtdp"
    with torch.no_grad():
        torch.testing.assert_close(via_source(x), expected)
