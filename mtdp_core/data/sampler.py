"""The paper's task-balanced batch sampling, deterministic and DDP-aware.

Each sample of a batch first picks a task uniformly at random, then an image of that task
uniformly at random, so small tasks are seen as often as huge ones and tasks are interleaved
within every batch (Mormont et al. 2020, Sec. "Multi-task training").

Batch ``k`` is a pure function of ``(seed, stream, k)``: its random draws come from
``numpy.random.SeedSequence([seed, stream, k])``. Hence

* resuming at iteration ``k`` needs no sampler state besides ``k``;
* under DDP every rank draws the same *global* batch and keeps its own slice of it, so each
  rank sees a different, reproducible stream and the union over ranks is exactly the
  single-process batch (training with 1 or N processes sees the same data);
* every sample also gets its own seed, which drives its augmentation (crop, flips), so the
  images themselves do not depend on the number of DataLoader workers or ranks either.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mtdp_core.errors import ConfigurationError

TRAIN_STREAM = 0
BN_ADAPT_STREAM = 1


@dataclass(frozen=True)
class GlobalBatch:
    """The whole batch ``index`` (all ranks): each (B,) int64."""

    tasks: np.ndarray  # task index of each sample
    items: np.ndarray  # flat index into the concatenation of the tasks' samples
    seeds: np.ndarray  # per-sample seed (augmentation)


class TaskBalancedSampler(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Batch sampler over tasks concatenated in order (flat index = task offset + index in task).

    Yields, for each batch, this rank's ``batch_size // world_size`` samples as
    ``(flat index, sample seed)`` pairs, for a dataset that accepts such pairs
    (``MultiTaskDataset``). Use it as ``DataLoader(dataset, batch_sampler=sampler)``.

    Args:
        task_sizes: number of samples of each task, in task order; all must be > 0.
        batch_size: the *global* batch size B (all ranks together), a multiple of world_size.
        batches_per_epoch: batches yielded by one pass (``len(sampler)``); epochs only delimit
            iterations, sampling is with replacement throughout.
        seed: seed of the whole stream (>= 0).
        rank, world_size: this process's share of each global batch.
        stream: an independent stream of the same seed (e.g. 1 for BN re-estimation batches).
    """

    def __init__(
        self,
        task_sizes: Sequence[int],
        batch_size: int,
        *,
        batches_per_epoch: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        stream: int = TRAIN_STREAM,
    ) -> None:
        sizes = np.asarray(task_sizes, dtype=np.int64)
        if sizes.ndim != 1 or len(sizes) == 0 or np.any(sizes <= 0):
            raise ConfigurationError(
                f"Invalid task sizes {list(task_sizes)[:10]}: every task needs at least one sample."
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigurationError(f"Invalid rank {rank} / world size {world_size}.")
        if batch_size < 1 or batch_size % world_size:
            raise ConfigurationError(
                f"Global batch size {batch_size} is not a positive multiple of the {world_size} processes: "
                f"use a batch size divisible by {world_size}."
            )
        if batches_per_epoch < 1:
            raise ConfigurationError(f"Invalid batches_per_epoch {batches_per_epoch}: use >= 1.")
        if seed < 0 or stream < 0:
            raise ConfigurationError(f"Invalid seed {seed} / stream {stream}: use non-negative integers.")
        self.task_sizes = sizes
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.batch_size = int(batch_size)
        self.local_batch_size = self.batch_size // world_size
        self.batches_per_epoch = int(batches_per_epoch)
        self.seed, self.stream = int(seed), int(stream)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        self.start_batch = 0

    @property
    def n_tasks(self) -> int:
        return len(self.task_sizes)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch to iterate next, optionally starting part-way (when resuming)."""
        if epoch < 0 or not 0 <= start_batch <= self.batches_per_epoch:
            raise ConfigurationError(
                f"Invalid epoch {epoch} / start batch {start_batch} (batches per epoch: {self.batches_per_epoch})."
            )
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def set_iteration(self, iteration: int) -> None:
        """Position the sampler so that the next batch yielded is global batch ``iteration``."""
        self.set_epoch(iteration // self.batches_per_epoch, iteration % self.batches_per_epoch)

    def global_batch(self, index: int) -> GlobalBatch:
        """The whole (all-rank) batch number ``index`` of the stream."""
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, self.stream, int(index)])))
        tasks = rng.integers(0, self.n_tasks, size=self.batch_size)
        within = rng.integers(0, self.task_sizes[tasks])
        seeds = rng.integers(0, np.iinfo(np.int64).max, size=self.batch_size, dtype=np.int64)
        return GlobalBatch(tasks=tasks, items=self.offsets[tasks] + within, seeds=seeds)

    def task_counts(self, index: int) -> np.ndarray:
        """Samples of each task in the whole batch ``index``: (n_tasks,) int64."""
        return np.bincount(self.global_batch(index).tasks, minlength=self.n_tasks)

    def local_batch(self, index: int) -> list[tuple[int, int]]:
        """This rank's slice of batch ``index``, as (flat index, seed) pairs."""
        batch = self.global_batch(index)
        part = slice(self.rank * self.local_batch_size, (self.rank + 1) * self.local_batch_size)
        return list(zip(batch.items[part].tolist(), batch.seeds[part].tolist()))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        first = self.epoch * self.batches_per_epoch
        for k in range(self.start_batch, self.batches_per_epoch):
            yield self.local_batch(first + k)

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def state_dict(self) -> dict:
        return {
            "seed": self.seed,
            "stream": self.stream,
            "batch_size": self.batch_size,
            "epoch": self.epoch,
            "start_batch": self.start_batch,
            "task_sizes": self.task_sizes.tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        if (
            state["task_sizes"] != self.task_sizes.tolist()
            or state["batch_size"] != self.batch_size
            or state["seed"] != self.seed
        ):
            raise ConfigurationError(
                "Sampler state is from another pool, batch size or seed: it cannot continue this stream."
            )
        self.set_epoch(int(state["epoch"]), int(state["start_batch"]))
