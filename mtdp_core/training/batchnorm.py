"""Batch-norm helpers: freezing, and the paper's re-estimation of BN statistics (Supp. B).

When an ImageNet network meets pathology images, the first training batches move every BN
layer's batch statistics far from the running ones, while γ and β move slowly: training
behaves like training from scratch. The paper's fix, before training: forward a few batches
mixing all tasks, measure each BN layer's input mean μ_t and variance σ_t² (σ with the BN's
eps), and rewrite the layer so that its output is unchanged::

    γ_t = γ_s · σ_t / σ_s          β_t = β_s + γ_s · (μ_t − μ_s) / σ_s

with (μ_s, σ_s) the running statistics it had; the running statistics become (μ_t, σ_t²).
In eval mode the network computes exactly what it computed before; in train mode, batches of
the new data are normalised with statistics close to (μ_t, σ_t), so they too start from the
pre-trained network's outputs.

Unlike the original code, parameters are updated in place (``copy_``): the same
``nn.Parameter`` objects stay in the model, so an optimiser created before keeps working;
statistics are pooled over all the samples seen (not an average of per-batch variances) and,
under DDP, over all ranks, so every rank gets identical layers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

logger = logging.getLogger(__name__)


def batch_norm_layers(module: nn.Module) -> list[tuple[str, _BatchNorm]]:
    return [(name, m) for name, m in module.named_modules() if isinstance(m, _BatchNorm)]


def freeze_batch_norm(module: nn.Module) -> None:
    """Put every BN layer in eval mode: running statistics used for normalisation, never updated."""
    for _, bn in batch_norm_layers(module):
        bn.eval()


class _Moments:
    """Running per-channel count, sum and sum of squared deviations, in float64."""

    def __init__(self) -> None:
        self.count = 0.0
        self.sum: torch.Tensor | None = None
        self.sumsq: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        # Per-batch variance and mean with torch's stable kernel, then combined in float64:
        # sum of squares = M2_b + n_b * mean_b^2 loses nothing at float64 precision.
        dims = [d for d in range(x.ndim) if d != 1]
        n = x.numel() // x.shape[1]
        var, mean = torch.var_mean(x.detach().float(), dim=dims, correction=0)
        mean, var = mean.double(), var.double()
        s, ss = n * mean, n * (var + mean * mean)
        self.sum = s if self.sum is None else self.sum + s
        self.sumsq = ss if self.sumsq is None else self.sumsq + ss
        self.count += n


@torch.no_grad()
def adapt_batch_norm(
    module: nn.Module,
    batches: Iterable[torch.Tensor],
    *,
    all_reduce: Callable[[torch.Tensor], None] | None = None,
) -> dict[str, float]:
    """Re-estimate the BN statistics of ``module`` on ``batches`` and rewrite γ/β in place.

    Args:
        module: the network (e.g. a backbone) whose BN layers are adapted.
        batches: input tensors, ready for ``module(x)`` (normalised, on its device).
        all_reduce: under DDP, a function that sums a tensor over ranks in place, so that the
            statistics pool every rank's samples.

    Returns:
        A summary for the logs: layers adapted, samples seen, mean |Δμ|/σ_s over channels.
    """
    layers = []
    for name, bn in batch_norm_layers(module):
        if not (bn.affine and bn.track_running_stats):
            # Without γ/β the output cannot be preserved; without running statistics the
            # layer always uses batch statistics anyway.
            logger.warning(
                "BN adaptation skips %s (affine=%s, track_running_stats=%s)", name, bn.affine, bn.track_running_stats
            )
            continue
        layers.append((name, bn))
    moments = {name: _Moments() for name, _ in layers}
    hooks = [
        bn.register_forward_pre_hook(lambda m, inputs, key=name: moments[key].add(inputs[0])) for name, bn in layers
    ]
    modes = {m: m.training for m in module.modules()}
    module.eval()  # every layer normalises with its running statistics, as it did before
    try:
        n_batches = n_images = 0
        for x in batches:
            module(x)
            n_batches += 1
            n_images += len(x)
    finally:
        for hook in hooks:
            hook.remove()
        for m, mode in modes.items():
            m.train(mode)
    layers = [(n, bn) for n, bn in layers if moments[n].sum is not None]  # BN layers the forward never used
    if n_batches == 0 or not layers:
        return {"layers": 0, "batches": n_batches, "samples": 0, "mean_shift": 0.0}

    # One flat buffer, [count, sums, sums of squares] per layer then the number of images,
    # for a single all-reduce.
    device = moments[layers[0][0]].sum.device
    flat = torch.cat(
        [
            torch.cat(
                [torch.tensor([moments[n].count], dtype=torch.float64, device=device), moments[n].sum, moments[n].sumsq]
            )
            for n, _ in layers
        ]
        + [torch.tensor([float(n_images)], dtype=torch.float64, device=device)]
    )
    if all_reduce is not None:
        all_reduce(flat)
    shifts = []
    offset = 0
    for name, bn in layers:
        channels = bn.num_features
        count = float(flat[offset])
        total = flat[offset + 1 : offset + 1 + channels]
        total_sq = flat[offset + 1 + channels : offset + 1 + 2 * channels]
        offset += 1 + 2 * channels
        mean_t = total / count
        var_t = (total_sq / count - mean_t * mean_t).clamp_min(0.0) * (
            count / max(count - 1.0, 1.0)
        )  # unbiased, as running_var
        mean_s, var_s = bn.running_mean.double(), bn.running_var.double()
        sigma_s = torch.sqrt(var_s + bn.eps)
        sigma_t = torch.sqrt(var_t + bn.eps)
        gamma_s, beta_s = bn.weight.double(), bn.bias.double()
        gamma_t = gamma_s * sigma_t / sigma_s
        beta_t = beta_s + gamma_s * (mean_t - mean_s) / sigma_s
        shifts.append(float(((mean_t - mean_s).abs() / sigma_s).mean()))
        # In place: the Parameter objects (and any optimiser holding them) stay the same.
        bn.weight.copy_(gamma_t)
        bn.bias.copy_(beta_t)
        bn.running_mean.copy_(mean_t)
        bn.running_var.copy_(var_t)
    return {
        "layers": len(layers),
        "batches": n_batches,
        "samples": int(flat[-1]),
        "mean_shift": sum(shifts) / len(shifts),
    }
