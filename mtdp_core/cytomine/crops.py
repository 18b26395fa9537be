"""Annotation crops: downloaded concurrently, with retries, into a cache that never goes stale.

The incumbent app dumps crops with the client's ``dump_crops``: a crop that fails silently
drops out of the training set, nothing is retried, and every run downloads everything again.
Here:

- crops are fetched by a thread pool (the work is network- and server-bound), each request
  retried with exponential backoff on connection errors, timeouts, 5xx and 429;
- each downloaded file is checked to decode as an image before it is kept (a truncated
  response never enters the cache), and written atomically;
- the cache key is the server URL, project, image and annotation ids, a hash of the
  annotation's geometry and the crop parameters: an edited annotation (moved, reshaped) or
  other crop parameters never reuse an old crop;
- failures are skipped, counted and reported (log, job status comment, job property); when
  more than ``max_failed_fraction`` fail the caller stops with a clear error.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from mtdp_core.cytomine.annotations import AnnotationRecord
from mtdp_core.cytomine.client import CytomineSession, thread_pool, with_retries
from mtdp_core.cytomine.errors import CropDownloadError, CytomineRequestError, ParameterError

logger = logging.getLogger(__name__)

CROP_FORMATS = ("png", "jpg")
DEFAULT_THREADS = 8
#: Crops narrower than this (at the chosen zoom, before any rescaling) carry too little to classify.
MIN_CROP_SIDE = 8
#: Above this share of failed crops, a job stops instead of training on what is left.
DEFAULT_MAX_FAILED_FRACTION = 0.1


@dataclass(frozen=True)
class CropSpec:
    """How a crop is cut by the server.

    Attributes:
        zoom: zoom level (0: full resolution; each level halves the size).
        max_size: longest side of the crop in pixels (the server rescales to it); None keeps the
            size the zoom level gives: the request then names that size explicitly, because the
            Spring core (and the local server) default to 256 when none is sent.
        increase_area: factor on the annotation's bounding box (1.5: 50% more context around it).
        format: ``png`` (lossless) or ``jpg`` (faster to serve, smaller).
    """

    zoom: int = 0
    max_size: int | None = None
    increase_area: float = 1.0
    format: str = "png"

    def __post_init__(self) -> None:
        if not isinstance(self.zoom, int) or self.zoom < 0:
            raise ParameterError(f"Use a zoom level of 0 (full resolution) or more: got crop_zoom={self.zoom!r}.")
        if self.max_size is not None and (not isinstance(self.max_size, int) or self.max_size < 8):
            raise ParameterError(
                f"Use a crop size of at least 8 pixels, or 0 for none: got crop_max_size={self.max_size!r}."
            )
        if not isinstance(self.increase_area, (int, float)) or not 1.0 <= float(self.increase_area) <= 10.0:
            raise ParameterError(
                "Use an area factor between 1 (the annotation's box) and 10: got "
                f"crop_increase_area={self.increase_area!r}."
            )
        if self.format not in CROP_FORMATS:
            raise ParameterError(f"Use a crop format among {', '.join(CROP_FORMATS)}: got {self.format!r}.")

    def params(self, location: str | None = None) -> dict[str, Any]:
        """Query parameters of the crop request for an annotation at ``location`` (WKT)."""
        params: dict[str, Any] = {}
        if self.zoom:
            params["zoom"] = self.zoom
        if self.max_size is not None:
            params["maxSize"] = self.max_size
        elif location:
            params["maxSize"] = native_size(location, self.zoom, float(self.increase_area))
        if float(self.increase_area) != 1.0:
            params["increaseArea"] = float(self.increase_area)
        return params

    def key(self) -> str:
        size = "native" if self.max_size is None else str(self.max_size)
        return f"z{self.zoom}-s{size}-a{float(self.increase_area):g}-{self.format}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "zoom": self.zoom,
            "max_size": self.max_size,
            "increase_area": float(self.increase_area),
            "format": self.format,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CropSpec:
        return cls(
            int(data.get("zoom", 0)),
            None if data.get("max_size") is None else int(data["max_size"]),
            float(data.get("increase_area", 1.0)),
            str(data.get("format", "png")),
        )


def native_size(location: str, zoom: int = 0, increase_area: float = 1.0) -> int:
    """Longest side, in pixels, of the crop of ``location`` at ``zoom`` without rescaling."""
    import shapely

    minx, miny, maxx, maxy = shapely.from_wkt(location).bounds
    # A point is cropped in a 100 x 100 box by the cores (GeometryUtils.getGeometryBoundaries).
    side = (max(maxx - minx, maxy - miny) or 100.0) * increase_area / (2**zoom)
    return max(1, int(-(-side // 1)))


def check_crop_resolution(records: Sequence[AnnotationRecord], spec: CropSpec) -> None:
    """Refuse a zoom level at which most crops would be a few pixels wide (the server scales
    them up to ``max_size``: a 1 x 1 crop becomes a flat square, and the model learns nothing).

    Raises:
        ParameterError: the median crop is under ``MIN_CROP_SIDE`` pixels at ``spec.zoom``;
            the message gives the largest zoom that keeps it above.
    """
    if spec.zoom == 0:
        return
    located = [r for r in records if r.location]
    if not located:
        return
    full = sorted(native_size(r.location, 0, float(spec.increase_area)) for r in located)
    median_full = full[len(full) // 2]
    median = max(1, -(-median_full // 2**spec.zoom))
    small = sum(1 for side in full if -(-side // 2**spec.zoom) < MIN_CROP_SIDE)
    if median < MIN_CROP_SIDE:
        best = max(0, int(math.log2(median_full / MIN_CROP_SIDE))) if median_full >= MIN_CROP_SIDE else 0
        raise ParameterError(
            f"Lower crop_zoom to at most {best}: at zoom {spec.zoom} the crops would be {median} pixel"
            f"{'s' if median != 1 else ''} wide (median of {len(full)} annotations, {median_full} at zoom 0), "
            "too small to classify."
        )
    if small:
        logger.warning(
            "%d of %d crops are under %d pixels wide at zoom %d: they carry little to classify",
            small,
            len(full),
            MIN_CROP_SIDE,
            spec.zoom,
        )


class CropStore:
    """Where each annotation's crop file lives.

    ``CropStore(root, server_url, spec)`` is the keyed cache (``root/crops/<server>/<spec>/
    <image>/<annotation>-<geometry hash>.<ext>``); ``CropStore.flat(folder, spec)`` puts crops
    at ``folder/<annotation id>.<ext>`` (BIAFLOWS ``--infolder``).
    """

    def __init__(self, root: str | os.PathLike, server_url: str, spec: CropSpec, *, flat: bool = False) -> None:
        self.spec = spec
        self.flat = flat
        if flat:
            self.folder = Path(root)
        else:
            server = re.sub(r"[^A-Za-z0-9]+", "_", server_url.split("://", 1)[-1]).strip("_")[:60]
            digest = hashlib.sha256(server_url.encode()).hexdigest()[:8]
            self.folder = Path(root) / "crops" / f"{server}-{digest}" / spec.key()
        self.folder.mkdir(parents=True, exist_ok=True)

    @classmethod
    def flat_folder(cls, folder: str | os.PathLike, spec: CropSpec) -> CropStore:
        return cls(folder, "", spec, flat=True)

    def path(self, record: AnnotationRecord) -> Path:
        if self.flat:
            return self.folder / f"{record.id}.{self.spec.format}"
        return (
            self.folder
            / f"p{record.project}"
            / f"i{record.image}"
            / (f"{record.id}-{record.location_hash}.{self.spec.format}")
        )


@dataclass
class CropReport:
    """What a download did.

    Attributes:
        paths: one entry per annotation (input order): the crop file, or None when it failed.
        failures: (annotation id, reason) of each failed crop.
        n_cached: crops found in the cache; n_downloaded: crops fetched; bytes: bytes fetched.
        seconds: wall time.
    """

    paths: list[Path | None]
    failures: list[tuple[int, str]] = field(default_factory=list)
    n_cached: int = 0
    n_downloaded: int = 0
    bytes: int = 0
    seconds: float = 0.0

    @property
    def n_failed(self) -> int:
        return len(self.failures)

    @property
    def n_ok(self) -> int:
        return len(self.paths) - self.n_failed

    def summary(self) -> str:
        rate = self.n_downloaded / self.seconds if self.seconds > 0 else 0.0
        text = f"{self.n_ok} of {len(self.paths)} crops ({self.n_cached} cached, {self.n_downloaded} downloaded"
        text += f", {rate:.0f}/s)" if self.n_downloaded else ")"
        if self.failures:
            text += f"; {self.n_failed} failed"
        return text

    def check(self, max_failed_fraction: float = DEFAULT_MAX_FAILED_FRACTION) -> None:
        """Raise :class:`CropDownloadError` when too many crops failed."""
        total = len(self.paths)
        if not self.failures:
            return
        if self.n_failed == total or self.n_failed > max_failed_fraction * total:
            first = self.failures[0]
            raise CropDownloadError(
                f"Check the server and images, then re-run: {self.n_failed} of {total} crops failed (over "
                f"{max_failed_fraction:.0%}); e.g. annotation {first[0]}: {first[1]}"
            )


def crop_request_url(record: AnnotationRecord, spec: CropSpec, session: CytomineSession) -> str:
    """The annotation's crop URL with the wanted extension (the client rewrites it the same way)."""
    url = record.crop_url or f"{session.base_url}/annotation/{record.id}/crop.png"
    return re.sub(r"/crop\.(png|jpg|jpeg)(?=$|\?)", f"/crop.{spec.format}", url)


