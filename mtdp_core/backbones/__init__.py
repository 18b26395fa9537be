"""Backbones: a registry of CNN trunks and the weights they can be loaded with.

>>> from mtdp_core.backbones import create_backbone, list_backbones
>>> list_backbones("densenet*")
['densenet121', 'densenet161', 'densenet169', 'densenet201']
>>> model = create_backbone("resnet18", weights="random", seed=0)
>>> model.n_features
512
"""

from mtdp_core.backbones.base import Backbone, Normalization
from mtdp_core.backbones.registry import (
    create_backbone,
    get_backbone_entry,
    list_backbones,
    register_backbone,
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
    "save_backbone",
    "sources_for",
    "weight_specs",
    "weights_dirs",
]
