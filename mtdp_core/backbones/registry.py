"""Backbone registry and factory, in the style of timm.

@register_backbone(n_features=2048, family="resnet")
def resnet50() -> Backbone: ...          # builds the architecture, randomly initialised

create_backbone("resnet50", weights="imagenet")   # -> Backbone with weights loaded
list_backbones("dense*", weights="mtdp")          # -> ["densenet121"]
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from mtdp_core import __version__
from mtdp_core.backbones.weights import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RANDOM,
    WeightsInfo,
    WeightSpec,
    find_weights_file,
    get_weight_spec,
    load_state_file,
    sources_for,
    verify_file,
)
from mtdp_core.errors import (
    IncompatibleWeightsError,
    MissingDependencyError,
    UnknownNameError,
    WeightsNotFoundError,
)

if TYPE_CHECKING:  # torch is imported where a network is built: resolve_weights runs without it
    from mtdp_core.backbones.base import Backbone

logger = logging.getLogger(__name__)

EXPORT_FORMAT = "mtdp_core.backbone"
EXPORT_FORMAT_VERSION = 1


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    builder: Callable[[], Backbone]
    n_features: int
    family: str
    description: str


_REGISTRY: dict[str, BackboneEntry] = {}


def register_backbone(
    name: str | None = None, *, n_features: int, family: str, description: str = ""
) -> Callable[[Callable[[], Backbone]], Callable[[], Backbone]]:
    """Register a builder (no argument, returns a randomly initialised Backbone)."""

    def decorator(builder: Callable[[], Backbone]) -> Callable[[], Backbone]:
        key = name or builder.__name__
        if key in _REGISTRY:
            raise ValueError(f"backbone {key!r} is registered twice")
        doc = description or (builder.__doc__ or "").strip()
        _REGISTRY[key] = BackboneEntry(key, builder, n_features, family, doc)
        return builder

    return decorator


def _ensure_registered() -> None:
    # The architectures register themselves on import (they are torch modules).
    try:
        from mtdp_core.backbones import architectures  # noqa: F401
    except ImportError as exc:
        if exc.name not in ("torch", "torchvision") and "torch" not in str(exc):
            raise
        raise MissingDependencyError(
            f"The backbone architectures need torch, which is not installed here ({exc}): install "
            "torch==2.14.1 and torchvision==0.29.1, or use engine onnxruntime with a pre-exported graph "
            "(`mtdp engine export` where torch is installed; see docs/transfer.md)."
        ) from None


def list_backbones(pattern: str | None = None, *, weights: str | None = None) -> list[str]:
    """Registered names, sorted, optionally filtered by a glob and by an available weight source."""
    _ensure_registered()
    names = sorted(_REGISTRY)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    if weights:
        names = [n for n in names if weights in sources_for(n)]
    return names


def get_backbone_entry(name: str) -> BackboneEntry:
    _ensure_registered()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(
            f"Unknown backbone {name!r}.{hint} Valid names: {', '.join(sorted(_REGISTRY))}."
        ) from None


def _build(entry: BackboneEntry, seed: int | None) -> Backbone:
    import torch

    if seed is None:
        return entry.builder()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return entry.builder()


def _is_path_like(weights: str | os.PathLike) -> bool:
    text = os.fspath(weights)
    return (
        isinstance(weights, os.PathLike)
        or os.sep in text
        or text.endswith((".pth", ".pt", ".bin"))
        or Path(text).exists()
    )


@dataclass(frozen=True)
class ResolvedWeights:
    """Where a backbone's weights come from, checked, before anything is built.

    ``source``: a catalogue source, ``"random"`` or ``"file"``; ``path`` and ``sha256`` (the
    file's full digest, verified against the expected one) for files; ``seed`` for random
    weights; ``spec``: the catalogue entry, if any.
    """

    arch: str
    source: str
    path: Path | None = None
    sha256: str | None = None
    seed: int | None = None
    spec: WeightSpec | None = None

    def digest(self) -> str:
        """What identifies these weights in a cache key: the file's sha256, or the seed."""
        return f"random-seed{self.seed}" if self.source == RANDOM else f"sha256-{self.sha256}"


def resolve_weights(
    name: str,
    weights: str | os.PathLike | None = "imagenet",
    *,
    seed: int = 0,
    sha256: str | None = None,
) -> ResolvedWeights:
    """Locate and checksum a backbone's weights without building it (no torch needed).

    The arguments are ``create_backbone``'s; the same errors are raised for a missing file,
    a checksum mismatch or an unknown source. ``name`` is not checked against the registry
    (that needs torch): callers that build the backbone do.
    """
    if weights is None or weights == RANDOM:
        return ResolvedWeights(name, RANDOM, seed=seed)
    spec = get_weight_spec(name, os.fspath(weights)) if isinstance(weights, str) else None
    if spec is not None:
        path = find_weights_file(spec)
        digest = verify_file(path, sha256 or spec.sha256, size_bytes=spec.size_bytes, url=spec.url)
        if sha256 is None and (spec.sha256 is None or spec.sha256_is_prefix):
            logger.info("%s: no full published sha256 for %s; this file's is %s", name, path.name, digest)
        return ResolvedWeights(name, spec.source, path=path, sha256=digest, spec=spec)
    if _is_path_like(weights):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"Weights file {path} does not exist: give the path of a .pth checkpoint, or a "
                f"weight source for {name}: {', '.join(sources_for(name))}."
            )
        return ResolvedWeights(name, "file", path=path, sha256=verify_file(path, sha256))
    raise UnknownNameError(
        f"Unknown weight source {weights!r} for backbone {name}: use one of "
        f"{', '.join(sources_for(name))}, or the path of a local .pth checkpoint."
    )


