"""The optimiser and the learning-rate schedule of multi-task pre-training.

SGD with two parameter groups, ``backbone`` (γ) and ``heads`` (γ·τ). With a warm-up, the
first ``warmup_iterations`` train the heads only, at γ_w, while the backbone is frozen
(``requires_grad=False`` and batch-norm layers in eval mode, so neither weights nor BN
statistics move); then the whole network trains at γ / γ·τ. One optimiser serves both
phases: frozen parameters have no gradient, and SGD skips parameters whose gradient is None,
so their momentum buffers start at the first full iteration. Learning rates are a pure
function of the iteration, which makes resuming anywhere (inside or after the warm-up) exact.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mtdp_core.multitask import MultiTaskModel
from mtdp_core.training.batchnorm import freeze_batch_norm
from mtdp_core.training.config import TrainConfig

WARMUP = "warmup"
FULL = "full"


def build_optimizer(model: MultiTaskModel, config: TrainConfig) -> torch.optim.SGD:
    """SGD over two named groups: ``backbone`` then ``heads``."""
    groups = [
        {"params": model.backbone_parameters(), "lr": config.lr, "name": "backbone"},
        {"params": model.head_parameters(), "lr": config.lr * config.head_lr_multiplier, "name": "heads"},
    ]
    return torch.optim.SGD(
        groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=config.nesterov
    )


def phase_at(config: TrainConfig, iteration: int) -> str:
    """``"warmup"`` for the first ``warmup_iterations`` iterations, ``"full"`` after."""
    return WARMUP if iteration < config.warmup_iterations else FULL


def learning_rates(config: TrainConfig, iteration: int) -> dict[str, float]:
    """Learning rate of each group at ``iteration`` (0-based)."""
    if phase_at(config, iteration) == WARMUP:
        return {"backbone": 0.0, "heads": config.warmup_lr}
    lr = config.lr
    if config.lr_schedule == "cosine":
        span = max(1, config.iterations - config.warmup_iterations)
        progress = (iteration - config.warmup_iterations) / span
        lr = config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return {"backbone": lr, "heads": lr * config.head_lr_multiplier}


def set_learning_rates(optimizer: torch.optim.Optimizer, rates: dict[str, float]) -> None:
    for group in optimizer.param_groups:
        group["lr"] = rates[group["name"]]


def enter_phase(model: MultiTaskModel, phase: str, *, bn_mode: str = "train") -> None:
    """Set requires_grad and train/eval modes for a phase.

    warm-up: backbone frozen (no gradient, eval mode: BN statistics fixed, no stochastic
    depth), heads training. full: everything trains; with ``bn_mode="frozen"`` the BN layers
    stay in eval mode (running statistics used and kept).
    """
    model.train()
    if phase == WARMUP:
        model.backbone.requires_grad_(False)
        model.backbone.eval()
    else:
        model.backbone.requires_grad_(True)
        if bn_mode == "frozen":
            freeze_batch_norm(model.backbone)
    model.heads.requires_grad_(True)


def trainable_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
