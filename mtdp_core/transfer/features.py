"""Feature extraction: images -> (n_samples, n_features) arrays, fast and cached.

The pipeline, in the order data flows:

1. Workers open, decode (JPEGs at reduced scale when they are much larger than the input,
   PIL's ``draft``) and resize each image to a ``uint8`` array (size, size, 3), while the
   main process runs the model on the previous batch: DataLoader processes for torch,
   threads for ONNX Runtime (``mtdp_core.inference``; no torch needed there).
2. The engine runs the backbone (``engine``: see ``mtdp_core.inference.engines``). torch: the
   main process moves the ``uint8`` batch to the device (pinned memory and ``non_blocking``
   on CUDA: 4x fewer bytes than float), normalises it there, and runs the backbone in
   ``torch.inference_mode`` with ``channels_last`` tensors (and mixed precision on CUDA
   only, as ``runtime.resolve_precision`` decides). ONNX Runtime:
   the batch is normalised with numpy (the same float32 operations) and run by the
   backbone's exported graph.
3. Rows are written straight into the output: an in-memory array, or a chunk of the
   on-disk cache (``cache.py``) that is flushed and recorded as it completes, so an
   interrupted run resumes where it stopped and memory stays bounded for any input size.

``FeatureExtractor`` wraps this as a scikit-learn transformer (``Pipeline``, ``GridSearchCV``).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from sklearn.base import BaseEstimator, TransformerMixin
from tqdm.auto import tqdm

from mtdp_core.backbones import create_backbone, get_backbone_entry
from mtdp_core.data.images import RESIZE_MODES, LazyImage, Preprocessing
from mtdp_core.errors import ConfigurationError, ImageReadError, MissingDependencyError
from mtdp_core.inference.engines import check_engine, load_frozen_backbone
from mtdp_core.runtime import available_cores, describe_device, resolve_device, resolve_precision, torch_available
from mtdp_core.transfer.cache import DEFAULT_CHUNK_SIZE, FINGERPRINT_MODES, FeatureCache, fingerprint_inputs

if TYPE_CHECKING:  # torch is imported where the torch engine runs: ONNX Runtime runs without it
    import torch

    from mtdp_core.backbones import Backbone
    from mtdp_core.inference.onnx_backbone import OnnxBackbone

logger = logging.getLogger(__name__)

ImageInput = str | os.PathLike | Image.Image | np.ndarray | LazyImage


def _is_torch_backbone(obj: Any) -> bool:
    """Whether ``obj`` is a torch Backbone (without importing torch: if the module defining
    Backbone was never imported, nothing can be one)."""
    base = sys.modules.get("mtdp_core.backbones.base")
    return base is not None and isinstance(obj, base.Backbone)


def engine_of(backbone: Any) -> str:
    """The engine that runs ``backbone``: ``"onnxruntime"`` for an OnnxBackbone, else ``"torch"``."""
    return getattr(backbone, "engine", "torch")


def default_num_workers(device: Any, engine: str = "torch") -> int:
    """Workers that decode images while the model runs (processes for torch, threads for ONNX Runtime).

    On a GPU the model is fast and decoding is the bottleneck: use most cores. On a CPU the
    forward pass already uses every core; on small machines (up to 4 cores) a decoding
    process only preempts it, and decoding in the main process between batches was faster
    (2-core benchmark: 0 workers fastest in 5 of 6 cases, by up to 40%; docs/transfer.md).
    Larger CPU machines get 2 workers (not measured here). ONNX Runtime: the same rule, for its
    decoding threads (0, 1 and 2 were within noise of each other on the loaded 2-core machine;
    docs/transfer.md has the command that re-measures it).
    """
    cores = available_cores()
    if device.type == "cuda":
        return max(1, min(16, cores - 1))
    return 0 if cores <= 4 else 2


def default_batch_size(device: Any, image_size: int = 224, engine: str = "torch") -> int:
    """Images per forward pass: small on CPUs, large on GPUs, scaled with the image area.

    On CPU, 8 images of 224 px were fastest for every backbone measured (densenet121,
    resnet50, efficientnet_lite0; 1.2-2x faster than batches of 32, whose activations no
    longer fit the caches), with torch and with ONNX Runtime; a GPU needs large batches to be busy.
    """
    scale = (224 / max(image_size, 1)) ** 2
    if device.type == "cuda":
        return int(min(1024, max(32, round(128 * scale))))
    return int(min(256, max(4, round(8 * scale))))


class ImageInputDataset:
    """Images given as paths, PIL images or HxWx3 uint8 arrays -> ``(uint8 (s, s, 3), index, error)``.

    A map-style dataset for both engines (numpy arrays: a DataLoader collates them into
    tensors, ``inference.loading`` stacks them). Images stay in HWC order, as decoded: a
    collated batch (B, s, s, 3) permuted to (B, 3, s, s) *is* a channels_last tensor, so no
    transposition is ever copied (on CPU, torch's own permute-and-copy of each image cost
    more than decoding a 224 px JPEG).

    A file that cannot be read does not crash the worker: it yields a blank image and an
    error message, and the consumer raises ImageReadError naming the file (in the main
    process, with a clean message rather than a worker traceback).
    """

    def __init__(self, inputs: Sequence[ImageInput], preprocessing: Preprocessing) -> None:
        self.inputs = inputs
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int, str]:
        item = self.inputs[index]
        prep = self.preprocessing
        try:
            return prep.load_array(item), index, ""
        except Exception as exc:  # noqa: BLE001 - any decoder failure is reported with the file's name
            return np.zeros((prep.size, prep.size, 3), dtype=np.uint8), index, f"{_describe(item)}: {exc}"


def _describe(item: Any) -> str:
    return str(item) if isinstance(item, (str, os.PathLike, LazyImage)) else f"in-memory image {type(item).__name__}"


def precision_of(device: Any, amp: bool) -> str:
    """The numeric precision extraction runs at on ``device`` (part of a cache's identity)."""
    return resolve_precision(amp, device).dtype_name


def make_loader(
    inputs: Sequence[ImageInput],
    preprocessing: Preprocessing,
    indices: Sequence[int],
    *,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    persistent: bool = False,
) -> torch.utils.data.DataLoader:
    """The ordered DataLoader of ``inputs[indices]`` that ``run_extraction`` consumes.

    ``persistent`` keeps its worker processes between passes (a validation set read every
    epoch); a single pass does not need it.
    """
    import torch

    dataset = torch.utils.data.Subset(ImageInputDataset(inputs, preprocessing), list(indices))
    workers = min(num_workers, max(0, -(-len(indices) // batch_size)))
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
        persistent_workers=persistent and workers > 0,
    )


def run_extraction(
    model: torch.nn.Module,
    preprocessing: Preprocessing,
    inputs: Sequence[ImageInput],
    indices: Sequence[int],
    sink: Callable[[np.ndarray, np.ndarray], None],
    *,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    amp: bool = True,
    progress: bool = False,
    loader: torch.utils.data.DataLoader | None = None,
) -> None:
    """Run ``model`` on ``inputs[indices]`` in order, passing each batch to ``sink(indices, rows)``.

    ``model`` must already be on ``device``, in eval mode; ``rows`` are float32 numpy
    arrays (k, n_features). ``loader``: a ``make_loader`` loader to reuse instead of a new one.
    """
    import torch

    if not len(indices):
        return
    if loader is None:
        loader = make_loader(
            inputs, preprocessing, indices, device=device, batch_size=batch_size, num_workers=num_workers
        )
    bar = tqdm(total=len(indices), desc="features", unit="img", disable=not progress, smoothing=0.05)
    with torch.inference_mode(), resolve_precision(amp, device).autocast(), bar:
        for images, index, errors in loader:
            failed = [e for e in errors if e]
            if failed:
                more = f" (and {len(failed) - 1} more in this batch)" if len(failed) > 1 else ""
                raise ImageReadError(f"Cannot read image {failed[0]}{more}. Fix or remove the file and run again.")
            # (B, s, s, 3) -> (B, 3, s, s) view with channels_last strides: no copy.
            x = images.to(device, non_blocking=True).permute(0, 3, 1, 2)
            x = preprocessing.normalize(x).contiguous(memory_format=torch.channels_last)
            rows = model(x).float().cpu().numpy()
            sink(index.numpy(), rows)
            bar.update(len(index))


def prepare_model(backbone: Backbone, device: torch.device, channels_last: bool = True) -> Backbone:
    """The backbone on ``device``, in eval mode, channels_last (1.4-1.5x faster on CPU and GPU)."""
    import torch

    model = backbone.to(device).eval()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def run_backbone(
    backbone: Any,
    preprocessing: Preprocessing,
    inputs: Sequence[ImageInput],
    indices: Sequence[int],
    sink: Callable[[np.ndarray, np.ndarray], None],
    *,
    device: Any,
    batch_size: int,
    num_workers: int,
    amp: bool = True,
    progress: bool = False,
    decoder: str = "pil",
) -> None:
    """Run ``backbone`` on ``inputs[indices]`` in order with its engine's loop, passing each batch
    to ``sink(indices, rows)``: an OnnxBackbone in ONNX Runtime (decoding threads), a torch
    module on ``device`` (DataLoader workers; ``decoder="nvjpeg"``: JPEGs decoded on the GPU)."""
    if not len(indices):
        return
    engine = engine_of(backbone)
    logger.info(
        "running %s on %d images with %s on %s (batch %d, %d workers)",
        getattr(backbone, "arch", type(backbone).__name__),
        len(indices),
        engine,
        describe_device(device) if engine == "torch" else f"CPU ({backbone.threads} threads)",
        batch_size,
        num_workers,
    )
    if engine == "onnxruntime":
        from mtdp_core.inference.onnx_backbone import run_onnx_extraction

        dataset = ImageInputDataset(inputs, preprocessing)
        run_onnx_extraction(
            backbone,
            dataset,
            preprocessing,
            indices,
            sink,
            batch_size=batch_size,
            num_workers=num_workers,
            progress=progress,
        )
        return
    model = prepare_model(backbone, device)
    loop = run_extraction
    if decoder == "nvjpeg":
        from mtdp_core.inference.gpu_decode import run_gpu_decode_extraction as loop
    loop(
        model,
        preprocessing,
        inputs,
        indices,
        sink,
        device=device,
        batch_size=batch_size,
        num_workers=num_workers,
        amp=amp,
        progress=progress,
    )


def extract_features(
    backbone: Backbone | OnnxBackbone,
    inputs: Sequence[ImageInput],
    preprocessing: Preprocessing,
    *,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str | torch.device = "auto",
    amp: bool = True,
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    fingerprint: str = "stat",
    stats: dict | None = None,
    gpu_decode: bool = False,
) -> np.ndarray:
    """Features of images, in input order: float32 (len(inputs), backbone.n_features).

    Args:
        backbone: the model: a torch Backbone (moved to ``device``, switched to eval mode), or
            an OnnxBackbone (``mtdp_core.inference``: ONNX Runtime, on the CPU).
        inputs: image file paths, PIL images or (H, W, 3) uint8 arrays.
        preprocessing: how each image becomes a (3, size, size) input.
        batch_size: images per forward pass; None picks ``default_batch_size(device, size)``.
        num_workers: decoding processes (torch) or threads (ONNX Runtime); None picks
            ``default_num_workers(device, engine)``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (the CPU for an OnnxBackbone).
        amp: mixed precision on CUDA (``runtime.resolve_precision``; ignored on CPU).
        cache_dir: if given, features are streamed into a resumable on-disk cache entry there
            and the result is a read-only memory map of it; a complete entry is reused
            without running the model.
        chunk_size: rows per cache chunk (the unit of resumption).
        fingerprint: ``"stat"`` or ``"content"``: how input files are identified in the cache key.
        stats: if a dict, receives ``n_cached``, ``n_computed``, ``seconds``, ``cache_path``.
        gpu_decode: torch on CUDA: decode the JPEG files on the GPU (nvJPEG, batched; other
            images on the CPU workers), where torchvision can (``inference.gpu_decode``);
            ignored elsewhere.

    Returns:
        float32 array (n_samples, n_features); a ``np.memmap`` when ``cache_dir`` is given.
    """
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigurationError(f"Invalid batch size {batch_size!r}: use a positive integer, or None (automatic).")
    if fingerprint not in FINGERPRINT_MODES:
        raise ConfigurationError(
            f"Invalid fingerprint mode {fingerprint!r}: use one of {', '.join(FINGERPRINT_MODES)}."
        )
    engine = engine_of(backbone)
    device = resolve_device("cpu" if engine == "onnxruntime" else device)
    if batch_size is None:
        batch_size = default_batch_size(device, preprocessing.size, engine)
    if num_workers is None:
        num_workers = default_num_workers(device, engine)
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ConfigurationError(
            f"Invalid number of workers {num_workers!r}: use 0 (decode in the main process) or more."
        )
    n, d = len(inputs), backbone.n_features
    start = time.perf_counter()
    info = {"n_cached": 0, "n_computed": n, "cache_path": None}
    decoder = "pil"
    if gpu_decode and engine == "torch":
        from mtdp_core.inference.gpu_decode import gpu_jpeg_available

        if gpu_jpeg_available(str(device)):
            decoder = "nvjpeg"
        else:
            logger.info("gpu_decode: JPEG decoding on %s is not available, decoding on the CPU", device)

    def run(indices: Sequence[int], sink: Callable[[np.ndarray, np.ndarray], None]) -> None:
        run_backbone(
            backbone,
            preprocessing,
            inputs,
            indices,
            sink,
            device=device,
            batch_size=batch_size,
            num_workers=num_workers,
            amp=amp,
            progress=progress,
            decoder=decoder,
        )

    if cache_dir is None:
        out = np.empty((n, d), dtype=np.float32)

        def sink(index: np.ndarray, rows: np.ndarray) -> None:
            out[index] = rows

        run(range(n), sink)
        result = out
    else:
        entry = FeatureCache(cache_dir, chunk_size=chunk_size).entry(
            backbone_identity=backbone.identity(),
            preprocessing=preprocessing.to_dict(),
            inputs=fingerprint_inputs(inputs, fingerprint),
            n_features=d,
            precision=precision_of(device, amp),
            engine=engine,
            decoder=decoder,
        )
        missing = entry.missing_chunks()
        todo = [i for c in missing for i in range(*entry.chunk_range(c))]
        info.update(n_cached=n - len(todo), n_computed=len(todo), cache_path=str(entry.path))
        if todo:
            if len(todo) < n:
                logger.info("feature cache %s: %d of %d images done, resuming", entry.path, n - len(todo), n)
            with entry.writer() as writer:
                # Another process may have filled chunks while we waited for the lock.
                todo = [i for c in entry.missing_chunks() for i in range(*entry.chunk_range(c))]
                run(todo, writer.write)
        else:
            logger.info("feature cache %s: all %d images found, nothing to compute", entry.path, n)
        result = entry.load(mmap=True)
    info["seconds"] = time.perf_counter() - start
    if info["n_computed"]:
        logger.info(
            "%d images in %.1f s (%.1f images/s)",
            info["n_computed"],
            info["seconds"],
            info["n_computed"] / max(info["seconds"], 1e-9),
        )
    if stats is not None:
        stats.update(info)
    return result


def as_input_list(X: Any) -> Sequence[ImageInput]:
    """Accept what a user (or scikit-learn's indexing) passes as images.

    A list/tuple of paths, PIL images or arrays; a 1-D array of paths (object or str dtype);
    a pathlib.Path of one image; a 4-D uint8 array (n, H, W, 3) of images; a sequence of lazy
    images (``LazyImage``, e.g. a slide's ``TileGrid``).
    """
    if isinstance(X, (str, os.PathLike, Image.Image)):
        return [X]
    if isinstance(X, np.ndarray):
        if X.ndim == 1 and (X.dtype.kind in "OUS"):
            return [x.decode() if isinstance(x, bytes) else x for x in X.tolist()]
        if X.ndim == 4 and X.dtype == np.uint8 and X.shape[-1] in (1, 3):
            return [x[..., 0] if x.shape[-1] == 1 else x for x in X]
        raise ConfigurationError(
            f"FeatureExtractor got an array of shape {X.shape} and dtype {X.dtype}: give image paths "
            "(a list or 1-D array of str), PIL images, or uint8 images (n, H, W, 3)."
        )
    if hasattr(X, "tolist") and not isinstance(X, (list, tuple)):  # pandas Series and the like
        X = X.tolist()
    if not isinstance(X, Sequence):
        X = list(X)
    for item in X[:1]:
        if not isinstance(item, (str, os.PathLike, Image.Image, np.ndarray, LazyImage)):
            raise ConfigurationError(
                f"FeatureExtractor got inputs of type {type(item).__name__}: give image paths, PIL images, "
                "uint8 (H, W, 3) arrays or slide tiles."
            )
    return X


class FeatureExtractor(TransformerMixin, BaseEstimator):
    """A pre-trained backbone as a scikit-learn transformer: images -> features.

    ``fit`` learns nothing (the backbone is pre-trained); ``transform`` maps images (paths,
    PIL images or uint8 arrays) to float32 features (n_samples, n_features). The backbone is
    built on first use and kept (``backbone_``); it is not pickled, so the transformer
    clones and pickles as scikit-learn expects.

    >>> pipe = make_pipeline(FeatureExtractor("resnet50", "mtdp"), Probe("svm"))  # doctest: +SKIP
    >>> pipe.fit(train_paths, train_labels, probe__groups=slide_ids)              # doctest: +SKIP

    Parameters:
        backbone: a registered name (``mtdp backbones``) or a Backbone instance.
        weights: weight source (``"imagenet"``, ``"mtdp"``, ``"random"``) or a checkpoint path;
            ignored when ``backbone`` is an instance.
        seed: seed of random weights.
        sha256: expected sha256 of the weights file.
        image_size: side of the square model input, in pixels.
        resize: ``"center_crop"`` or ``"stretch"``.
        batch_size, num_workers, device, amp: see ``extract_features``.
        engine: ``"auto"`` (ONNX Runtime on a CPU, torch on CUDA), ``"torch"`` or
            ``"onnxruntime"`` (the backbone's exported graph, cached on disk; runs without
            torch when the graph is there). See ``mtdp_core.inference`` and docs/transfer.md.
        cache_dir: on-disk feature cache folder (resumable, bounded memory); None keeps
            features in memory only.
        fingerprint: ``"stat"`` (path, size, mtime) or ``"content"`` (file bytes) cache keys.
        chunk_size: rows per cache chunk.
        progress: show a progress bar.
        gpu_decode: torch on CUDA: decode JPEG files on the GPU (nvJPEG); off by default
            (see ``extract_features``).
    """

    def __init__(
        self,
        backbone: str | Backbone = "densenet121",
        weights: str | os.PathLike | None = "imagenet",
        *,
        seed: int = 0,
        sha256: str | None = None,
        image_size: int = 224,
        resize: str = "center_crop",
        batch_size: int | None = None,
        num_workers: int | None = None,
        device: str = "auto",
        amp: bool = True,
        cache_dir: str | os.PathLike | None = None,
        fingerprint: str = "stat",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        progress: bool = False,
        engine: str = "auto",
        gpu_decode: bool = False,
    ) -> None:
        self.backbone = backbone
        self.weights = weights
        self.seed = seed
        self.sha256 = sha256
        self.image_size = image_size
        self.resize = resize
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.device = device
        self.amp = amp
        self.cache_dir = cache_dir
        self.fingerprint = fingerprint
        self.chunk_size = chunk_size
        self.progress = progress
        self.engine = engine
        self.gpu_decode = gpu_decode

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False  # a pre-trained model: transform works without fit
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True  # paths
        tags.transformer_tags.preserves_dtype = []  # always float32 features, whatever the input
        return tags

    def _validate_params(self) -> None:
        if not (isinstance(self.backbone, str) or _is_torch_backbone(self.backbone)):
            raise ConfigurationError(
                f"Invalid backbone {self.backbone!r}: give a registered name (see `mtdp backbones`) or a Backbone."
            )
        if isinstance(self.backbone, str) and torch_available():
            # Raises UnknownNameError with the valid names. Without torch the registry cannot be
            # read: the name is checked against the exported graphs instead (GraphNotFoundError).
            get_backbone_entry(self.backbone)
        check_engine(self.engine)
        if not isinstance(self.image_size, int) or self.image_size < 8:
            raise ConfigurationError(
                f"Invalid image_size {self.image_size!r}: use an integer of at least 8 (e.g. 224)."
            )
        if self.resize not in RESIZE_MODES:
            raise ConfigurationError(f"Invalid resize {self.resize!r}: use one of {', '.join(RESIZE_MODES)}.")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ConfigurationError(
                f"Invalid batch_size {self.batch_size!r}: use a positive integer, or None (automatic)."
            )
        if self.num_workers is not None and (not isinstance(self.num_workers, int) or self.num_workers < 0):
            raise ConfigurationError(f"Invalid num_workers {self.num_workers!r}: use None (automatic), 0 or more.")
        if self.fingerprint not in FINGERPRINT_MODES:
            raise ConfigurationError(
                f"Invalid fingerprint {self.fingerprint!r}: use one of {', '.join(FINGERPRINT_MODES)}."
            )

    def get_backbone(self) -> Backbone | OnnxBackbone:
        """The backbone as the engine runs it: the torch Backbone (the instance given, or one
        built from the parameters and reused), or its exported graph (an OnnxBackbone)."""
        self._validate_params()
        if _is_torch_backbone(self.backbone):
            backbone = self.backbone

            def build() -> Backbone:
                return backbone
        else:

            def build() -> Backbone:
                return _cached_backbone(self.backbone, self.weights, self.seed, self.sha256)

        return load_frozen_backbone(
            self.backbone,
            self.weights,
            seed=self.seed,
            sha256=self.sha256,
            image_size=self.image_size,
            engine=self.engine,
            device=self.device,
            build=build,
        )

    def get_preprocessing(self) -> Preprocessing:
        """How images become inputs: size, resize mode, the backbone's normalisation."""
        return Preprocessing.for_backbone(self.get_backbone(), size=self.image_size, resize=self.resize)

    @property
    def n_features(self) -> int:
        """Length of a feature row (known without building the backbone, where torch is installed)."""
        if _is_torch_backbone(self.backbone):
            return self.backbone.n_features
        try:
            return get_backbone_entry(self.backbone).n_features
        except MissingDependencyError:
            return self.get_backbone().n_features

    def identity(self) -> dict:
        """What makes these features what they are: backbone identity + preprocessing (for saved models)."""
        backbone = self.get_backbone()
        return {**backbone.identity(), "preprocessing": self.get_preprocessing().to_dict()}

    # ----------------------------------------------------------------- estimator API

    def fit(self, X: Any = None, y: Any = None) -> FeatureExtractor:
        """Check the parameters; nothing is learned. Returns self."""
        self._validate_params()
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Features of the images in ``X``: float32 (n_samples, n_features).

        ``X`` is a list (or 1-D array) of image paths, PIL images or (H, W, 3) uint8 arrays,
        or a (n, H, W, 3) uint8 array. With ``cache_dir``, the result is a read-only memory map.
        """
        return self.extract(X)[0]

    def extract(self, X: Any) -> tuple[np.ndarray, dict]:
        """``transform`` plus what happened: ``{"n_cached", "n_computed", "seconds", "cache_path"}``."""
        inputs = as_input_list(X)
        backbone = self.get_backbone()
        stats: dict = {}
        features = extract_features(
            backbone,
            inputs,
            self.get_preprocessing(),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            device=self.device,
            amp=self.amp,
            progress=self.progress,
            cache_dir=self.cache_dir,
            chunk_size=self.chunk_size,
            fingerprint=self.fingerprint,
            stats=stats,
            gpu_decode=self.gpu_decode,
        )
        return features, stats

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        arch = self.backbone.arch if _is_torch_backbone(self.backbone) else self.backbone
        return np.array([f"{arch}_{i}" for i in range(self.n_features)], dtype=object)


# Backbones built by FeatureExtractors, keyed by what they were built from: building one
# reads (and hashes) its weights file, which should happen once per process, not per
# transform. Kept outside the estimators so that transform() leaves them unchanged, as
# scikit-learn expects. Small: a process rarely alternates between more than two backbones.
_BACKBONES: dict[tuple, Backbone] = {}
_BACKBONES_MAX = 2


def _cached_backbone(name: str, weights: Any, seed: int, sha256: str | None) -> Backbone:
    """``create_backbone(name, weights, seed=, sha256=)``, built once per process (LRU of 2)."""
    key: tuple = (name, os.fspath(weights) if weights is not None else None, seed, sha256)
    if key[1] and os.path.isfile(key[1]):  # a checkpoint file may be replaced under the same name
        st = os.stat(key[1])
        key += (st.st_size, st.st_mtime_ns)
    if key in _BACKBONES:
        _BACKBONES[key] = _BACKBONES.pop(key)  # most recently used last
        return _BACKBONES[key]
    backbone = create_backbone(name, weights=weights, seed=seed, sha256=sha256)
    _BACKBONES[key] = backbone
    while len(_BACKBONES) > _BACKBONES_MAX:
        _BACKBONES.pop(next(iter(_BACKBONES)))
    return backbone
