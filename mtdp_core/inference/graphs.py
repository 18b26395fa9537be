"""Exported graphs of backbones, on disk: export once (with torch), reuse everywhere (with or without it).

A backbone's ONNX graph is exported from the very module torch runs (``create_backbone``),
checked against it, and kept in a cache folder under a name that is the hash of everything
that makes it::

    GRAPH_DIR/
      densenet121-224px-3f9c0a1d2b4e5f60a7b8.onnx     the graph, with its metadata inside
      densenet121-224px-3f9c0a1d2b4e5f60a7b8.lock     advisory lock of the exporting process

The key (``graph_key``): architecture, weights (the file's sha256, or the seed of random
weights, or a digest of the tensors of a backbone given as an object), input size, the mtdp
version, the ONNX opset and this format's version. Other weights, another size or another
mtdp are another file: a stale graph is never read. The graph's metadata (``mtdp.graph``,
JSON) repeats its key and holds the backbone's identity (architecture, weights source, file,
sha256, normalisation), so that a process without torch knows what it runs.

Writing is safe when several processes export the same graph at once: each exports to a
temporary file in the same folder and renames it into place (atomic on POSIX), under an
advisory lock so that the second waits and then finds the first one's file.

Folders (``graph_dirs``): ``$MTDP_GRAPH_DIR`` (several separated by ``os.pathsep``: a
read-only folder baked into a container image, then a writable one), then
``$XDG_CACHE_HOME/mtdp/graphs`` (``~/.cache/mtdp/graphs``). A graph is looked up in each,
in order; an export goes to the first writable one.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mtdp_core import __version__
from mtdp_core.errors import ExportError

if TYPE_CHECKING:
    from mtdp_core.backbones.base import Backbone

try:  # advisory locks; absent on Windows, where the atomic rename alone protects readers
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

GRAPH_FORMAT = "mtdp_core.graph"
GRAPH_FORMAT_VERSION = 1
#: ONNX opset of the exported graphs (supported by onnxruntime >= 1.14).
OPSET = 18
METADATA_KEY = "mtdp.graph"
INPUT_NAME, OUTPUT_NAME = "images", "features"

#: How close an exported graph's features must be to torch's, on the check run at export time
#: (and in the tests, on real images): max |difference| <= RTOL x max |torch feature| of the
#: batch, and cosine similarity of every row >= MIN_COSINE.
RTOL = 1e-4
MIN_COSINE = 0.99999


def graph_dirs() -> list[Path]:
    """Folders searched for graphs, in order; exports go to the first writable one."""
    dirs: list[Path] = []
    env = os.environ.get("MTDP_GRAPH_DIR")
    if env:
        dirs += [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    dirs.append(Path(cache).expanduser() / "mtdp" / "graphs")
    return list(dict.fromkeys(dirs))


def graph_key(arch: str, weights_digest: str, image_size: int) -> dict:
    """Everything that makes a graph (hashed into its file name).

    ``weights_digest``: ``ResolvedWeights.digest()`` (file sha256, or the seed of random weights:
    their values are fixed by the seed for a given mtdp, which pins torch exactly) or
    ``tensors_digest`` for a backbone given as an object.
    """
    return {
        "format": GRAPH_FORMAT,
        "format_version": GRAPH_FORMAT_VERSION,
        "arch": arch,
        "weights": weights_digest,
        "image_size": int(image_size),
        "mtdp_version": __version__,
        "opset": OPSET,
    }


def graph_name(key: dict) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return f"{key['arch']}-{key['image_size']}px-{digest[:20]}.onnx"


def tensors_digest(backbone: Backbone) -> str:
    """A digest of a backbone object's parameters and buffers (for one given as an object,
    e.g. fine-tuned in memory: its weights_info may not say what its tensors are)."""
    import torch

    h = hashlib.sha256(backbone.arch.encode())
    for name, tensor in sorted(backbone.state_dict().items()):
        t = tensor.detach().cpu().contiguous().view(-1)
        h.update(f"\0{name}\0{t.dtype}\0{t.numel()}\0".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return "tensors-" + h.hexdigest()


@dataclass(frozen=True)
class GraphFile:
    """A graph found on disk, with its metadata."""

    path: Path
    metadata: dict


def read_metadata(path: Path) -> dict:
    """The ``mtdp.graph`` metadata of a graph file (empty when it has none or cannot be read)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return json.loads(session.get_modelmeta().custom_metadata_map.get(METADATA_KEY, "{}"))
    except Exception:  # noqa: BLE001 - a damaged or foreign file is simply not one of ours
        return {}


