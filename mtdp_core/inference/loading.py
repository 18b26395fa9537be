"""Batches of decoded images without torch: threads decode ahead of the model.

Decoding (Pillow) and the forward pass (ONNX Runtime) both release the GIL, so threads
overlap them without processes: nothing is pickled, forked or copied between processes, and
in-memory images are shared as they are.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np


def _decode(dataset: Any, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    items = [dataset[i] for i in indices]
    return (
        np.stack([image for image, _, _ in items]),
        np.fromiter((i for _, i, _ in items), dtype=np.int64, count=len(items)),
        [error for _, _, error in items],
    )


def iter_batches(
    dataset: Any, indices: Sequence[int], batch_size: int, num_workers: int = 0, prefetch: int = 2
) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
    """``(uint8 (B, s, s, 3), indices (B,), errors)`` for consecutive ``batch_size`` slices of
    ``indices``, in order. ``dataset[i]`` returns ``(uint8 (s, s, 3), i, error)``.

    ``num_workers`` threads decode up to ``prefetch`` batches each ahead of the consumer; 0
    decodes each batch when it is asked for.
    """
    indices = list(indices)
    chunks = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    if num_workers <= 0:
        for chunk in chunks:
            yield _decode(dataset, chunk)
        return
    with ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="mtdp-decode") as pool:
        pending: deque[Future] = deque()
        ahead = max(1, num_workers * prefetch)
        next_chunk = 0
        try:
            while next_chunk < len(chunks) or pending:
                while next_chunk < len(chunks) and len(pending) < ahead:
                    pending.append(pool.submit(_decode, dataset, chunks[next_chunk]))
                    next_chunk += 1
                yield pending.popleft().result()
        finally:
            for future in pending:  # the consumer stopped early (an error): drop the rest
                future.cancel()
