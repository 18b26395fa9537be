"""Benchmark: whole-slide tiles -> features, in tiles/s, and peak memory against slide size.

**Throughput** (default). On a generated Aperio-like slide (40x scan at 0.25 µm/px, levels 1,
4, 16 as Aperio writes them, 256 px JPEG tiles cut from the real CMU slide when the shared
data folder is there, else synthetic H&E-like tiles; tissue over ~70% of it), for each model
and each target resolution, on the same tiles and in the same run:

- ``forward``: the model alone on tiles decoded before timing (uint8 tensors already on the
  device; same batch size, channels_last, inference_mode and float16 autocast on CUDA as the
  pipeline): the ceiling.
- ``pipeline``: ``transfer.features.extract_features`` over the slide's ``TileGrid``: tiles
  read from the best level and resized in DataLoader workers (each opens the slide once),
  uint8 batches, normalisation on the device; for each worker count asked.
- ``baseline``: what a first script does: for each tile, OpenSlide ``read_region`` at level 0
  in the main process, ``convert("RGB")``, resize to the model's input, then the same model
  execution as above (so the ratio measures reading, not the model).

Targets (issue #12): pipeline >= 0.8x forward and >= 2x baseline. The tile grid (tissue
detection on a thumbnail) is timed apart.

**Memory** (``--memory 10000,25000,50000``): for each side, a slide of that size is written
(the same tissue layout scaled, a few JPEG tiles encoded once and repeated), and a
fresh process detects the tissue, lays the grid and extracts features of every tile (a
ResNet18 at 64 px tiles of 2 µm/px by default, so that 50,000 px stays a few minutes on a
CPU); it reports its peak RSS (main process, and the largest worker). Bounded means flat:
the peak does not grow with the slide (the tissue mask is capped at ``max_side`` pixels; a
tile is a few numbers until a worker reads it).

On a CPU the model's forward pass dominates, so the baseline's extra reading shows most at
coarse resolutions (its level-0 reads grow with the square of the downsample); on a GPU the
reading is the bottleneck and the workers are what counts.

The measurements of one (model, resolution) are interleaved and repeated (``--reps``); the
table reports the best repetition of each (these machines are shared), the JSON keeps all.

    python benchmarks/bench_slides.py --output bench-slides.json
    python benchmarks/bench_slides.py --memory 10000,25000,50000 --output bench-slides-memory.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mtdp_core.backbones import create_backbone
from mtdp_core.data.images import Preprocessing
from mtdp_core.logs import configure_logging
from mtdp_core.runtime import describe_device, resolve_device
from mtdp_core.slides.reader import open_slide
from mtdp_core.slides.testing import tissue_like, write_tiled_slide
from mtdp_core.slides.tiles import TileGrid, tile_grid
from mtdp_core.slides.tissue import TissueDetector
from mtdp_core.transfer.features import default_batch_size, default_num_workers, extract_features, prepare_model

MODELS = {"efficientnet_lite0": "imagenet", "resnet50": "random", "densenet121": "random", "resnet18": "random"}
SLIDE_MPP = 0.25  # a 40x scan
TILE = 256  # the slide's own tiles
LEVEL_FACTOR = 4  # Aperio's pyramid: 1, 4, 16, ...
MAX_SIDE = 65_536  # largest generated throughput slide


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("MTDP_SHARED_DATA", REPO.parent / "shared" / "data")),
        help="the shared data folder, for real tile pixels (default: $MTDP_SHARED_DATA or ../shared/data)",
    )
    p.add_argument("--slide", type=Path, default=None, help="benchmark this slide instead of a generated one")
    p.add_argument("--models", default=None, help="backbones (default: efficientnet_lite0 on CPU, + resnet50 on CUDA)")
    p.add_argument(
        "--resolutions",
        default="0.5,1,2",
        help="target µm/px (default 0.5,1,2: 20x read from level 0, 10x from level 1, 5x from level 1 of a 40x "
        "scan with levels 1, 4, 16)",
    )
    p.add_argument("--n-tiles", type=int, default=None, help="tiles per measurement (default: 192 CPU, 4096 CUDA)")
    p.add_argument("--size", type=int, default=224, help="model input = tile size in pixels (default: 224)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the pipeline's automatic choice")
    p.add_argument("--workers", default=None, help="worker counts to compare, e.g. 0,2 (default: the automatic one)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    p.add_argument("--reps", type=int, default=2, help="interleaved repetitions (default: 2)")
    p.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the naive baseline")
    p.add_argument("--slides-dir", type=Path, default=None, help="keep generated slides here (default: a temp dir)")
    g = p.add_argument_group("memory mode")
    g.add_argument("--memory", default=None, metavar="S1,S2", help="slide sides in pixels, e.g. 10000,25000,50000")
    g.add_argument("--memory-model", default="resnet18", help="backbone of the memory runs (default: resnet18)")
    g.add_argument("--memory-tile", type=int, default=64, help="tile size of the memory runs (default: 64)")
    g.add_argument("--memory-resolution", type=float, default=2.0, help="µm/px of the memory runs (default: 2)")
    g.add_argument("--memory-workers", type=int, default=2, help="workers of the memory runs (default: 2)")
    p.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)  # one memory run, in a fresh process
    p.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    return p


# --------------------------------------------------------------------------- slides


def tile_pool(data: Path, n: int = 16, seed: int = 0) -> tuple[list[np.ndarray], str]:
    """``n`` 256 px tissue tiles: from the real CMU slide when present, else synthetic."""
    real = data / "wsi" / "CMU-1-Small-Region.svs"
    rng = np.random.default_rng(seed)
    if real.is_file():
        with open_slide(real) as slide:
            W, H = slide.dimensions
            mask = TissueDetector().detect(slide)
            tiles: list[np.ndarray] = []
            for _ in range(50 * n):
                x, y = int(rng.integers(0, W - TILE)), int(rng.integers(0, H - TILE))
                if mask.fraction(np.array([[x, y, TILE, TILE]], dtype=float))[0] > 0.9:
                    tiles.append(np.asarray(slide.read_region((x, y, TILE, TILE), (TILE, TILE))))
                if len(tiles) == n:
                    return tiles, f"real tiles of {real.name}"
    full = np.ones((TILE, TILE), dtype=bool)
    return [tissue_like((TILE, TILE), seed=seed + i, tissue=full) for i in range(n)], "synthetic H&E-like tiles"


def tissue_layout(u: float, v: float) -> bool:
    """Where the generated slides have tissue, in coordinates relative to the slide ([0, 1]²):
    a large ellipse and two smaller pieces (~40% of the slide)."""
    pieces = ((0.42, 0.45, 0.33, 0.36), (0.82, 0.25, 0.1, 0.14), (0.8, 0.78, 0.12, 0.1))
    return any(((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1 for cu, cv, ru, rv in pieces)


def write_bench_slide(path: Path, side: int, pool: list[np.ndarray], *, dense: bool) -> Path:
    """An Aperio-like SVS of ``side`` px, 0.25 µm/px, levels down to < 1024 px, JPEG tiles
    encoded once and repeated (``dense``: tissue over ~70%, else the ``tissue_layout``), glass
    tiles elsewhere (as scanners write them: OpenSlide renders a *missing* Aperio tile from the
    levels above, recursively, which would make the low levels of a sparse file very slow)."""
    glass = tissue_like((TILE, TILE), seed=99, tissue=np.zeros((TILE, TILE), dtype=bool))
    try:
        import imagecodecs

        def encode(t: np.ndarray) -> bytes:
            return imagecodecs.jpeg_encode(t, level=80)

        compression = "jpeg"
    except ImportError:  # tifffile writes JPEG tiles only with imagecodecs
        import zlib

        def encode(t: np.ndarray) -> bytes:
            return zlib.compress(np.ascontiguousarray(t).tobytes(), 6)

        compression = "zlib"
    encoded, empty = [encode(t) for t in pool], encode(glass)
    levels = 1
    while side / LEVEL_FACTOR ** (levels - 1) > 1024:
        levels += 1

    def inside(u: float, v: float) -> bool:
        if dense:
            return ((u - 0.5) / 0.48) ** 2 + ((v - 0.5) / 0.46) ** 2 <= 1
        return tissue_layout(u, v)

    def tile_fn(level: int, col: int, row: int, size: int) -> bytes:
        span = size * LEVEL_FACTOR**level / side  # a tile's side relative to the slide
        if not inside((col + 0.5) * span, (row + 0.5) * span):
            return empty
        return encoded[(col * 7 + row * 13 + level) % len(encoded)]

    return write_tiled_slide(
        path,
        (side, side),
        tile_fn,
        levels=levels,
        factor=LEVEL_FACTOR,
        tile=TILE,
        fmt="svs",
        mpp=SLIDE_MPP,
        magnification=40,
        compression=compression,
        encoded=True,
    )


# --------------------------------------------------------------------------- throughput


def _autocast(device: torch.device):
    import contextlib

    # As the pipeline: float16 autocast on CUDA, float32 on CPU.
    return torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else contextlib.nullcontext()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_forward(model, prep: Preprocessing, images: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Tiles/s of the model alone, on uint8 (n, 3, s, s) tiles already on the device."""
    images = images.to(device)
    with torch.inference_mode(), _autocast(device):
        model(prep.normalize(images[:batch_size]).contiguous(memory_format=torch.channels_last))  # warm-up
        _sync(device)
        start = time.perf_counter()
        for i in range(0, len(images), batch_size):
            model(prep.normalize(images[i : i + batch_size]).contiguous(memory_format=torch.channels_last))
        _sync(device)
        return len(images) / (time.perf_counter() - start)


