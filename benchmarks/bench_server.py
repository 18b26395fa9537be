"""Benchmark of the local Cytomine-compatible server on the BCCD set (364 images, 4,888 boxes).

The server runs in its own process (as ``mtdp server serve`` does), the client in this one.
Measures, in one run (so ratios compare like with like on a shared machine):

1. import time of BCCD from ``boxes.csv`` and from the VOC XML folder into a file database;
   baselines: the same boxes posted through the API one by one and in chunks of 100;
2. annotation listing (``GET /api/annotation.json`` of the whole project, WKT and terms):
   requests/s over HTTP with a raw signed session and with the official client's
   ``AnnotationCollection.fetch()``; baseline: reading the same annotations one request each
   (``GET /api/annotation/{id}.json``, what an app without the listing would do);
3. crop serving (``dump_crops`` of N annotations, ``maxSize`` 224): the client's thread pool
   vs one worker, and with vs without the server's decoded-image cache.

Usage:
    python benchmarks/bench_server.py [--bccd ../shared/data/bccd] [--crops 400] [--repeat 5] [--output results.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]

from mtdp_core.server.app import LocalCytomine, read_admin_keys, read_server_file
from mtdp_core.server.auth import authorization_header, legacy_token
from mtdp_core.server.backends import CytomineStore
from mtdp_core.server.config import ServerConfig
from mtdp_core.server.importers import import_folder


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--bccd",
        type=Path,
        default=REPO.parent / "shared" / "data" / "bccd",
        help="the BCCD folder (JPEGImages/, Annotations/, boxes.csv)",
    )
    parser.add_argument("--crops", type=int, default=400, help="annotations whose crops are dumped per configuration")
    parser.add_argument("--workers", type=int, default=8, help="threads of the client's dump_crops pool")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions of each listing measurement")
    parser.add_argument("--crop-repeat", type=int, default=3, help="interleaved repetitions of the crop runs")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    return parser


class SignedSession:
    """A keep-alive session that signs requests like client 3.0.0 (with the path)."""

    def __init__(self, url: str, public_key: str, private_key: str) -> None:
        self.url, self.keys = url, (public_key, private_key)
        self.session = requests.Session()

    def get(self, path: str) -> requests.Response:
        prepared = requests.Request("GET", self.url + path).prepare()
        date = formatdate(usegmt=True)
        prepared.headers.update(
            {
                "date": date,
                "authorization": authorization_header(*self.keys, legacy_token("GET", "", "", date, prepared.path_url)),
            }
        )
        response = self.session.send(prepared, timeout=120)
        response.raise_for_status()
        return response


def _serve(data: str, cache_bytes: int) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        LocalCytomine(data, config=ServerConfig(log_requests=False, image_cache_bytes=cache_bytes)).serve_forever()


@contextlib.contextmanager
def server_process(data: Path, cache_bytes: int = 256 * 1024 * 1024) -> Iterator[tuple[str, str, str]]:
    """Run a server on ``data`` in a child process; yields (url, public key, private key)."""
    process = multiprocessing.get_context("spawn").Process(target=_serve, args=(str(data), cache_bytes))
    process.start()
    try:
        deadline = time.monotonic() + 60
        while (info := read_server_file(data)) is None or info["pid"] != process.pid:
            if time.monotonic() > deadline or not process.is_alive():
                raise RuntimeError("the server process did not start")
            time.sleep(0.1)
        keys = read_admin_keys(data)
        yield info["url"], keys["public_key"], keys["private_key"]
    finally:
        os.kill(process.pid, signal.SIGINT)  # serve_forever stops cleanly on KeyboardInterrupt
        process.join(30)


def connect(url: str, public_key: str, private_key: str) -> None:
    from cytomine import Cytomine

    Cytomine(url, public_key, private_key, verbose=logging.WARNING, configure_logging=False)


def timed(fn, repeat: int) -> tuple[float, object]:
    """Median seconds of ``repeat`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def bench_import(bccd: Path, work: Path) -> dict[str, float]:
    results = {}
    for name, source in (("csv", bccd / "boxes.csv"), ("voc", bccd / "Annotations")):
        store = CytomineStore(work / f"import-{name}.sqlite3", work / f"files-{name}")
        store.users.ensure_admin()
        start = time.perf_counter()
        report = import_folder(store, "bccd", bccd / "JPEGImages", source)
        results[f"import_{name}_s"] = time.perf_counter() - start
        results[f"import_{name}_annotations"] = report.annotations
        store.close()
    return results


def bench_listing(url: str, keys: tuple[str, str], project_id: int, repeat: int) -> dict[str, float]:
    from cytomine.models import AnnotationCollection

    raw = SignedSession(url, *keys)
    listing = f"/api/annotation.json?project={project_id}&showWKT=true&showTerm=true&max=0&offset=0"
    seconds, response = timed(lambda: raw.get(listing), repeat)
    n = len(response.json()["collection"])
    page_seconds, _ = timed(lambda: raw.get(f"/api/annotation.json?project={project_id}&max=50&offset=100"), repeat * 4)
    connect(url, *keys)
    client_seconds, collection = timed(
        lambda: AnnotationCollection(project=project_id, showWKT=True, showTerm=True).fetch(), repeat
    )
    assert len(collection) == n
    ids = [a["id"] for a in response.json()["collection"][:300]]
    start = time.perf_counter()
    for annotation_id in ids:
        raw.get(f"/api/annotation/{annotation_id}.json")
    one_by_one = (time.perf_counter() - start) / len(ids)
    return {
        "annotations": n,
        "listing_raw_s": seconds,
        "listing_raw_requests_per_s": 1 / seconds,
        "listing_raw_annotations_per_s": n / seconds,
        "listing_client_s": client_seconds,
        "listing_client_annotations_per_s": n / client_seconds,
        "page50_requests_per_s": 1 / page_seconds,
        "one_by_one_annotations_per_s": 1 / one_by_one,
        "listing_speedup_vs_one_by_one": (n / seconds) * one_by_one,
    }


def bench_uploads(project_id: int, bccd: Path, n: int = 300) -> dict[str, float]:
    """Baselines for the import: the same boxes sent through the API, one POST per annotation and in
    chunks of 100 (what a script does against a real core). Run after the listing (it adds annotations)."""
    from cytomine.models import Annotation, AnnotationCollection, ImageInstanceCollection, TermCollection

    from mtdp_core.server.geometry import box_in_cytomine
    from mtdp_core.server.importers import read_csv

    images = {i.originalFilename: i for i in ImageInstanceCollection().fetch_with_filter("project", project_id)}
    terms = {t.name: t.id for t in TermCollection().fetch_with_filter("project", project_id)}
    boxes = [
        (name, label, geometry)
        for name, items in read_csv(bccd / "boxes.csv").items()
        for label, geometry in items
        if geometry.area > 0
    ][:n]

    def annotation(name, label, geometry):
        image = images[name]
        return Annotation(
            location=box_in_cytomine(*geometry.bounds, image.height).wkt, id_image=image.id, id_terms=[terms[label]]
        )

    start = time.perf_counter()
    for item in boxes:
        assert annotation(*item).save()
    one_by_one = len(boxes) / (time.perf_counter() - start)
    collection = AnnotationCollection()
    collection.extend(annotation(*item) for item in boxes)
    start = time.perf_counter()
    assert collection.save(chunk=100, n_workers=1)
    chunked = len(boxes) / (time.perf_counter() - start)
    return {"upload_one_by_one_annotations_per_s": one_by_one, "upload_chunk100_annotations_per_s": chunked}


def bench_crops(data: Path, project_id: int, n_crops: int, workers: int, repeat: int) -> dict[str, float]:
    """Crops/s of ``dump_crops`` (maxSize 224) in four configurations, interleaved ``repeat`` times
    (the machine is shared: the median of interleaved runs is what compares fairly)."""
    from cytomine.models import AnnotationCollection

    configurations = [("png", workers, True), ("png", 1, True), ("png", workers, False), ("jpg", workers, True)]
    rates: dict[str, list[float]] = {}
    for _ in range(repeat):
        for fmt, pool, cache in configurations:
            key = f"crops_{fmt}_{pool}workers_{'cache' if cache else 'nocache'}_per_s"
            with server_process(data, 256 * 1024 * 1024 if cache else 0) as (url, public_key, private_key):
                connect(url, public_key, private_key)
                listed = AnnotationCollection(project=project_id, showTerm=True).fetch()
                subset = AnnotationCollection()
                subset.extend(list(listed)[:n_crops])  # newest first: the last images, several crops each
                with tempfile.TemporaryDirectory() as out:
                    start = time.perf_counter()
                    dumped = subset.dump_crops(os.path.join(out, "{id}." + fmt), n_workers=pool, max_size=224)
                    elapsed = time.perf_counter() - start
                assert len(dumped) == len(subset), "some crops failed"
                rates.setdefault(key, []).append(len(subset) / elapsed)
    results = {key: statistics.median(values) for key, values in rates.items()}
    base = results[f"crops_png_{workers}workers_cache_per_s"]
    results["crops_thread_pool_speedup"] = base / results["crops_png_1workers_cache_per_s"]
    results["crops_cache_speedup"] = base / results[f"crops_png_{workers}workers_nocache_per_s"]
    results["crops_jpg_vs_png"] = results[f"crops_jpg_{workers}workers_cache_per_s"] / base
    return results


def machine() -> dict[str, str]:
    cpu = platform.processor() or ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "platform": platform.platform(),
    }


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    if not (args.bccd / "boxes.csv").is_file():
        print(f"BCCD not found at {args.bccd}: give --bccd", file=sys.stderr)
        return 2
    results: dict[str, object] = {
        "machine": machine(),
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results.update(bench_import(args.bccd, work))
        data = work / "data"
        store = CytomineStore(data / "cytomine.sqlite3", data / "files")
        store.users.ensure_admin()
        project_id = import_folder(store, "bccd", args.bccd / "JPEGImages", args.bccd / "boxes.csv").project["id"]
        store.close()
        with server_process(data) as (url, public_key, private_key):
            results.update(bench_listing(url, (public_key, private_key), project_id, args.repeat))
            results.update(bench_uploads(project_id, args.bccd))
        imported = results["import_csv_annotations"] / results["import_csv_s"]
        results["import_csv_annotations_per_s"] = imported
        results["import_speedup_vs_chunked_upload"] = imported / results["upload_chunk100_annotations_per_s"]
        results.update(bench_crops(data, project_id, args.crops, args.workers, args.crop_repeat))
    for key, value in results.items():
        print(f"{key:<40} {value:.3f}" if isinstance(value, float) else f"{key:<40} {value}")
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
