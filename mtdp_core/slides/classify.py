"""Classifying the tiles of a slide with a saved model (probe or fine-tuned network).

``classify_slide(model, slide)``: tiles over the tissue at the resolution the model was
trained at (``SavedModel.mpp``, or the one given), read in DataLoader workers straight into
the model (``transfer.features``: the same loader, batching, channels_last and AMP as every
feature extraction), and per-tile class probabilities out. Memory stays bounded: without a
cache, each batch is scored as it comes and only (n_tiles, n_classes) scores are kept; with
``cache_dir``, the network outputs (features of a probe's backbone, logits of a fine-tuned
network) are streamed to the resumable on-disk feature cache, chunk by chunk, keyed by the
slide file, the tile boxes, the backbone and the preprocessing: an interrupted run resumes
at the last complete chunk, and another probe on the same backbone reuses the features.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from shapely.geometry.base import BaseGeometry

from mtdp_core.backbones.weights import sha256_of
from mtdp_core.errors import ChecksumMismatchError, IncompatibleModelError, MissingResolutionError
from mtdp_core.slides.reader import MPP_AT_1X, Resolution, Slide, open_slide
from mtdp_core.slides.tiles import TileGrid, tile_grid
from mtdp_core.slides.tissue import TissueDetector, TissueMask
from mtdp_core.transfer.cache import DEFAULT_CHUNK_SIZE
from mtdp_core.transfer.persistence import ClassInfo, SavedModel, load_model

if TYPE_CHECKING:  # torch only for fine-tuned networks: probes run without it (engine onnxruntime)
    import torch

logger = logging.getLogger(__name__)


@dataclass
class SlideClassification:
    """Per-tile predictions on one slide.

    Attributes:
        grid: the tiles (level-0 boxes, tissue fractions).
        classes: the model's classes, in score order.
        scores: float32 (n_tiles, n_classes): what the model outputs (probabilities, or SVM
            decision values).
        probabilities: float32 (n_tiles, n_classes): class probabilities (SVM decision values
            through the model's softmax calibration, or a plain softmax without one).
        slide: ``Slide.info()`` of the slide.
        model: what identifies the model (path, kind, backbone, training resolution).
        seconds: time spent, tiling and scoring.
    """

    grid: TileGrid
    classes: list[ClassInfo]
    scores: np.ndarray
    probabilities: np.ndarray
    slide: dict
    model: dict
    seconds: float = 0.0
    stats: dict = field(default_factory=dict)

    @property
    def index(self) -> np.ndarray:
        """(n,) index of each tile's predicted class."""
        return np.asarray(self.probabilities).argmax(axis=1) if len(self.grid) else np.zeros(0, dtype=np.int64)

    @property
    def names(self) -> list[str]:
        return [self.classes[i].name for i in self.index]

    @property
    def confidence(self) -> np.ndarray:
        """(n,) probability of each tile's predicted class."""
        return np.asarray(self.probabilities)[np.arange(len(self.grid)), self.index]

    def counts(self) -> dict[str, int]:
        """Number of tiles predicted in each class."""
        index = self.index
        return {c.name: int((index == i).sum()) for i, c in enumerate(self.classes)}

    @property
    def resolution(self) -> Resolution | None:
        """Where the tiles were read (µm/px or magnification)."""
        read_at = self.model.get("resolution")
        return Resolution(**read_at) if read_at else None

    @property
    def slide_mpp(self) -> float | None:
        """µm per level-0 pixel of the slide: its own, else what its magnification implies (10 µm/px
        at 1x), else None."""
        if self.slide.get("mpp"):
            return float(self.slide["mpp"])
        power = self.slide.get("magnification")
        return MPP_AT_1X / float(power) if power else None

    def pixel_area(self, area: float) -> float:
        """``area`` µm² in level-0 pixels² (as it is when the slide has no resolution)."""
        mpp = self.slide_mpp
        return area / (mpp * mpp) if mpp else area


def class_shares(counts: Mapping[str, int]) -> str:
    """``"MUS 60%, ADI 13%"``: each class's share of the tiles, largest first; classes without
    tiles are left out."""
    total = max(1, sum(counts.values()))
    return ", ".join(f"{name} {n / total:.0%}" for name, n in sorted(counts.items(), key=lambda c: -c[1]) if n)


def classify_slide(
    model: SavedModel | str | os.PathLike,
    slide: Slide | str | os.PathLike,
    *,
    resolution: Resolution | str | float | None = None,
    slide_mpp: float | None = None,
    stride: int | None = None,
    regions: BaseGeometry | Iterable[BaseGeometry] | None = None,
    tissue: TissueDetector | TissueMask | None = TissueDetector(),  # noqa: B008 - frozen dataclass
    min_tissue: float = 0.5,
    min_region: float = 0.5,
    edge_tiles: bool = False,
    weights: str | os.PathLike | None = None,
    features: Any = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str | torch.device = "auto",
    amp: bool = True,
    cache_dir: str | os.PathLike | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool = True,
    engine: str = "auto",
) -> SlideClassification:
    """Classify the tissue tiles of ``slide`` with ``model``.

    Args:
        model: a SavedModel or the path of a model file (``mtdp probe``, ``mtdp finetune``,
            the svm-train / finetune-predict apps).
        slide: an open Slide or a slide file.
        resolution: where tiles are read (µm/px or ``"20x"``); default: the model's training
            resolution. Tiles are the model's input size at that resolution.
        slide_mpp: µm per level-0 pixel of a slide file that lacks it (ignored for an open Slide).
        stride, regions, tissue, min_tissue, min_region, edge_tiles: the tile grid
            (``tiles.tile_grid``).
        weights: the backbone's weights file, for a probe trained on features of a local file.
        features: a FeatureExtractor to use for a probe (checked against the model).
        batch_size, num_workers, device, amp, progress: how the network runs.
        engine: what runs a probe's backbone (``auto``, ``torch``, ``onnxruntime``: see
            ``mtdp_core.inference``); a fine-tuned network runs with torch.
        cache_dir: resumable on-disk cache of the network outputs (None: no cache).
        chunk_size: tiles per cache chunk (the unit of resumption).

    Raises:
        MissingResolutionError: neither the model nor the caller gives a resolution, or the
            slide has none and the resolution is in µm/px.
        NoTissueError, RegionOutsideSlideError: from the tile grid.
        IncompatibleModelError: ``features``/``weights`` are not what the model was trained on.
    """
    start = time.perf_counter()
    if not isinstance(model, SavedModel):
        model = load_model(model)
    own_slide = not isinstance(slide, Slide)
    slide_obj = open_slide(slide, mpp=slide_mpp) if own_slide else slide
    try:
        resolution = model_resolution(model, resolution)
        grid = tile_grid(
            slide_obj,
            tile_size=model.preprocessing.size,
            resolution=resolution,
            stride=stride,
            regions=regions,
            tissue=tissue,
            min_tissue=min_tissue,
            min_region=min_region,
            edge_tiles=edge_tiles,
        )
        info = slide_obj.info()
    finally:
        if own_slide:
            slide_obj.close()
    return classify_tiles(
        model,
        grid,
        info,
        resolution,
        weights=weights,
        features=features,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        amp=amp,
        cache_dir=cache_dir,
        chunk_size=chunk_size,
        progress=progress,
        engine=engine,
        started=start,
    )


def model_resolution(model: SavedModel, resolution: Resolution | str | float | None = None) -> Resolution:
    """``resolution``, else the one the model was trained at.

    Raises:
        MissingResolutionError: neither is known.
    """
    if resolution is not None:
        return Resolution.parse(resolution)
    if model.mpp is None:
        raise MissingResolutionError(
            f"Model {model.path.name if model.path else ''} does not record the resolution it was trained at: "
            "give the resolution to read tiles at (--resolution, e.g. 0.5 µm/px or 20x), and record it in "
            "new models (mtdp probe/finetune --mpp)."
        )
    return Resolution(mpp=model.mpp)


def classify_tiles(
    model: SavedModel,
    grid: TileGrid,
    slide_info: dict,
    resolution: Resolution,
    *,
    started: float | None = None,
    **scoring: Any,
) -> SlideClassification:
    """Score the tiles of ``grid`` (a grid of the model's input size, laid by ``tile_grid`` at
    ``resolution`` on the slide that ``slide_info`` describes) and assemble the result;
    ``scoring``: the options of :func:`score_tiles`. What :func:`classify_slide` does once the
    grid is laid (a caller may fetch the tiles' pixels in between, e.g. from a remote server)."""
    start = time.perf_counter() if started is None else started
    stats: dict = {}
    scores = score_tiles(model, grid, stats=stats, **scoring)
    result = SlideClassification(
        grid=grid,
        classes=list(model.classes),
        scores=scores,
        probabilities=probabilities(model, scores),
        slide=slide_info,
        model=describe_model(model, resolution),
        seconds=time.perf_counter() - start,
        stats=stats,
    )
    logger.info("%s: %d tiles classified in %.1f s: %s", slide_info["path"], len(grid), result.seconds, result.counts())
    return result


def describe_model(model: SavedModel, resolution: Resolution | None = None) -> dict:
    return {
        "path": None if model.path is None else str(model.path),
        "kind": model.kind,
        "backbone": model.describe_backbone(),
        "input_size": model.preprocessing.size,
        "training_mpp": model.mpp,
        "resolution": None if resolution is None else resolution.to_dict(),
    }


def probabilities(model: SavedModel, scores: np.ndarray) -> np.ndarray:
    """Class probabilities from a model's scores: as they are for probabilistic models; SVM
    decision values through the model's softmax calibration (svm-train app), else a softmax."""
    from mtdp_core.transfer.calibration import scaled_softmax

    if model.kind != "svm":
        return np.asarray(scores, dtype=np.float32)
    scale = float((model.extra.get("calibration") or {}).get("scale", 1.0))
    return scaled_softmax(scores, scale).astype(np.float32) if len(scores) else np.asarray(scores, np.float32)


def _logits(model: SavedModel) -> Any:
    """A fine-tuned network dressed as a backbone (its outputs: logits) for the feature pipeline."""
    import torch

    class _Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = model.estimator
            self.arch = f"{model.arch}-finetuned"
            self.n_features = len(model.classes)
            digest = sha256_of(model.path) if model.path is not None else f"memory-{id(model.estimator)}"
            weights = {"source": "model", "sha256": digest}
            self._identity = {"arch": self.arch, "n_features": self.n_features, "weights": weights}

        def identity(self) -> dict:
            return dict(self._identity)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.network(x)

    return _Logits()


def score_tiles(
    model: SavedModel,
    tiles: TileGrid,
    *,
    weights: str | os.PathLike | None = None,
    features: Any = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str | torch.device = "auto",
    amp: bool = True,
    cache_dir: str | os.PathLike | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool = True,
    stats: dict | None = None,
    engine: str = "auto",
) -> np.ndarray:
    """The model's scores of each tile: float32 (n_tiles, n_classes) (``SavedModel.decision_scores``
    for probes, softmax probabilities for fine-tuned networks)."""
    from mtdp_core.runtime import resolve_device
    from mtdp_core.transfer.features import (
        default_batch_size,
        default_num_workers,
        extract_features,
        run_backbone,
    )

    if model.kind == "finetune":
        from mtdp_core.transfer.finetune import softmax  # a fine-tuned network runs with torch

        module: Any = _logits(model)
        prep = model.preprocessing
        post = softmax
    else:
        if features is None:
            features = model.feature_extractor(weights=weights, engine=engine)
        else:
            model.check_backbone(features)
        try:
            module = features.get_backbone()
        except ChecksumMismatchError as exc:
            raise IncompatibleModelError(
                f"{exc} Model {model.path} was trained on features of {model.describe_backbone()}: pass the weights "
                "file it was trained with."
            ) from None
        prep = features.get_preprocessing()
        post = model.decision_scores
    device = resolve_device(device)
    batch_size = batch_size or default_batch_size(device, prep.size)
    num_workers = default_num_workers(device) if num_workers is None else num_workers
    n, k = len(tiles), len(model.classes)
    scores = np.empty((n, k), dtype=np.float32)
    if cache_dir is not None:
        info: dict = {}
        outputs = extract_features(
            module,
            tiles,
            prep,
            batch_size=batch_size,
            num_workers=num_workers,
            device=device,
            amp=amp,
            progress=progress,
            cache_dir=cache_dir,
            chunk_size=chunk_size,
            stats=info,
        )
        for i in range(0, n, chunk_size):
            scores[i : i + chunk_size] = post(np.asarray(outputs[i : i + chunk_size]))
        if stats is not None:
            stats.update(info)
        return scores

    def sink(index: np.ndarray, rows: np.ndarray) -> None:
        scores[index] = post(rows)

    start = time.perf_counter()
    run_backbone(  # the engine's loop: torch, or the backbone's graph in ONNX Runtime
        module,
        prep,
        tiles,
        range(n),
        sink,
        device=device,
        batch_size=batch_size,
        num_workers=num_workers,
        amp=amp,
        progress=progress,
    )
    if stats is not None:
        stats.update(n_cached=0, n_computed=n, seconds=time.perf_counter() - start, cache_path=None)
    return scores
