"""A backbone's exported graph run by ONNX Runtime on the CPU, and the feature pipeline around it.

``OnnxBackbone`` has what the feature pipeline reads of a ``Backbone`` (``arch``,
``n_features``, ``weights_info``, ``mean``/``std``, ``identity()``) and maps a normalised
float32 batch (B, 3, s, s) to features (B, n_features), without torch. ``run_onnx_extraction``
is the pipeline's loop for it: images decoded and resized by threads (``loading.iter_batches``),
normalised with numpy (the same float32 operations as torch), run, handed to the sink.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mtdp_core.backbones.weights import IMAGENET_MEAN, IMAGENET_STD, BackboneIdentity, WeightsInfo
from mtdp_core.data.images import Preprocessing
from mtdp_core.errors import ImageReadError
from mtdp_core.inference.graphs import INPUT_NAME, OUTPUT_NAME
from mtdp_core.inference.loading import iter_batches
from mtdp_core.runtime import cpu_threads

logger = logging.getLogger(__name__)


def weights_info_from_dict(data: dict) -> WeightsInfo:
    return WeightsInfo(
        source=str(data.get("source")),
        file=data.get("file"),
        sha256=data.get("sha256"),
        seed=data.get("seed"),
        mean=tuple(data.get("mean", IMAGENET_MEAN)),
        std=tuple(data.get("std", IMAGENET_STD)),
    )


def session_options(threads: int | None = None, *, spinning: bool = False) -> Any:
    """ONNX Runtime session options: ``threads`` intra-op threads (default ``cpu_threads()``,
    torch's rule), one inter-op thread (a CNN is a chain), every graph optimisation.

    ``spinning``: whether idle intra-op threads busy-wait for the next batch. Off: between
    batches the cores go to the decoding threads and to other processes (a busy processing
    server); measured faster with it off (benchmarks/bench_engines.py, docs/transfer.md).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or cpu_threads())
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.log_severity_level = 3  # errors only: ORT's warnings go to stderr, not to logging
    return options


class OnnxBackbone(BackboneIdentity):
    """An exported backbone run by ONNX Runtime (CPU execution provider).

    Attributes:
        arch, n_features, weights_info: as the Backbone it was exported from.
        image_size: the side of the square input the graph takes.
        path: the graph file.
        engine: ``"onnxruntime"``.
    """

    engine = "onnxruntime"

    def __init__(self, path: str | Path, metadata: dict, weights_info: WeightsInfo, *, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        self.metadata = metadata
        identity = metadata["identity"]
        self.arch: str = identity["arch"]
        self.n_features: int = int(metadata["n_features"])
        self.image_size: int = int(metadata["input"]["size"])
        self.weights_info = weights_info
        self.threads = int(threads or cpu_threads())
        self.session = ort.InferenceSession(str(self.path), session_options(self.threads), ["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Normalised float32 (B, 3, s, s) -> float32 features (B, n_features)."""
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def __repr__(self) -> str:
        return (
            f"OnnxBackbone(arch={self.arch!r}, weights={self.weights_info.key()!r}, size={self.image_size}, "
            f"threads={self.threads}, path={str(self.path)!r})"
        )


def run_onnx_extraction(
    model: OnnxBackbone,
    dataset: Any,
    preprocessing: Preprocessing,
    indices: Sequence[int],
    sink: Callable[[np.ndarray, np.ndarray], None],
    *,
    batch_size: int,
    num_workers: int,
    progress: bool = False,
) -> None:
    """Run ``model`` on ``dataset[indices]`` in order, passing each batch to ``sink(indices, rows)``.

    ``dataset[i]`` is ``(uint8 (s, s, 3), i, error)`` (``features.ImageInputDataset``);
    ``num_workers`` decoding threads run ahead of the model (Pillow and ONNX Runtime release
    the GIL), 0 decodes between batches.
    """
    if not len(indices):
        return
    bar = tqdm(total=len(indices), desc="features", unit="img", disable=not progress, smoothing=0.05)
    with bar:
        for images, index, errors in iter_batches(dataset, indices, batch_size, num_workers):
            failed = [e for e in errors if e]
            if failed:
                more = f" (and {len(failed) - 1} more in this batch)" if len(failed) > 1 else ""
                raise ImageReadError(f"Cannot read image {failed[0]}{more}. Fix or remove the file and run again.")
            rows = model(preprocessing.normalize_array(images))
            sink(index, rows)
            bar.update(len(index))
