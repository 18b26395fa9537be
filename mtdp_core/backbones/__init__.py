"""Backbones: a registry of CNN trunks and the weights they can be loaded with.

>>> from mtdp_core.backbones import create_backbone, list_backbones
>>> list_backbones("densenet*")
['densenet121', 'densenet161', 'densenet169', 'densenet201']
>>> model = create_backbone("resnet18", weights="random", seed=0)
>>> model.n_features
512
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mtdp_core.backbones.registry import (
    create_backbone,
    get_backbone_entry,
    list_backbones,
    register_backbone,
    resolve_weights,
    save_backbone,
)
from mtdp_core.backbones.weights import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    WeightsInfo,
    WeightSpec,
    find_weights_file,
    get_weight_spec,
    sources_for,
    weight_specs,
    weights_dirs,
)

if TYPE_CHECKING:
    from mtdp_core.backbones.base import Backbone, Normalization


def __getattr__(name: str) -> Any:
    # Backbone is a torch module: imported on first use, so that the weights catalogue and
    # resolve_weights (checksums) work where torch is not installed (the torch-free images).
    if name in ("Backbone", "Normalization"):
        from mtdp_core.backbones import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "Normalization",
    "WeightSpec",
    "WeightsInfo",
    "create_backbone",
    "find_weights_file",
    "get_backbone_entry",
    "get_weight_spec",
    "list_backbones",
    "register_backbone",
    "resolve_weights",
    "save_backbone",
    "sources_for",
    "weight_specs",
    "weights_dirs",
]