def bench_pipeline(backbone, prep: Preprocessing, grid: TileGrid, batch_size: int, workers: int, device) -> float:
    """Tiles/s of the feature pipeline over the grid (tiles read by the loader's workers)."""
    extract_features(
        backbone, grid[:batch_size], prep, batch_size=batch_size, num_workers=0, device=device, progress=False
    )  # warm-up (kernels), not timed
    start = time.perf_counter()
    extract_features(backbone, grid, prep, batch_size=batch_size, num_workers=workers, device=device, progress=False)
    _sync(device)
    return len(grid) / (time.perf_counter() - start)


def bench_baseline(model, prep: Preprocessing, grid: TileGrid, batch_size: int, device: torch.device) -> float:
    """Tiles/s of level-0 ``read_region`` per tile in the main process, then the same model."""
    import openslide

    osr = openslide.OpenSlide(grid.source.path)
    s0 = round(grid.size0)
    size = (grid.tile_size, grid.tile_size)

    def batch(i: int) -> torch.Tensor:
        arrays = [
            np.asarray(osr.read_region((int(x), int(y)), 0, (s0, s0)).convert("RGB").resize(size, Image.BILINEAR))
            for x, y in grid.positions[i : i + batch_size].tolist()
        ]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)

    with torch.inference_mode(), _autocast(device):
        model(prep.normalize(batch(0).to(device)).contiguous(memory_format=torch.channels_last))  # warm-up
        start = time.perf_counter()
        for i in range(0, len(grid), batch_size):
            model(prep.normalize(batch(i).to(device)).contiguous(memory_format=torch.channels_last))
        _sync(device)
        elapsed = time.perf_counter() - start
    osr.close()
    return len(grid) / elapsed


