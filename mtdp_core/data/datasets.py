"""Datasets over several tasks of a pool: ``(uint8 image, label, task index)``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mtdp_core.data.images import Preprocessing, TrainAugmentation
from mtdp_core.data.pools import Task, TaskPool
from mtdp_core.errors import DataError

logger = logging.getLogger(__name__)


class StringArray:
    """An immutable list of strings stored as one UTF-8 buffer plus offsets.

    A Python list of a million path strings costs ~150 MB and, in forked DataLoader workers,
    gets copied page by page as reference counts are touched; two numpy arrays do not.
    """

    def __init__(self, strings: Sequence[str]) -> None:
        encoded = [s.encode("utf-8") for s in strings]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> str:
        start, end = self._offsets[index], self._offsets[index + 1]
        return self._buffer[start:end].tobytes().decode("utf-8")


class MultiTaskDataset(torch.utils.data.Dataset):
    """The samples of several tasks (given splits), concatenated in task order.

    ``dataset[i]`` or ``dataset[(i, seed)]`` -> ``(image uint8 (3, S, S), label, task index)``.
    With a ``TrainAugmentation``, the seed (from ``TaskBalancedSampler``) drives the random
    crop and flips, so a sample's augmentation is reproducible wherever it is loaded; with a
    plain ``Preprocessing`` there is no randomness and the seed is ignored.

    Attributes:
        task_names: tasks in order (the task index is the position here).
        task_sizes: samples per task.
        n_classes: classes per task.
        offsets: flat index of each task's first sample.
    """

    def __init__(
        self, tasks: Sequence[Task], splits: str | Sequence[str], transform: Preprocessing | TrainAugmentation
    ) -> None:
        self.task_names = [t.name for t in tasks]
        self.n_classes = [t.n_classes for t in tasks]
        self.transform = transform
        paths, labels, task_ids = [], [], []
        for index, task in enumerate(tasks):
            samples = task.samples(splits)
            paths.extend(str(p) for p in samples.paths)
            labels.append(samples.labels)
            task_ids.append(np.full(len(samples), index, dtype=np.int64))
        self.task_sizes = [len(x) for x in labels]
        self.offsets = (
            np.concatenate([[0], np.cumsum(self.task_sizes)[:-1]]).astype(np.int64) if tasks else np.zeros(0, np.int64)
        )
        self._paths = StringArray(paths)
        self._labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        self._tasks = np.concatenate(task_ids) if task_ids else np.zeros(0, np.int64)

    @classmethod
    def from_pool(
        cls, pool: TaskPool, splits: str | Sequence[str], transform: Preprocessing | TrainAugmentation
    ) -> MultiTaskDataset:
        return cls(list(pool), splits, transform)

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, index: int) -> Path:
        return Path(self._paths[index])

    def label(self, index: int) -> int:
        return int(self._labels[index])

    def task_index(self, index: int) -> int:
        return int(self._tasks[index])

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    @property
    def task_ids(self) -> np.ndarray:
        return self._tasks

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        path = self._paths[index]
        try:
            if isinstance(self.transform, TrainAugmentation):
                generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
                image = self.transform.load(path, generator)
            else:
                image = self.transform.load(path)
        except FileNotFoundError:
            raise DataError(
                f"Image {path} of task {self.task_names[self._tasks[index]]!r} is missing: restore it or rebuild the "
                "pool."
            ) from None
        except OSError as exc:
            raise DataError(
                f"Cannot read image {path} of task {self.task_names[self._tasks[index]]!r}: {exc}."
            ) from None
        return image, int(self._labels[index]), int(self._tasks[index])
