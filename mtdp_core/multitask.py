"""The multi-task network: a shared backbone and one linear head per task.

Following the paper (Fig. 1): features ``z = backbone(x)`` (B, f_s) are routed to the head of
each sample's task only; head ``i`` is a ``Linear(f_s, C_i)``; a head without any sample in
the batch produces nothing and receives no gradient (its ``.grad`` stays ``None``, so SGD
leaves it and its momentum alone). The loss is Eq. 1: the sum of the per-sample
cross-entropies over the batch, divided by the batch size B.

Routing is vectorised: the weights of the heads present in the batch are concatenated and
applied in one matrix product, and each sample's own logits are gathered from the result.
The cost is one small GEMM instead of one Python call per head (see docs/multitask_training.md
for the measured overhead). Samples of other tasks contribute nothing to a head's gradient,
because only each sample's own logits reach the loss.

State-dict keys are ``backbone.<backbone keys>`` and ``heads.<task>.{weight,bias}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mtdp_core.backbones import Backbone
from mtdp_core.errors import ConfigurationError


class MultiTaskModel(nn.Module):
    """Shared backbone + per-task linear heads.

    Args:
        backbone: the shared network θ_s, (B, 3, H, W) -> (B, f_s).
        tasks: ``{task name: number of classes}``, in task-index order.
        head_seed: seed of the heads' random initialisation (torch's nn.Linear default), so
            that a run's heads do not depend on what else used the global RNG before.
    """

    def __init__(
        self, backbone: Backbone, tasks: Mapping[str, int] | Sequence[tuple[str, int]], *, head_seed: int | None = 0
    ) -> None:
        super().__init__()
        items = list(tasks.items()) if isinstance(tasks, Mapping) else [(str(n), int(c)) for n, c in tasks]
        if not items:
            raise ConfigurationError("A multi-task model needs at least one task.")
        for name, n_classes in items:
            if n_classes < 1:
                raise ConfigurationError(f"Task {name!r} has {n_classes} classes: a head needs at least one output.")
        self.backbone = backbone
        with torch.random.fork_rng(devices=[], enabled=head_seed is not None):
            if head_seed is not None:
                torch.manual_seed(head_seed)
            self.heads = nn.ModuleDict({name: nn.Linear(backbone.n_features, n) for name, n in items})
        self.task_names: tuple[str, ...] = tuple(name for name, _ in items)
        self._n_classes = torch.tensor([n for _, n in items], dtype=torch.long)
        self.max_classes = int(self._n_classes.max())

    @property
    def n_tasks(self) -> int:
        return len(self.task_names)

    @property
    def n_classes(self) -> list[int]:
        return self._n_classes.tolist()

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.heads.parameters())

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def forward(self, x: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        """Logits of each sample on its own task's classes.

        Args:
            x: images (B, 3, H, W), normalised.
            task_ids: task index of each sample, (B,) int. Pass it on the CPU: the routing
                plan is computed there, and a CUDA tensor would cost a device sync.

        Returns:
            (B, max_classes) logits; entries beyond the sample's task's C_i classes are -inf,
            so softmax/cross-entropy over a row equal those over the task's own classes.
        """
        return self.route(self.backbone(x), task_ids)

    def route(self, features: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        """Apply each sample's head to its features: (B, f_s) -> (B, max_classes), see forward."""
        ids = task_ids.detach().to("cpu", torch.long)
        if ids.ndim != 1 or len(ids) != len(features):
            raise ConfigurationError(
                f"task_ids has shape {tuple(task_ids.shape)}; expected ({len(features)},): one task index per sample."
            )
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= self.n_tasks):
            raise ConfigurationError(
                f"task_ids holds values outside 0..{self.n_tasks - 1}: {ids.unique().tolist()[:10]}."
            )
        active = torch.unique(ids)  # sorted task indices present in the batch
        heads = [self.heads[self.task_names[t]] for t in active.tolist()]
        # Column offset of each active head in the concatenated output.
        sizes = self._n_classes[active]
        starts = torch.zeros(self.n_tasks, dtype=torch.long)
        starts[active] = torch.cumsum(sizes, 0) - sizes
        positions = torch.arange(self.max_classes)
        valid = positions[None, :] < self._n_classes[ids][:, None]  # (B, max_classes)
        columns = torch.where(valid, starts[ids][:, None] + positions[None, :], 0)
        device = features.device
        weight = torch.cat([h.weight for h in heads]) if len(heads) > 1 else heads[0].weight
        bias = torch.cat([h.bias for h in heads]) if len(heads) > 1 else heads[0].bias
        logits = F.linear(features, weight, bias)  # (B, sum of active C_i)
        logits = logits.gather(1, columns.to(device, non_blocking=True))
        return logits.masked_fill(~valid.to(device, non_blocking=True), float("-inf"))

    def task_logits(self, x: torch.Tensor, task: str | int) -> torch.Tensor:
        """Logits of every sample on one task: (B, 3, H, W) -> (B, C_task)."""
        name = self.task_names[task] if isinstance(task, int) else task
        if name not in self.heads:
            raise ConfigurationError(f"Unknown task {name!r}: the model's tasks are {', '.join(self.task_names)}.")
        return self.heads[name](self.backbone(x))


def multitask_loss(logits: torch.Tensor, targets: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Eq. 1 of the paper: sum over the batch of each sample's cross-entropy on its task, / B.

    Args:
        logits: (B, max_classes) from ``MultiTaskModel.forward`` (-inf beyond each task's classes).
        targets: (B,) class index of each sample within its task.
        batch_size: the B to divide by; defaults to ``len(targets)``. Under DDP each rank
            divides by its local batch size, and DDP's gradient averaging over ranks then gives
            the global Eq. 1.
    """
    total = F.cross_entropy(logits.float(), targets, reduction="sum")
    return total / (batch_size or len(targets))


@torch.no_grad()
def rescale_head_grads(model: MultiTaskModel, task_counts: Sequence[int] | torch.Tensor, batch_size: int) -> None:
    """Supplementary C: multiply head i's gradients by φ_i = B / |B_i|.

    With Eq. 1, head i's gradient is a sum over its |B_i| samples divided by B, as if its
    learning rate were divided by B/|B_i| (≈ the number of tasks). Rescaling makes it the mean
    over its own samples. Call between ``backward()`` and ``optimizer.step()``, with the task
    counts and size of the *whole* batch (all ranks under DDP). Heads without samples are left
    alone (their gradient is None).
    """
    counts = torch.as_tensor(task_counts).tolist()
    if len(counts) != model.n_tasks:
        raise ConfigurationError(f"Got {len(counts)} task counts for a model with {model.n_tasks} tasks.")
    grads, scales = [], []
    for name, count in zip(model.task_names, counts):
        if count <= 0:
            continue
        for p in model.heads[name].parameters():
            if p.grad is not None:
                grads.append(p.grad)
                scales.append(batch_size / count)
    if grads:
        torch._foreach_mul_(grads, scales)