def create_backbone(
    name: str,
    weights: str | os.PathLike | None = "imagenet",
    *,
    seed: int = 0,
    sha256: str | None = None,
) -> Backbone:
    """Build a registered backbone and load its weights.

    Args:
        name: a name from ``list_backbones()``.
        weights: a source from the catalogue (``"imagenet"``, ``"imagenet_v2"``, ``"mtdp"``;
            see ``mtdp weights list``), ``"random"`` (or None) for a seeded random
            initialisation, or the path of a local checkpoint (mtdp export, torchvision state
            dict, or original multitask-dipath layout, detected from the keys).
        seed: seed of the random initialisation (``weights="random"``).
        sha256: expected sha256 of the weights file; overrides the catalogue's. A mismatch
            raises ChecksumMismatchError.

    Returns:
        The backbone in eval mode, on the CPU, with ``weights_info`` set.
    """
    entry = get_backbone_entry(name)
    resolved = resolve_weights(name, weights, seed=seed, sha256=sha256)
    if resolved.source == RANDOM:
        model = _build(entry, seed)
        model.weights_info = WeightsInfo(source=RANDOM, seed=seed)
        return model.eval()
    assert resolved.path is not None
    model, info = _load_checkpoint(entry, resolved.path)
    spec = resolved.spec
    if spec is not None:
        model.weights_info = WeightsInfo(
            source=spec.source, file=spec.file_name, sha256=resolved.sha256, mean=spec.mean, std=spec.std
        )
    else:
        model.weights_info = replace(info, sha256=resolved.sha256)
    logger.debug("built %s with %s", name, model.weights_info.key())
    return model.eval()


# --------------------------------------------------------------------------- checkpoints