def run_throughput(args: argparse.Namespace, device: torch.device, slides_dir: Path) -> list[dict]:
    models = (args.models or ("efficientnet_lite0,resnet50" if device.type == "cuda" else "efficientnet_lite0")).split(
        ","
    )
    resolutions = [float(r) for r in args.resolutions.split(",")]
    n_tiles = args.n_tiles or (4096 if device.type == "cuda" else 192)
    workers = [int(w) for w in args.workers.split(",")] if args.workers else [default_num_workers(device)]
    if args.slide is not None:
        path, source = args.slide, str(args.slide)
    else:
        # Large enough for n_tiles tissue tiles at the coarsest resolution asked, up to 65,536 px
        # (~1 GB; coarse resolutions then get fewer tiles: the table says how many).
        tile0 = args.size * max(resolutions) / SLIDE_MPP
        side = min(MAX_SIDE, int(math.ceil(math.sqrt(n_tiles / 0.6) * tile0 * 1.1 / TILE) * TILE))
        pool, source = tile_pool(args.data)
        path = slides_dir / f"bench-{side}.svs"
        if not path.is_file():
            start = time.perf_counter()
            write_bench_slide(path, side, pool, dense=True)
            print(
                f"wrote {path} ({side} x {side} px, {path.stat().st_size / 2**20:.0f} MB) in "
                f"{time.perf_counter() - start:.1f} s",
                flush=True,
            )
    with open_slide(path) as slide:
        slide_desc = f"{slide.name}: {slide.dimensions[0]}x{slide.dimensions[1]} px, {slide.mpp:g} µm/px, " + (
            f"levels {', '.join(f'{d:g}' for d in slide.level_downsamples)}, {source}"
        )
        grids = {}
        for res in resolutions:
            start = time.perf_counter()
            grid = tile_grid(slide, tile_size=args.size, resolution=res)
            seconds = time.perf_counter() - start
            keep = np.linspace(0, len(grid) - 1, min(n_tiles, len(grid))).round().astype(int)
            grids[res] = (grid.subset(np.unique(keep)), seconds, len(grid), slide.best_level(grid.downsample))
    print(f"slide {slide_desc}")
    print(
        "| model | resolution (level read) | tiles | grid s | forward tiles/s | pipeline tiles/s (workers) "
        "| pipeline / forward | baseline tiles/s | pipeline / baseline |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    results = []
    for arch in models:
        backbone = create_backbone(arch, weights=MODELS.get(arch, "random"), seed=0)
        prep = Preprocessing.for_backbone(backbone, size=args.size)
        batch_size = args.batch_size or default_batch_size(device, args.size)
        model = prepare_model(backbone, device)
        for res, (grid, grid_seconds, grid_total, level) in grids.items():
            images = torch.stack([torch.from_numpy(np.array(t.open_image())).permute(2, 0, 1) for t in grid])
            runs: dict[str, list[float]] = {"forward": [], "baseline": [], **{f"pipeline_{w}": [] for w in workers}}
            for _ in range(args.reps):
                runs["forward"].append(bench_forward(model, prep, images, batch_size, device))
                for w in workers:
                    runs[f"pipeline_{w}"].append(bench_pipeline(backbone, prep, grid, batch_size, w, device))
                if args.baseline:
                    runs["baseline"].append(bench_baseline(model, prep, grid, batch_size, device))
            best = {k: max(v) if v else None for k, v in runs.items()}
            best_w = max(workers, key=lambda w: best[f"pipeline_{w}"])
            pipe = best[f"pipeline_{best_w}"]
            pipes = ", ".join(f"{best[f'pipeline_{w}']:.1f} ({w})" for w in workers)
            base = f"{best['baseline']:.1f} | {pipe / best['baseline']:.2f}x" if best["baseline"] else "– | –"
            print(
                f"| {arch} | {res:g} µm/px ({level}) | {len(grid)} | {grid_seconds:.1f} | {best['forward']:.1f} | "
                f"{pipes} | {pipe / best['forward']:.2f}x | {base} |",
                flush=True,
            )
            results.append(
                {
                    "model": arch,
                    "resolution_mpp": res,
                    "level_read": level,
                    "downsample": grid.downsample,
                    "n_tiles": len(grid),
                    "grid_tiles": grid_total,
                    "grid_seconds": grid_seconds,
                    "batch_size": batch_size,
                    "runs": runs,
                    "best": best,
                }
            )
    return [{"slide": slide_desc, "results": results}]


# --------------------------------------------------------------------------- memory


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child_memory(args: argparse.Namespace) -> int:
    """One memory run (in its own process): grid + features of every tile of ``args.child``."""
    import resource

    configure_logging("WARNING")
    device = resolve_device(args.device)
    start_rss = _rss_mib()
    backbone = create_backbone(args.memory_model, weights=MODELS.get(args.memory_model, "random"), seed=0)
    prep = Preprocessing.for_backbone(backbone, size=args.memory_tile)
    ready_rss = _rss_mib()
    start = time.perf_counter()
    with open_slide(args.child) as slide:
        grid = tile_grid(slide, tile_size=args.memory_tile, resolution=args.memory_resolution)
    grid_seconds = time.perf_counter() - start
    grid_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    feats = extract_features(backbone, grid, prep, num_workers=args.memory_workers, device=device, progress=False)
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "n_tiles": len(grid),
                "features_mib": feats.nbytes / 2**20,
                "rss_after_imports_mib": start_rss,
                "rss_model_ready_mib": ready_rss,
                "peak_rss_after_grid_mib": grid_rss,
                "peak_rss_main_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "peak_rss_worker_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                "grid_seconds": grid_seconds,
                "seconds": seconds,
            }
        )
    )
    return 0


