"""On-disk feature cache: chunked, resumable, keyed by everything that makes the features.

One cache folder holds one sub-folder per *entry*; an entry is the features of one list of
inputs by one backbone with one preprocessing::

    CACHE_DIR/
      resnet50-3f9c0a1d2b4e5f60a7b8/
        index.json        identity (backbone, weights sha256, preprocessing, inputs
                          fingerprint, precision), shape, chunk size, chunks completed
        features.npy      float32 (n_samples, n_features), preallocated, written in place
        lock              advisory lock held by the process that writes the entry

The entry's name is a hash of its identity, so features made with other weights, another
image size or different files are never reused: they simply live in another entry.
Inputs are fingerprinted by path, size and modification time (``"stat"``, cheap) or by
content (``"content"``, reads every file).

``features.npy`` is allocated at its final size and filled chunk by chunk (``chunk_size``
rows); after each chunk is flushed to disk, the index records it as complete, atomically.
An interrupted run therefore keeps every completed chunk, and the next run computes only
the others. Reading back maps the file (``np.load(mmap_mode="r")``): memory stays bounded
whatever the number of images (1M x 1024 float32 is a 4 GB file, not 4 GB of RAM).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mtdp_core import __version__
from mtdp_core.backbones.weights import sha256_of
from mtdp_core.errors import ConfigurationError

try:  # advisory locks; absent on Windows, where concurrent writers are not protected
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

CACHE_FORMAT = "mtdp_core.feature_cache"
CACHE_FORMAT_VERSION = 1
DEFAULT_CHUNK_SIZE = 4096
FingerprintMode = Literal["stat", "content"]
FINGERPRINT_MODES: tuple[str, ...] = ("stat", "content")


def fingerprint_inputs(inputs: Sequence[Any], mode: FingerprintMode = "stat") -> dict:
    """A digest of a list of inputs, in order, that changes when any of them changes.

    Paths are fingerprinted by absolute path + size + mtime (``"stat"``) or by their bytes
    (``"content"``); in-memory images (PIL images, arrays) always by their pixels; lazy images
    (slide tiles) by their own ``fingerprint()`` (file identity + region).

    Returns:
        ``{"count": n, "mode": mode, "sha256": hex digest}``.
    """
    if mode not in FINGERPRINT_MODES:
        raise ConfigurationError(f"Invalid fingerprint mode {mode!r}: use one of {', '.join(FINGERPRINT_MODES)}.")
    digest = hashlib.sha256()
    for item in inputs:
        if isinstance(item, (str, os.PathLike)):
            path = Path(item).resolve()
            try:
                st = path.stat()
            except OSError as exc:
                raise ConfigurationError(
                    f"Input image {item} cannot be read ({exc.strerror}): check the path."
                ) from None
            if mode == "stat":
                digest.update(f"p\0{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            else:
                digest.update(f"c\0{sha256_of(path)}\n".encode())
        elif callable(getattr(item, "fingerprint", None)):  # a LazyImage (mtdp_core.data.images)
            digest.update(b"l\0" + item.fingerprint().encode() + b"\n")
        else:
            digest.update(b"a\0" + _pixels_digest(item).encode() + b"\n")
    return {"count": len(inputs), "mode": mode, "sha256": digest.hexdigest()}


def _pixels_digest(item: Any) -> str:
    from PIL import Image

    if isinstance(item, Image.Image):
        head, data = f"{item.mode}{item.size}", item.tobytes()
    else:
        array = np.ascontiguousarray(np.asarray(item))
        head, data = f"{array.dtype}{array.shape}", array.tobytes()
    return hashlib.sha256(head.encode() + b"\0" + data).hexdigest()


def entry_key(identity: dict) -> str:
    """The hash of a cache identity (canonical JSON)."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class CacheEntry:
    """The features of one input list by one backbone + preprocessing, on disk.

    Use ``FeatureCache.entry(...)`` to get one; ``missing_chunks()`` says what is left to
    compute, ``writer()`` fills it, ``load()`` maps it read-only.
    """

    path: Path
    identity: dict
    n_samples: int
    n_features: int
    chunk_size: int

    @property
    def index_path(self) -> Path:
        return self.path / "index.json"

    @property
    def data_path(self) -> Path:
        return self.path / "features.npy"

    @property
    def n_chunks(self) -> int:
        return max(1, -(-self.n_samples // self.chunk_size)) if self.n_samples else 0

    def chunk_range(self, chunk: int) -> tuple[int, int]:
        start = chunk * self.chunk_size
        return start, min(start + self.chunk_size, self.n_samples)

    # ----------------------------------------------------------------- index

    def _read_index(self) -> dict | None:
        try:
            index = json.loads(self.index_path.read_text())
        except (OSError, ValueError):
            return None
        same = (
            index.get("format") == CACHE_FORMAT
            and index.get("format_version") == CACHE_FORMAT_VERSION
            and index.get("identity") == self.identity
            and index.get("shape") == [self.n_samples, self.n_features]
            and index.get("chunk_size") == self.chunk_size
        )
        return index if same else None

    def _write_index(self, done: Iterable[int]) -> None:
        index = {
            "format": CACHE_FORMAT,
            "format_version": CACHE_FORMAT_VERSION,
            "mtdp_version": __version__,
            "identity": self.identity,
            "shape": [self.n_samples, self.n_features],
            "dtype": "float32",
            "chunk_size": self.chunk_size,
            "done": sorted({int(c) for c in done}),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        tmp = self.index_path.with_name("index.json.tmp")
        tmp.write_text(json.dumps(index, indent=1))
        os.replace(tmp, self.index_path)  # atomic: a crash leaves the old index or the new one

    def done_chunks(self) -> set[int]:
        index = self._read_index()
        if index is None or not self.data_path.is_file():
            return set()
        return {c for c in index["done"] if 0 <= c < self.n_chunks}

    def missing_chunks(self) -> list[int]:
        done = self.done_chunks()
        return [c for c in range(self.n_chunks) if c not in done]

    @property
    def complete(self) -> bool:
        return not self.missing_chunks()

    # ----------------------------------------------------------------- I/O

    @contextlib.contextmanager
    def writer(self) -> Iterator[ChunkWriter]:
        """Open the entry for writing, under an exclusive lock, creating it if needed.

        Yields a ChunkWriter: call ``write(indices, rows)``; chunks are flushed and recorded
        as they complete.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(self.path / "lock"):
            index = self._read_index()
            valid = index is not None and self.data_path.is_file()
            if valid:
                mm = np.load(self.data_path, mmap_mode="r+")
                valid = mm.shape == (self.n_samples, self.n_features) and mm.dtype == np.float32
            if not valid:
                # New, stale or damaged entry: start over.
                mm = np.lib.format.open_memmap(
                    self.data_path, mode="w+", dtype=np.float32, shape=(self.n_samples, self.n_features)
                )
                self._write_index([])
                index = self._read_index()
            writer = ChunkWriter(self, mm, set(index["done"]))
            try:
                yield writer
            finally:
                writer.close()

    def load(self, *, mmap: bool = True) -> np.ndarray:
        """The features, float32 (n_samples, n_features): mapped read-only, or read into memory."""
        if not self.complete:
            raise ConfigurationError(
                f"Feature cache entry {self.path} is incomplete: run the extraction again to finish it."
            )
        if self.n_samples == 0:
            return np.empty((0, self.n_features), dtype=np.float32)
        return np.load(self.data_path, mmap_mode="r" if mmap else None)


class ChunkWriter:
    """Writes rows into a cache entry and records each chunk once all its rows are in."""

    def __init__(self, entry: CacheEntry, mm: np.memmap, done: set[int]) -> None:
        self.entry = entry
        self.mm = mm
        self.done = done
        self._left = {
            c: entry.chunk_range(c)[1] - entry.chunk_range(c)[0] for c in range(entry.n_chunks) if c not in done
        }

    def write(self, indices: np.ndarray, rows: np.ndarray) -> None:
        """Store ``rows`` (k, n_features) at row positions ``indices`` (k,)."""
        indices = np.asarray(indices, dtype=np.int64)
        self.mm[indices] = rows
        finished = []
        chunks, counts = np.unique(indices // self.entry.chunk_size, return_counts=True)
        for chunk, count in zip(chunks.tolist(), counts.tolist()):
            if chunk in self._left:
                self._left[chunk] -= count
                if self._left[chunk] <= 0:
                    finished.append(chunk)
        if finished:
            self.mm.flush()  # data on disk before the index says it is there
            for chunk in finished:
                del self._left[chunk]
                self.done.add(chunk)
            self.entry._write_index(self.done)

    def close(self) -> None:
        self.mm.flush()
        del self.mm


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another process that is writing %s", path.parent)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class FeatureCache:
    """A folder of feature cache entries (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigurationError(f"Invalid cache chunk size {chunk_size!r}: use a positive integer (e.g. 4096).")
        self.root = Path(root).expanduser()
        self.chunk_size = chunk_size

    def entry(
        self,
        *,
        backbone_identity: dict,
        preprocessing: dict,
        inputs: dict,
        n_features: int,
        precision: str = "float32",
        engine: str = "torch",
        decoder: str = "pil",
    ) -> CacheEntry:
        """The entry for these features (created on first write).

        Args:
            backbone_identity: ``Backbone.identity()`` (arch, weights source and sha256).
            preprocessing: ``Preprocessing.to_dict()``.
            inputs: ``fingerprint_inputs(...)``.
            n_features: width of a feature row.
            precision: numeric precision of the forward pass (``"float32"``, or the
                autocast dtype on CUDA): features at another precision are another entry.
            engine: what ran the forward pass (``"torch"``, ``"onnxruntime"``): the engines
                agree within a tolerance (docs/transfer.md), not to the bit, so each has its own entries.
            decoder: what decoded the images (``"pil"``, or ``"nvjpeg"`` on the GPU).
        """
        identity = {
            "backbone": backbone_identity,
            "preprocessing": preprocessing,
            "inputs": inputs,
            "precision": precision,
            "engine": engine,
            "decoder": decoder,
        }
        identity = json.loads(json.dumps(identity))  # as the index will hold it (tuples -> lists)
        key = entry_key(identity)
        name = f"{backbone_identity.get('arch', 'backbone')}-{key[:20]}"
        return CacheEntry(self.root / name, identity, int(inputs["count"]), int(n_features), self.chunk_size)

    def entries(self) -> list[dict]:
        """Summary of each entry present: path, arch, shape, complete, size in bytes."""
        out = []
        if not self.root.is_dir():
            return out
        for index_path in sorted(self.root.glob("*/index.json")):
            try:
                index = json.loads(index_path.read_text())
            except (OSError, ValueError):
                continue
            data = index_path.parent / "features.npy"
            n_samples, _ = index.get("shape", [0, 0])
            chunk_size = max(1, int(index.get("chunk_size", 1)))
            n_chunks = -(-n_samples // chunk_size)
            out.append(
                {
                    "path": str(index_path.parent),
                    "arch": index.get("identity", {}).get("backbone", {}).get("arch"),
                    "shape": index.get("shape"),
                    "complete": len(index.get("done", [])) >= n_chunks,
                    "bytes": data.stat().st_size if data.exists() else 0,
                    "updated": index.get("updated"),
                }
            )
        return out

    def clear(self) -> int:
        """Delete every entry; returns how many were removed."""
        removed = 0
        for entry in self.entries():
            shutil.rmtree(entry["path"], ignore_errors=True)
            removed += 1
        return removed
