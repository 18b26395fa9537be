"""The Backbone interface every registered architecture implements."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from mtdp_core.backbones.weights import IMAGENET_MEAN, IMAGENET_STD, BackboneIdentity, WeightsInfo


class Normalization(NamedTuple):
    """Per-channel mean and std (RGB, for images scaled to [0, 1]) a backbone expects."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class Backbone(BackboneIdentity, nn.Module):
    """A CNN trunk that maps images (B, 3, H, W) to pooled features (B, n_features).

    Subclasses build their layers so that ``state_dict()`` keys are those of the reference
    implementation without its classifier (torchvision's, for ResNet/DenseNet), and list the
    classifier's key prefixes in ``head_prefixes`` so that full checkpoints load.

    Attributes:
        arch: registered name, e.g. ``"resnet50"``.
        n_features: length of the feature vector.
        weights_info: identity of the weights loaded (source, file, sha256, normalisation).
    """

    arch: str = ""
    n_features: int = 0
    head_prefixes: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.weights_info = WeightsInfo(source="random", seed=None, mean=IMAGENET_MEAN, std=IMAGENET_STD)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last feature map, (B, n_features, h, w), before pooling."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled, flattened features: (B, 3, H, W) -> (B, n_features)."""
        return self.forward_features(x).mean(dim=(2, 3))

    @property
    def normalization(self) -> Normalization:
        return Normalization(self.weights_info.mean, self.weights_info.std)

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}, n_features={self.n_features}, weights={self.weights_info.key()!r}"