_DENSENET_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def _unwrap(raw: dict, arch: str, path: Path) -> tuple[dict, WeightsInfo]:
    """Find the state dict inside a checkpoint and the normalisation that goes with it."""
    info = WeightsInfo(source="file", file=path.name, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    if raw.get("format") == EXPORT_FORMAT:
        if raw.get("arch") != arch:
            raise IncompatibleWeightsError(
                f"Checkpoint {path.name} is a {raw.get('arch')} backbone, not {arch}: use "
                f"backbone {raw.get('arch')} with it, or a checkpoint made for {arch}."
            )
        if int(raw.get("format_version", 0)) > EXPORT_FORMAT_VERSION:
            raise IncompatibleWeightsError(
                f"Checkpoint {path.name} has backbone format version {raw.get('format_version')}, newer "
                f"than this mtdp {__version__} reads ({EXPORT_FORMAT_VERSION}): upgrade mtdp."
            )
        mean, std = tuple(raw.get("mean", IMAGENET_MEAN)), tuple(raw.get("std", IMAGENET_STD))
        return dict(raw["state_dict"]), replace(info, mean=mean, std=std, extra=dict(raw.get("metadata", {})))
    import torch

    state = raw
    # Training checkpoints often nest the model's state under one key.
    for key in ("state_dict", "model", "model_state_dict", "backbone"):
        inner = state.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            state = inner
            break
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):  # DataParallel / DDP
        state = {k[len("module.") :]: v for k, v in state.items()}
    if any(k.startswith("heads.") for k in state) and all(k.startswith(("features.", "heads.")) for k in state):
        # Original multitask-dipath MultiHead: drop the task heads, strip one `features.`.
        state = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    return state, info


def _clean_keys(state: dict, backbone: Backbone) -> dict:
    cleaned = {}
    for key, value in state.items():
        if key.startswith(backbone.head_prefixes):
            continue
        # Old torchvision DenseNet checkpoints name `norm.1` what is now `norm1`.
        match = _DENSENET_LEGACY.match(key)
        if match:
            key = match.group(1) + match.group(2)
        cleaned[key] = value
    return cleaned


@cache
def _shapes_of(name: str) -> dict[str, tuple[int, ...]]:
    import torch

    with torch.device("meta"):
        model = get_backbone_entry(name).builder()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _guess_arch(state: dict) -> str | None:
    """The registered architecture whose keys and shapes a state dict matches best."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    best, best_score = None, 0.0
    for name in list_backbones():
        expected = _shapes_of(name)
        same = sum(1 for k, s in expected.items() if shapes.get(k) == s)
        score = same / max(len(expected), len(shapes))
        if score > best_score:
            best, best_score = name, score
    return best if best_score > 0.9 else None


def _load_checkpoint(entry: BackboneEntry, path: Path) -> tuple[Backbone, WeightsInfo]:
    import torch

    state, info = _unwrap(load_state_file(path), entry.name, path)
    with torch.device("meta"):  # no time spent on a random init that is overwritten
        model = entry.builder()
    state = _clean_keys(state, model)
    expected = model.state_dict()
    for key in expected:  # BN counters are absent from old checkpoints
        if (
            key.endswith(".num_batches_tracked")
            and key not in state
            and key[: -len("num_batches_tracked")] + "running_mean" in state
        ):
            state[key] = torch.tensor(0, dtype=torch.long)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        guess = _guess_arch(state)
        hint = f" It looks like a {guess} checkpoint: use backbone {guess}." if guess and guess != entry.name else ""
        details = []
        if missing:
            details.append(f"{len(missing)} missing keys (e.g. {missing[0]!r})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]!r})")
        if wrong:
            k = wrong[0]
            details.append(
                f"{len(wrong)} shape mismatches (e.g. {k!r}: file {tuple(state[k].shape)}, model "
                f"{tuple(expected[k].shape)})"
            )
        raise IncompatibleWeightsError(
            f"Checkpoint {path.name} does not fit backbone {entry.name}:{hint} Found {'; '.join(details)}."
        )
    model.load_state_dict(state, strict=True, assign=True)
    return model, info


def save_backbone(backbone: Backbone, path: str | os.PathLike, *, metadata: dict | None = None) -> Path:
    """Export a backbone so that ``create_backbone(arch, weights=path)`` loads it.

    The file holds only tensors, strings and numbers (``torch.load(weights_only=True)`` reads
    it): arch, normalisation, the state dict and JSON-able ``metadata`` (e.g. training config).
    Written to a temporary file then renamed, so a crash never leaves a half-written file.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "mtdp_version": __version__,
        "arch": backbone.arch,
        "n_features": backbone.n_features,
        "mean": list(backbone.mean),
        "std": list(backbone.std),
        "init_weights": backbone.weights_info.to_dict(),
        "metadata": metadata or {},
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path
