"""Multi-task pre-training: ``train(config)``, its ``TrainConfig`` and the pieces it is made of.

>>> from mtdp_core.training import TrainConfig, train
>>> result = train(TrainConfig.from_file("training/configs/shared_small.json"))
>>> result.backbone_path          # create_backbone(arch, weights=result.backbone_path) loads it
"""

from mtdp_core.training.config import TrainConfig, load_config_file
from mtdp_core.training.trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "load_config_file", "train"]