def find_graph(key: dict) -> Path | None:
    """The graph file of ``key`` in the first folder that has it, or None."""
    name = graph_name(key)
    for folder in graph_dirs():
        path = folder / name
        if path.is_file():
            return path
    return None


def find_graph_for_source(arch: str, source: str, image_size: int, sha256: str | None = None) -> Path | None:
    """The graph of ``arch`` with the catalogue's ``source`` weights, found by its metadata when
    the weights file itself is absent (a torch-free image ships the graphs, which hold the
    weights, not the .pth files). ``sha256``: the catalogue's digest or published prefix, which
    the graph's weights must match. None when there is no such graph.

    Raises ExportError when graphs of several different weights match (remove the stale ones).
    """
    found: dict[str, Path] = {}
    for folder in graph_dirs():
        for path in sorted(folder.glob(f"{arch}-{int(image_size)}px-*.onnx")) if folder.is_dir() else ():
            meta = read_metadata(path)
            key, weights = meta.get("key", {}), meta.get("identity", {}).get("weights", {})
            digest = str(weights.get("sha256") or "")
            current = key == graph_key(arch, f"sha256-{digest}", image_size) and path.name == graph_name(key)
            if current and weights.get("source") == source and digest.startswith((sha256 or "").lower()):
                found.setdefault(digest, path)
    if len(found) > 1:
        raise ExportError(
            f"Several graphs of {arch} with {source} weights at {image_size} px, from different files "
            f"({', '.join(d[:12] for d in found)}): put the weights file in place, or remove the stale graphs."
        )
    return next(iter(found.values()), None)


def _writable_dir() -> Path:
    for folder in graph_dirs():
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK):
            return folder
    fallback = Path(tempfile.gettempdir()) / "mtdp-graphs"
    fallback.mkdir(parents=True, exist_ok=True)
    logger.warning("no writable graph folder among %s: exporting to %s", graph_dirs(), fallback)
    return fallback


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another process that is exporting %s", path.with_suffix(".onnx").name)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_graph(key: dict, backbone_factory: Any, *, folder: Path | None = None) -> Path:
    """The graph of ``key``: found on disk, or exported from ``backbone_factory()`` (torch).

    Raises ExportError when the backbone cannot be exported or its graph does not reproduce
    its features within the tolerance.
    """
    if folder is None:
        found = find_graph(key)
        if found is not None:
            return found
        folder = _writable_dir()
    folder = Path(folder)
    target = folder / graph_name(key)
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with _lock(target.with_suffix(".lock")):
        if target.is_file():  # exported by another process while we waited
            return target
        export_graph(backbone_factory(), key, target)
    return target


