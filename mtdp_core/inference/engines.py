"""Which engine runs a frozen backbone, and getting the backbone for it.

``engine="auto" | "torch" | "onnxruntime"`` wherever a frozen backbone runs (feature
extraction, ``mtdp features | probe | predict``, the apps):

- ``torch``: the ``Backbone`` module itself (CPU or CUDA).
- ``onnxruntime``: its ONNX graph (exported once from the same module, cached on disk,
  ``graphs.py``) run by ONNX Runtime on the CPU; works without torch when the graph is there.
- ``auto``: ONNX Runtime on a CPU (1.3-2x faster than torch's eager forward there, see
  docs/transfer.md), torch on CUDA. A backbone given as a torch object (e.g. being
  fine-tuned) runs with torch under ``auto``.

A backbone that cannot be exported (or whose graph does not reproduce torch's features within
``graphs.RTOL``) runs with torch instead, with a warning that gives the reason, once per process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import replace
from functools import cache
from typing import TYPE_CHECKING, Any

from mtdp_core.backbones.registry import ResolvedWeights, resolve_weights
from mtdp_core.backbones.weights import RANDOM, get_weight_spec
from mtdp_core.errors import (
    ConfigurationError,
    ExportError,
    GraphNotFoundError,
    MissingDependencyError,
    WeightsNotFoundError,
)
from mtdp_core.inference.graphs import (
    ensure_graph,
    find_graph,
    find_graph_for_source,
    graph_dirs,
    graph_key,
    graph_name,
    list_graphs,
    read_metadata,
    tensors_digest,
    verify_graph_file,
)
from mtdp_core.runtime import resolve_device, torch_available

if TYPE_CHECKING:
    from mtdp_core.backbones.base import Backbone
    from mtdp_core.inference.onnx_backbone import OnnxBackbone

logger = logging.getLogger(__name__)

ENGINES: tuple[str, ...] = ("auto", "torch", "onnxruntime")
#: The onnxruntime release this mtdp is tested with (pinned in pyproject.toml).
ONNXRUNTIME_VERSION = "1.32.0"


@cache
def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def check_engine(engine: Any) -> str:
    if engine not in ENGINES:
        raise ConfigurationError(f"Invalid engine {engine!r}: use one of {', '.join(ENGINES)}.")
    return engine


def resolve_engine(engine: str = "auto", device: Any = "auto") -> tuple[str, Any]:
    """The engine that runs (``"torch"`` or ``"onnxruntime"``) and the resolved device.

    ``onnxruntime`` runs on the CPU: with ``device="auto"`` it means the CPU, with a CUDA
    device it is an error. ``auto`` is ONNX Runtime on a CPU when it is installed, torch
    otherwise (and on CUDA).
    """
    check_engine(engine)
    if engine == "onnxruntime":
        if not onnxruntime_available():
            raise MissingDependencyError(
                f"Engine onnxruntime asked for but onnxruntime is not installed: pip install "
                f"onnxruntime=={ONNXRUNTIME_VERSION}, or use engine torch."
            )
        device = resolve_device("cpu" if str(device or "auto").strip().lower() == "auto" else device)
        if device.type != "cpu":
            raise ConfigurationError(
                f"Engine onnxruntime runs on the CPU, not on {device}: use engine torch (or auto) on a GPU."
            )
        return "onnxruntime", device
    device = resolve_device(device)
    if engine == "auto" and device.type == "cpu" and onnxruntime_available():
        return "onnxruntime", device
    if not torch_available():
        raise MissingDependencyError(
            "Engine torch needs torch, which is not installed here: use engine onnxruntime (with a "
            "pre-exported graph, see `mtdp engine export`) or install torch==2.14.1 torchvision==0.29.1."
        )
    return "torch", device


# Graphs loaded in this process, keyed by what they were loaded from (a weights file is hashed
# once, not on every call); and the backbones that could not be exported, with the reason.
_LOADED: dict[tuple, OnnxBackbone] = {}
_LOADED_MAX = 2
_FAILED: dict[tuple, str] = {}
# What ``export=False`` did not find (for the life of the process: a checkpoint is not hashed
# again on every call; a graph exported by another process later is seen by the next one).
_ABSENT: set[tuple] = set()


def _remember(key: tuple, model: OnnxBackbone) -> OnnxBackbone:
    _LOADED[key] = model
    while len(_LOADED) > _LOADED_MAX:
        _LOADED.pop(next(iter(_LOADED)))
    return model


def _memo_key(backbone: Any, weights: Any, seed: int, sha256: str | None, image_size: int) -> tuple:
    if not isinstance(backbone, str):  # a torch object: its identity and its tensors' versions
        versions = sum(t._version for t in backbone.state_dict().values())
        return ("object", id(backbone), versions, image_size, tuple(graph_dirs()))
    key: tuple = (backbone, os.fspath(weights) if weights is not None else None, seed, sha256, image_size)
    if key[1] and os.path.isfile(key[1]):  # a checkpoint file may be replaced under the same name
        st = os.stat(key[1])
        key += (st.st_size, st.st_mtime_ns)
    return (*key, tuple(graph_dirs()))


def onnx_backbone(
    backbone: str | Backbone,
    weights: Any = "imagenet",
    *,
    seed: int = 0,
    sha256: str | None = None,
    image_size: int = 224,
    build: Callable[[], Backbone] | None = None,
    threads: int | None = None,
    export: bool = True,
) -> OnnxBackbone:
    """The exported graph of a backbone, loaded in ONNX Runtime (exported first if needed).

    ``backbone``: a registered name (weights resolved and checksummed as by
    ``create_backbone``, without torch) or a Backbone object. ``build()`` returns the torch
    Backbone to export when no graph is on disk (default: ``create_backbone``). ``export``:
    False only looks for a graph on disk.

    Raises:
        ExportError: the backbone cannot be exported, or its graph does not match torch.
        GraphNotFoundError: no graph on disk and no torch to export one (or ``export`` is False).
    """
    from mtdp_core.inference.onnx_backbone import OnnxBackbone, weights_info_from_dict

    memo = _memo_key(backbone, weights, seed, sha256, image_size)
    if memo in _LOADED:
        _LOADED[memo] = _LOADED.pop(memo)  # most recently used last
        return _LOADED[memo]
    if not export and memo in _ABSENT:
        raise GraphNotFoundError(f"No exported graph of {backbone} ({weights}) at {image_size} px.")
    if isinstance(backbone, str):
        resolved = _resolve_or_find_graph(backbone, weights, seed=seed, sha256=sha256, image_size=image_size)
        arch, digest = backbone, resolved.digest()

        def factory() -> Backbone:
            if build is not None:
                return build()
            from mtdp_core.backbones.registry import create_backbone

            return create_backbone(backbone, weights, seed=seed, sha256=sha256)

        describe = f"{arch} ({resolved.source} weights, {digest[:23]}) at {image_size} px"
    else:
        resolved = None
        arch, digest = backbone.arch, tensors_digest(backbone)
        factory = lambda: backbone
        describe = f"{arch} (a {type(backbone).__name__} object, {digest[:24]}) at {image_size} px"
    key = graph_key(arch, digest, image_size)
    failure = _FAILED.get((arch, digest, image_size))
    if failure is not None:
        raise ExportError(failure)
    path = find_graph(key)
    if path is None:
        if not export:
            _ABSENT.add(memo)
            raise GraphNotFoundError(f"No exported graph of {describe} ({graph_name(key)}).")
        if not torch_available():
            raise GraphNotFoundError(
                f"No exported graph of {describe} ({graph_name(key)}) in {', '.join(map(str, graph_dirs()))}, and "
                f"torch is not installed here to export one: run `mtdp engine export {arch} "
                f"{weights if isinstance(weights, str) else '<weights file>'} --size {image_size}` where torch is "
                "installed and put the file in one of those folders (or set MTDP_GRAPH_DIR to its folder)."
            )
        try:
            path = ensure_graph(key, factory)
        except ExportError as exc:
            _FAILED[(arch, digest, image_size)] = str(exc)
            raise
    verify_graph_file(path)  # against its folder's SHA256SUMS, when it has one (an image's graphs)
    metadata = read_metadata(path)
    if metadata.get("key") != key:
        raise ExportError(
            f"The graph file {path} does not hold what its name says (metadata key {metadata.get('key')}, "
            f"expected {key}): delete it (`mtdp engine clear`) and run again."
        )
    info = weights_info_from_dict(metadata["identity"]["weights"])
    if resolved is not None and resolved.source == "file":
        info = replace(info, file=resolved.path.name if resolved.path else info.file)
    if resolved is not None and resolved.source != RANDOM and info.sha256 != resolved.sha256:
        raise ExportError(
            f"The graph file {path} was exported from weights with sha256 {info.sha256}, not {resolved.sha256}: "
            "delete it (`mtdp engine clear`) and run again."
        )
    return _remember(memo, OnnxBackbone(path, metadata, info, threads=threads))


def _resolve_or_find_graph(name: str, weights: Any, *, seed: int, sha256: str | None, image_size: int):
    """``resolve_weights``, or, when a catalogue weights file is absent, the weights of the graph
    exported from it (the torch-free images ship graphs, not weights files)."""
    try:
        return resolve_weights(name, weights, seed=seed, sha256=sha256)
    except WeightsNotFoundError as exc:
        spec = get_weight_spec(name, weights) if isinstance(weights, str) else None
        path = find_graph_for_source(name, spec.source, image_size, sha256 or spec.sha256) if spec else None
        if path is None and spec is not None and not torch_available():
            # Where torch is not (a torch-free image), the weights file would not help: a graph would.
            have = sorted(
                {
                    f"{g['arch']} {g['weights'].get('source')} {g['image_size']} px"
                    for g in list_graphs()
                    if g["current"]
                }
            )
            raise GraphNotFoundError(
                f"No exported graph of {name} ({spec.source} weights) at {image_size} px here, and no torch to make "
                f"one: export it where torch is (`mtdp engine export {name} {spec.source} --size {image_size}`; "
                f"container images: MTDP_GRAPHS, MTDP_GRAPH_SIZES) into MTDP_GRAPH_DIR, or use a network and input "
                f"size that have one: {', '.join(have[:8]) + (' ...' if len(have) > 8 else '') or 'none here'}."
            ) from exc
        if path is None:
            raise
        digest = read_metadata(path)["identity"]["weights"]["sha256"]
        logger.info("%s: %s weights file absent, using the graph exported from it (%s)", name, spec.source, path)
        return ResolvedWeights(name, spec.source, sha256=digest, spec=spec)


def load_frozen_backbone(
    backbone: str | Backbone,
    weights: Any = "imagenet",
    *,
    seed: int = 0,
    sha256: str | None = None,
    image_size: int = 224,
    engine: str = "auto",
    device: Any = "auto",
    build: Callable[[], Backbone] | None = None,
) -> Backbone | OnnxBackbone:
    """The backbone as the engine runs it: a torch ``Backbone`` or an ``OnnxBackbone``.

    ``build()`` returns the torch Backbone (default: ``create_backbone``, or ``backbone``
    itself when it is an object): what torch runs, and what is exported. When the graph cannot
    be made, torch runs it, with a warning (once per process) that says why.

    ``auto`` on a CPU exports a graph only for published weights (the catalogue's: every job
    reuses them, and an export takes 6-20 s); a local checkpoint or random weights run as a
    graph when one is on disk (``mtdp engine export``), with torch otherwise, and a backbone
    object with torch. ``onnxruntime`` exports whatever it is given.
    """
    check_engine(engine)
    if build is None:
        if isinstance(backbone, str):
            from mtdp_core.backbones.registry import create_backbone

            def build() -> Backbone:
                return create_backbone(backbone, weights, seed=seed, sha256=sha256)
        else:

            def build() -> Backbone:
                return backbone

    name, _ = resolve_engine(engine, device)
    if name == "onnxruntime" and not (engine == "auto" and not isinstance(backbone, str)):
        published = isinstance(weights, str) and get_weight_spec(str(backbone), weights) is not None
        export = engine == "onnxruntime" or published or not torch_available()
        try:
            return onnx_backbone(
                backbone, weights, seed=seed, sha256=sha256, image_size=image_size, build=build, export=export
            )
        except GraphNotFoundError as exc:
            if export:
                raise
            logger.debug("engine auto: %s; running it with torch (`mtdp engine export` makes the graph)", exc)
        except ExportError as exc:
            arch = backbone if isinstance(backbone, str) else backbone.arch
            reason = str(exc)
            if reason not in _WARNED:
                _WARNED.add(reason)
                logger.warning("%s runs with torch instead of onnxruntime: %s", arch, reason)
    return build()


_WARNED: set[str] = set()