def run_memory(args: argparse.Namespace, slides_dir: Path) -> list[dict]:
    sides = [int(s) for s in args.memory.split(",")]
    pool, source = tile_pool(args.data)
    print(
        f"# peak memory against slide size: {args.memory_model} at {args.memory_tile} px tiles of "
        f"{args.memory_resolution:g} µm/px, {args.memory_workers} workers, {source}"
    )
    print(
        "| slide side (px) | level-0 pixels | file MB | tiles | features MiB | peak RSS main (MiB) "
        "| after model load | peak RSS worker | grid s | total s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for side in sides:
        path = slides_dir / f"layout-{side}.svs"
        if not path.is_file():
            write_bench_slide(path, side, pool, dense=False)
        cmd = [
            sys.executable,
            __file__,
            "--child",
            str(path),
            "--device",
            args.device,
            "--memory-model",
            args.memory_model,
            "--memory-tile",
            str(args.memory_tile),
            "--memory-resolution",
            str(args.memory_resolution),
            "--memory-workers",
            str(args.memory_workers),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(f"memory run on {path} failed:\n{done.stderr[-3000:]}")
        row = {"side": side, "file_mb": path.stat().st_size / 1e6, **json.loads(done.stdout.strip().splitlines()[-1])}
        rows.append(row)
        print(
            f"| {side} | {side * side / 1e9:.2f} G | {row['file_mb']:.0f} | {row['n_tiles']} | "
            f"{row['features_mib']:.1f} | {row['peak_rss_main_mib']:.0f} | {row['rss_model_ready_mib']:.0f} | "
            f"{row['peak_rss_worker_mib']:.0f} | {row['grid_seconds']:.1f} | {row['seconds']:.1f} |",
            flush=True,
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.child is not None:
        return child_memory(args)
    configure_logging("WARNING")
    device = resolve_device(args.device)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {describe_device(device)}"
    load_before = os.getloadavg()
    print(f"# slide benchmark ({time.strftime('%Y-%m-%d %H:%M')}, {machine}, load average {load_before[0]:.1f})")
    slides_dir = args.slides_dir or Path(tempfile.mkdtemp(prefix="bench-slides-"))
    slides_dir.mkdir(parents=True, exist_ok=True)
    try:
        if args.memory:
            results = {"memory": run_memory(args, slides_dir)}
        else:
            results = {"throughput": run_throughput(args, device, slides_dir)}
    finally:
        if args.slides_dir is None:
            shutil.rmtree(slides_dir, ignore_errors=True)
    load_after = os.getloadavg()
    print(f"load average after: {load_after[0]:.1f}")
    if args.output:
        args.output.write_text(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%d %H:%M"),
                    "machine": machine,
                    "load_average": [load_before[0], load_after[0]],
                    "argv": list(argv if argv is not None else sys.argv[1:]),
                    **results,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
