"""Per-task validation during multi-task training: accuracy, and ROC AUC for binary tasks."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from mtdp_core.data.datasets import MultiTaskDataset
from mtdp_core.multitask import MultiTaskModel
from mtdp_core.runtime import Precision
from mtdp_core.training.distributed import DistContext

logger = logging.getLogger(__name__)


def score(metric: str, labels: np.ndarray, probabilities: np.ndarray) -> float:
    """``accuracy`` or ``roc_auc`` (of class 1) of predictions (n, C); NaN when undefined."""
    if len(labels) == 0:
        return math.nan
    if metric == "accuracy":
        return float(np.mean(probabilities.argmax(axis=1) == labels))
    if metric == "roc_auc":
        if len(np.unique(labels)) < 2:
            return math.nan  # ROC AUC needs both classes among the samples
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(labels, probabilities[:, 1]))
    raise ValueError(f"unknown metric {metric!r}")


def validation_indices(dataset: MultiTaskDataset, max_per_task: int | None, seed: int) -> np.ndarray:
    """Indices of the samples validated: all, or a seeded subset of at most N per task."""
    if max_per_task is None:
        return np.arange(len(dataset))
    rng = np.random.default_rng(seed)
    picked = []
    for offset, size in zip(dataset.offsets, dataset.task_sizes):
        take = min(size, max_per_task)
        picked.append(offset + np.sort(rng.permutation(size)[:take]))
    return np.concatenate(picked) if picked else np.zeros(0, np.int64)


@torch.no_grad()
def evaluate(
    model: MultiTaskModel,
    dataset: MultiTaskDataset,
    indices: np.ndarray,
    *,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    ctx: DistContext,
    precision: Precision,
    batch_size: int,
    num_workers: int = 0,
    channels_last: bool = True,
    metrics: dict[str, str],
) -> dict[str, dict] | None:
    """Per-task metric, accuracy and mean loss on ``dataset[indices]``, sharded over ranks.

    Returns on rank 0: ``{task: {"metric", "score", "accuracy", "loss", "n"}}``; None elsewhere.
    The model is left in eval mode: the caller restores the training modes.
    """
    model.eval()
    mine = indices[ctx.rank :: ctx.world_size]
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, mine.tolist()),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=ctx.device.type == "cuda",
        # Its own generator: creating the iterator must not draw from the global RNG, or
        # validating would change the training run that follows (stochastic depth).
        generator=torch.Generator(),
    )
    logits_parts, label_parts, task_parts = [], [], []
    for images, labels, task_ids in loader:
        x = normalize(images.to(ctx.device, non_blocking=True))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with precision.autocast():
            logits = model(x, task_ids)
        logits_parts.append(logits.float().cpu())
        label_parts.append(labels)
        task_parts.append(task_ids)
    local = (
        torch.cat(logits_parts).numpy() if logits_parts else np.zeros((0, model.max_classes), np.float32),
        torch.cat(label_parts).numpy() if label_parts else np.zeros(0, np.int64),
        torch.cat(task_parts).numpy() if task_parts else np.zeros(0, np.int64),
    )
    gathered = ctx.gather_to_main(local)
    if gathered is None:
        return None
    logits = np.concatenate([g[0] for g in gathered])
    labels = np.concatenate([g[1] for g in gathered])
    tasks = np.concatenate([g[2] for g in gathered])
    results = {}
    for index, name in enumerate(model.task_names):
        if name not in metrics:
            continue
        mask = tasks == index
        if not mask.any():
            continue
        n_classes = model.n_classes[index]
        task_logits = torch.from_numpy(logits[mask][:, :n_classes])
        task_labels = torch.from_numpy(labels[mask])
        probabilities = F.softmax(task_logits, dim=1).numpy()
        results[name] = {
            "metric": metrics[name],
            "score": score(metrics[name], task_labels.numpy(), probabilities),
            "accuracy": score("accuracy", task_labels.numpy(), probabilities),
            "loss": float(F.cross_entropy(task_logits, task_labels)),
            "n": int(mask.sum()),
        }
    return results
