"""torch.distributed set-up for ``torchrun`` (one process per GPU, or several CPU processes).

``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; a plain
``python`` run has none of them and trains in one process. The backend is NCCL on GPUs and
gloo on CPUs. Only rank 0 writes files and logs progress.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mtdp_core.errors import ConfigurationError
from mtdp_core.runtime import resolve_device

logger = logging.getLogger(__name__)


@dataclass
class DistContext:
    """Where this process stands: rank, world size, its device, whether it set up the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum_(self, tensor: torch.Tensor) -> None:
        """Sum ``tensor`` over ranks, in place (no-op in a single process)."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)

    def gather_to_main(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (a list in rank order); None elsewhere."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size if self.is_main else None  # type: ignore[assignment]
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast_from_main(self, obj: Any) -> Any:
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def init_distributed(device: str | torch.device = "auto") -> DistContext:
    """Join the process group described by torchrun's environment, if any.

    In a distributed run, ``device="auto"``/``"cuda"`` means ``cuda:LOCAL_RANK``. A process
    group that already exists (set up by the caller) is used as it is.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if dist.is_available() and dist.is_initialized():
        world_size = dist.get_world_size()
    if world_size <= 1:
        return DistContext(device=resolve_device(device))
    rank = dist.get_rank() if dist.is_initialized() else int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    spec = str(device).lower()
    if spec in ("auto", "cuda") and torch.cuda.is_available():
        resolved = torch.device("cuda", local_rank)
    elif spec == "auto":
        resolved = torch.device("cpu")
    else:
        resolved = resolve_device(device)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise ConfigurationError(
                    f"WORLD_SIZE={world_size} but {var} is not set: launch with torchrun, which sets it."
                )
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        owns = True
        logger.info("rank %d/%d joined the %s process group on %s", rank, world_size, backend, resolved)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=resolved, owns_group=owns)


def wrap_ddp(model: nn.Module, ctx: DistContext) -> nn.Module:
    """DistributedDataParallel around ``model`` (the model itself in a single process).

    ``find_unused_parameters``: heads of tasks absent from a rank's share of the batch get no
    gradient there; DDP then averages with zeros for heads used on another rank and leaves
    the gradient of heads used nowhere as None. ``device_ids=None`` keeps the inputs where
    they are: the task ids stay on the CPU, where the routing plan is computed.
    Built again after the warm-up, because DDP registers the parameters that require
    gradients when it is constructed.
    """
    if not ctx.enabled:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=None, find_unused_parameters=True)