def export_graph(backbone: Backbone, key: dict, target: Path) -> None:
    """Export ``backbone`` at ``key["image_size"]`` to ``target`` (atomically), checked against torch."""
    import copy

    import torch

    size = int(key["image_size"])
    model = backbone
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in backbone.parameters()):
        model = copy.deepcopy(backbone).to(device="cpu", dtype=torch.float32)
    model = model.eval()
    start = time.perf_counter()
    metadata = {
        "key": key,
        "identity": backbone.identity(),
        "n_features": int(backbone.n_features),
        "input": {"name": INPUT_NAME, "layout": "NCHW", "dtype": "float32", "size": size},
        "output": {"name": OUTPUT_NAME},
        "exporter": {"torch": torch.__version__, "mtdp": __version__, "opset": OPSET},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    chatter = io.StringIO()  # the exporter prints graphs while it tries its strategies
    try:
        with (
            warnings.catch_warnings(),
            _quiet_exporter_logs(),
            contextlib.redirect_stdout(chatter),
            contextlib.redirect_stderr(chatter),
            torch.no_grad(),
        ):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                opset_version=OPSET,
                external_data=False,
                verbose=False,
            )
    except Exception as exc:
        logger.debug("exporter output:\n%s", chatter.getvalue())
        raise ExportError(f"{backbone.arch} cannot be exported to ONNX: {_root_cause(exc)}") from exc
    program.model.metadata_props[METADATA_KEY] = json.dumps(metadata, sort_keys=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=target.stem + ".", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        program.save(str(tmp))
        check_graph(model, tmp, size)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info(
        "exported %s (%s) at %d px to %s in %.1f s",
        backbone.arch,
        backbone.weights_info.key(),
        size,
        target,
        time.perf_counter() - start,
    )


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _root_cause(exc: BaseException) -> str:
    """The innermost cause of an exporter error, on one line (the outer ones say "step 1/3 failed")."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = _ANSI.sub("", str(exc)).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


@contextlib.contextmanager
def _quiet_exporter_logs() -> Iterator[None]:
    """The exporter's libraries log each optimisation pass at INFO: warnings only, while exporting."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(logging.ERROR if lg.name == "torch" else logging.WARNING, lg.getEffectiveLevel()))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def compare_features(reference: np.ndarray, other: np.ndarray) -> dict:
    """How close two feature arrays (n, d) are: max |diff| relative to the reference's scale,
    and the smallest row cosine similarity."""
    reference = np.asarray(reference, dtype=np.float64)
    other = np.asarray(other, dtype=np.float64)
    scale = float(np.abs(reference).max()) or 1.0
    num = (reference * other).sum(1)
    den = np.linalg.norm(reference, axis=1) * np.linalg.norm(other, axis=1)
    cosine = np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)
    return {"max_rel_diff": float(np.abs(reference - other).max()) / scale, "min_cosine": float(cosine.min())}


def within_tolerance(stats: dict) -> bool:
    return stats["max_rel_diff"] <= RTOL and stats["min_cosine"] >= MIN_COSINE


def check_graph(model: Any, path: Path, size: int) -> dict:
    """Run the graph at ``path`` and ``model`` (torch) on the same inputs; raise ExportError
    unless they agree within the tolerance. Returns the comparison."""
    import onnxruntime as ort
    import torch

    # Image-like inputs: normalised uniform pixels, 3 images (not the export's batch of 2).
    rng = np.random.default_rng(0)
    x = ((rng.random((3, 3, size, size), dtype=np.float32) - 0.45) / 0.225).astype(np.float32)
    with torch.inference_mode():
        reference = model(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    stats = compare_features(reference, got)
    if got.shape != reference.shape or not within_tolerance(stats):
        raise ExportError(
            f"The ONNX graph of {model.arch} does not reproduce its features: max relative difference "
            f"{stats['max_rel_diff']:.2e} (tolerance {RTOL:g}), min cosine {stats['min_cosine']:.6f} "
            f"(needs {MIN_COSINE}); shapes {got.shape} vs {reference.shape}."
        )
    return stats


def list_graphs() -> list[dict]:
    """Every graph in the graph folders: path, size, and its metadata's key and identity."""
    out = []
    for folder in graph_dirs():
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.onnx")):
            meta = read_metadata(path)
            out.append(
                {
                    "path": str(path),
                    "bytes": path.stat().st_size,
                    "arch": meta.get("key", {}).get("arch"),
                    "image_size": meta.get("key", {}).get("image_size"),
                    "weights": meta.get("identity", {}).get("weights", {}),
                    "mtdp_version": meta.get("key", {}).get("mtdp_version"),
                    "current": bool(meta) and path.name == graph_name(meta.get("key", {})) and _is_current(meta),
                }
            )
    return out


def _is_current(meta: dict) -> bool:
    key = meta.get("key", {})
    return key.get("mtdp_version") == __version__ and key.get("format_version") == GRAPH_FORMAT_VERSION


def clear_graphs(*, stale_only: bool = False) -> list[str]:
    """Delete the graphs of the writable graph folders (only those of other versions with
    ``stale_only``). Returns the paths removed."""
    removed = []
    for entry in list_graphs():
        if stale_only and entry["current"]:
            continue
        path = Path(entry["path"])
        try:
            path.unlink()
            path.with_suffix(".lock").unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("cannot remove %s: %s", path, exc)
            continue
        removed.append(str(path))
    return removed
