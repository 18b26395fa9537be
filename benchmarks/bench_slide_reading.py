"""Benchmark: how the slide app should read a slide's pixels from a remote Cytomine.

On a generated Aperio-like slide (40x scan, 0.25 µm/px, levels 1, 4, 16, JPEG tiles cut from the
real CMU slide when the shared data folder is there; tissue over ~40% of it, as
``bench_slides.tissue_layout``) served by the local Cytomine-compatible server in its own process,
for each resolution a model may read at (the tiles of its grid over the tissue, 224 px), in the
same run:

- ``blocks`` (``mtdp_core.cytomine.slides``): tissue detection on a thumbnail made of coarse
  blocks, then the 1024 px blocks under the grid's tiles at the zoom the model reads, fetched by
  8 threads as image crops of rectangles, as PNG (lossless) and as JPEG (the server's quality;
  the mean difference of the tiles read from both is reported);
- ``download``: the original file (``GET /api/imageinstance/{id}/download``), then everything
  local;
- ``per tile``: one image crop per tile at the model's input size (8 threads), on a sample of
  tiles, extrapolated to the grid (the naive remote reading).

Each reports seconds on this machine (the server and the client share its cores, over
127.0.0.1) and the bytes transferred; the table adds what the bytes cost on a 100 Mbit/s and a
1 Gbit/s link (seconds + bytes / bandwidth), since a real Cytomine is across a network.

    python benchmarks/bench_slide_reading.py --output bench-slide-reading.json
    python benchmarks/bench_slide_reading.py --side 8192 --resolutions 0.5,1 --sample 60   # quick check
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import shapely
from bench_server import server_process
from bench_slides import tile_pool, write_bench_slide

from mtdp_core.cytomine.client import CytomineSession
from mtdp_core.cytomine.slides import RemoteImage, open_remote_slide
from mtdp_core.logs import configure_logging
from mtdp_core.server.backends import CytomineStore
from mtdp_core.server.importers import import_folder
from mtdp_core.slides.tiles import tile_grid
from mtdp_core.slides.tissue import TissueDetector

REPO = Path(__file__).resolve().parents[1]
LINKS = {"100 Mbit/s": 100e6 / 8, "1 Gbit/s": 1e9 / 8}  # bytes per second


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", type=int, default=32768, help="level-0 side of the generated slide, pixels")
    p.add_argument("--resolutions", default="0.25,0.5,1,2", help="µm/px the model reads at, comma-separated")
    p.add_argument("--tile", type=int, default=224, help="the model's input size, pixels")
    p.add_argument("--threads", type=int, default=8, help="concurrent requests")
    p.add_argument("--sample", type=int, default=400, help="tiles read one crop each (per-tile reading)")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="shared data (real tiles)")
    p.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    return p


class CountingSession(CytomineSession):
    """A session that counts the bytes of every response body it reads."""

    received = 0

    def get_bytes(self, path, params=None, *, retry=True):
        data = super().get_bytes(path, params, retry=retry)
        self.received += len(data)
        return data


def bench_blocks(
    session: CountingSession, image: RemoteImage, resolution: float, args, cache: Path, fmt: str
) -> tuple[dict, object]:
    shutil.rmtree(cache, ignore_errors=True)
    session.received = 0
    start = time.perf_counter()
    slide = open_remote_slide(session, image, cache, block_format=fmt)
    mask = TissueDetector().detect(slide)
    grid = tile_grid(slide, tile_size=args.tile, resolution=resolution, tissue=mask)
    level = slide.best_level(grid.downsample)
    needed, fetched = slide.prefetch(level, grid.boxes, threads=args.threads)
    seconds = time.perf_counter() - start
    result = {"tiles": len(grid), "zoom": level, "blocks": needed, "requests": slide.fetched}
    return result | {"seconds": seconds, "bytes": session.received}, (slide, grid)


def jpeg_error(png: tuple, jpg: tuple, n: int = 50) -> float:
    """Mean absolute difference (grey levels) between tiles read from JPEG and PNG blocks."""
    (slide_png, grid), (slide_jpg, _) = png, jpg
    rng = np.random.default_rng(1)
    errors = []
    for i in rng.choice(len(grid), size=min(n, len(grid)), replace=False):
        tile = grid[int(i)]
        a = np.asarray(slide_png.read_region(tile.box, tile.size), dtype=np.int16)
        b = np.asarray(slide_jpg.read_region(tile.box, tile.size), dtype=np.int16)
        errors.append(np.abs(a - b).mean())
    return float(np.mean(errors))


def bench_download(session: CountingSession, image: RemoteImage, work: Path) -> dict:
    target = work / "download.svs"
    start = time.perf_counter()
    session.download(f"imageinstance/{image.id}/download", target)
    seconds = time.perf_counter() - start
    size = target.stat().st_size
    target.unlink()
    return {"seconds": seconds, "bytes": size, "requests": 1}


def bench_per_tile(session: CountingSession, image: RemoteImage, boxes: np.ndarray, args) -> dict:
    rng = np.random.default_rng(0)
    sample = boxes[rng.choice(len(boxes), size=min(args.sample, len(boxes)), replace=False)]
    H = image.height

    def crop(box: np.ndarray) -> None:
        x, y, w, h = (float(v) for v in box)
        location = shapely.box(x, H - (y + h), x + w, H - y).wkt
        session.get_bytes(f"imageinstance/{image.id}/crop.png", {"location": location, "maxSize": args.tile})

    session.received = 0
    start = time.perf_counter()
    with ThreadPoolExecutor(args.threads) as pool:
        list(pool.map(crop, sample))
    seconds = time.perf_counter() - start
    scale = len(boxes) / max(1, len(sample))
    return {
        "seconds": seconds * scale,
        "bytes": int(session.received * scale),
        "requests": len(boxes),
        "sampled": len(sample),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging("WARNING")
    work = Path(tempfile.mkdtemp(prefix="mtdp-bench-reading-"))
    try:
        pool, origin = tile_pool(args.data)
        slide_path = write_bench_slide(work / "slides" / "bench.svs", args.side, pool, dense=False)
        store = CytomineStore(work / "server" / "cytomine.sqlite3", work / "server" / "files")
        store.users.ensure_admin()
        import_folder(store, "bench", slide_path)
        store.close()
        results = {
            "machine": {"platform": platform.platform(), "cpus": __import__("os").cpu_count()},
            "slide": {"side": args.side, "file_bytes": slide_path.stat().st_size, "tiles_from": origin},
            "runs": [],
        }
        with server_process(work / "server") as (url, public, private):
            session = CountingSession.connect(url, public, private)
            item = session.get_collection(f"project/{_project(session)}/imageinstance.json")[0]
            image = RemoteImage.from_json(item)
            download = bench_download(session, image, work)
            for resolution in (float(r) for r in args.resolutions.split(",")):
                png, read_png = bench_blocks(session, image, resolution, args, work / "cache-png", "png")
                jpg, read_jpg = bench_blocks(session, image, resolution, args, work / "cache-jpg", "jpg")
                jpg["mean_abs_error"] = jpeg_error(read_png, read_jpg)
                per_tile = bench_per_tile(session, image, read_png[1].boxes, args)
                run = {
                    "mpp": resolution,
                    "blocks_png": png,
                    "blocks_jpg": jpg,
                    "download": download,
                    "per_tile": per_tile,
                }
                results["runs"].append(run)
                print(_row(run), flush=True)
        if args.output:
            args.output.write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _project(session: CytomineSession) -> int:
    return int(session.get_collection("project.json")[0]["id"])


def _cost(run: dict) -> str:
    links = ", ".join(f"{run['seconds'] + run['bytes'] / rate:.1f} s at {name}" for name, rate in LINKS.items())
    return f"{run['seconds']:.1f} s here, {run['bytes'] / 1e6:.0f} MB, {run['requests']} requests ({links})"


def _row(run: dict) -> str:
    png, jpg, per_tile = run["blocks_png"], run["blocks_jpg"], run["per_tile"]
    return (
        f"{run['mpp']:g} µm/px (zoom {png['zoom']}), {png['tiles']} tiles\n"
        f"  blocks png: {_cost(png)}\n"
        f"  blocks jpg: {_cost(jpg)}; tiles differ from png by {jpg['mean_abs_error']:.2f} grey levels on average\n"
        f"  download:   {_cost(run['download'])}\n"
        f"  per tile:   {_cost(per_tile)} (from {per_tile['sampled']} tiles)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