def _check_image(data: bytes) -> None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decode everything: a truncated file fails here, not in a DataLoader worker
    except Exception as exc:  # noqa: BLE001 - any decoding problem means a bad download
        raise CytomineRequestError(
            f"the server sent an unreadable image ({type(exc).__name__}: {exc})", status=None
        ) from None


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def download_crops(
    session: CytomineSession | None,
    records: Sequence[AnnotationRecord],
    store: CropStore,
    *,
    threads: int = DEFAULT_THREADS,
    download: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> CropReport:
    """Crops of ``records`` into ``store`` (files already there are reused).

    Args:
        session: the connection (None only with ``download=False``).
        threads: concurrent requests.
        download: False (BIAFLOWS ``--no_download``): only use files already in the store;
            the others count as failures.
        progress: called as ``progress(done, total)`` (from the calling thread).

    Returns:
        A :class:`CropReport`; failed crops are logged and listed, never silently dropped.
    """
    if threads < 1:
        raise ParameterError(f"Use at least 1 download thread: got {threads}.")
    if download:
        check_crop_resolution(records, store.spec)
    start = time.perf_counter()
    report = CropReport(paths=[None] * len(records))
    todo: list[int] = []
    for index, record in enumerate(records):
        path = store.path(record)
        if path.is_file() and path.stat().st_size > 0:
            report.paths[index] = path
            report.n_cached += 1
        elif not download:
            report.failures.append((record.id, f"no crop file {path.name} in {store.folder} (--no_download)"))
        else:
            todo.append(index)
    total, done = len(records), len(records) - len(todo)
    if progress:
        progress(done, total)
    if todo:
        if session is None:
            raise ValueError("download_crops needs a session to download")
        lock = threading.Lock()

        def fetch(index: int) -> tuple[int, Path | None, str, int]:
            record = records[index]
            url = crop_request_url(record, store.spec, session)

            def once() -> bytes:
                data = session.request_once("GET", url, params=store.spec.params(record.location)).content
                _check_image(data)
                return data

            try:
                data = with_retries(
                    once, retries=session.retries, backoff=session.backoff, what=f"crop of annotation {record.id}"
                )
            except CytomineRequestError as exc:
                return index, None, str(exc), 0
            path = store.path(record)
            _write_atomic(path, data)
            return index, path, "", len(data)

        workers = min(threads, len(todo))
        logger.info("downloading %d crops with %d threads (%s)", len(todo), workers, store.spec.key())
        with thread_pool(workers, "crops") as pool:
            futures = [pool.submit(fetch, i) for i in todo]
            for future in as_completed(futures):
                index, path, error, size = future.result()
                with lock:
                    if path is None:
                        report.failures.append((records[index].id, error))
                        if len(report.failures) <= 5:
                            logger.warning("crop of annotation %d failed: %s", records[index].id, error)
                    else:
                        report.paths[index] = path
                        report.n_downloaded += 1
                        report.bytes += size
                    done += 1
                if progress:
                    progress(done, total)
    report.failures.sort()
    report.seconds = time.perf_counter() - start
    if report.n_failed > 5:
        logger.warning(
            "... %d crops failed in all (annotations %s)",
            report.n_failed,
            ", ".join(str(a) for a, _ in report.failures[:20]),
        )
    logger.info("crops: %s", report.summary())
    return report
