"""Benchmark: feature extraction, image files on disk -> features on disk, in images/s, by engine.

For each (backbone, image set), in the same run and on the same images, for each engine
(``--engines``: torch, and onnxruntime: the backbone's ONNX graph in ONNX Runtime, exported
once by ``mtdp_core.inference`` from the same module and weights):

- ``forward``: the engine's forward pass alone, on images decoded and resized before timing,
  normalisation included (same batch size; torch: ``inference_mode`` and ``channels_last``):
  the ceiling of the pipeline.
- ``pipeline``: ``mtdp_core.transfer.features.extract_features`` from the image files to a
  fresh on-disk cache (decoding workers, uint8 batches, normalisation, the engine's forward),
  for each worker count asked.
- ``incumbent``: the recipe of the original Cytomine app: torchvision ImageFolder with
  Resize(224) + CenterCrop(224) + ToTensor + Normalize, batch 8, no workers, fp32,
  ``torch.no_grad()``, contiguous tensors; features gathered and saved with ``np.save``.

Targets (issue #14), on the 2-core CPU: pipeline >= 2x the incumbent, and >= 85% of the
faster engine's forward pass.

``--memory N1,N2,...``: instead, extract N images (the set's files, repeated) with a small
network at 32 px into the cache, and report the peak anonymous memory (RssAnon) of the
process for each N: bounded memory means it does not grow with N (the features live in the
memory-mapped file, which the kernel can write back and evict).

``--gpu-decode``: instead, on a CUDA machine (torch only; onnxruntime is not needed): the
forward pass alone (fp16 autocast, images already on the GPU), the pipeline with CPU decoding
workers, the pipeline with the JPEGs decoded on the GPU (nvJPEG, ``gpu_decode=True``), and
nvJPEG decoding alone, on the same JPEG tiles (the shared data's, or synthetic tiles written
first when ``--data`` is absent).

The measurements of one (backbone, image set) are interleaved and repeated (``--reps``);
the table reports the best of the repetitions of each (the run least disturbed by other
processes: these machines are shared), the JSON keeps every one. The load average before
and after is recorded.

    python benchmarks/bench_features.py --data ../shared/data --output bench-features.json
    python benchmarks/bench_features.py --gpu-decode --output bench-gpu-decode.json     # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

from mtdp_core.backbones import create_backbone
from mtdp_core.data.images import Preprocessing
from mtdp_core.logs import configure_logging
from mtdp_core.transfer.features import (
    default_batch_size,
    default_num_workers,
    extract_features,
    prepare_model,
)

IMAGE_SETS = {
    # name: (sub-folder of the data folder, glob, description)
    "oral_cancer": ("oral_cancer/train", "*/*.jpg", "224x224 JPEG H&E tiles"),
    "lc25000": ("mini/lc25000", "*.jpeg", "768x768 JPEG H&E tiles"),
}
MODELS = {
    "efficientnet_lite0": "imagenet",
    "densenet121": "random",
    "resnet50": "random",
}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data",
        type=Path,
        default=Path(os.environ.get("MTDP_SHARED_DATA", REPO.parent / "shared" / "data")),
        help="the shared data folder (default: $MTDP_SHARED_DATA or ../shared/data)",
    )
    p.add_argument("--sets", default="oral_cancer,lc25000", help=f"image sets among {', '.join(IMAGE_SETS)}")
    p.add_argument(
        "--models",
        default=None,
        help=f"backbones among {', '.join(MODELS)} (default: all; resnet50 with --gpu-decode)",
    )
    p.add_argument(
        "--n-images",
        type=int,
        default=None,
        help="images per set (default: 256, at most the set's size; --gpu-decode: 4096, the set's repeated)",
    )
    p.add_argument("--size", type=int, default=224, help="input size")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="batch of the forward pass and the pipeline (default: the pipeline's automatic choice)",
    )
    p.add_argument(
        "--workers", default=None, help="comma-separated worker counts for the pipeline (default: the automatic choice)"
    )
    p.add_argument(
        "--engines",
        default=None,
        help="comma-separated engines among torch, onnxruntime (default: both; torch with --gpu-decode)",
    )
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions of every measurement (default: 3)")
    p.add_argument("--no-incumbent", dest="incumbent", action="store_false", help="skip the incumbent recipe")
    p.add_argument(
        "--memory",
        default=None,
        metavar="N1,N2",
        help="measure peak memory against the number of images instead (e.g. 5000,50000)",
    )
    p.add_argument(
        "--gpu-decode",
        action="store_true",
        help="on a CUDA machine: CPU-worker decoding vs nvJPEG decoding on the GPU (see above)",
    )
    p.add_argument("--device", default="cuda", help="with --gpu-decode: the CUDA device (default: cuda)")
    p.add_argument(
        "--graph-dir",
        type=Path,
        default=None,
        help="where the ONNX graphs are exported (default: a temporary folder, so exports are never reused)",
    )
    p.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    return p


def _rss_anon_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def bench_memory(data: Path, sizes: Sequence[int], batch_size: int) -> list[dict]:
    """Peak RssAnon of the main process while extracting N images into the cache, for each N."""
    import threading

    files = _images(data, "oral_cancer", 256)
    backbone = create_backbone("resnet18", weights="random", seed=0)
    prep = Preprocessing.for_backbone(backbone, size=32)
    rows = []
    for n in sizes:
        paths = [files[i % len(files)] for i in range(n)]
        cache = Path(tempfile.mkdtemp(prefix="bench-memory-"))
        peak = [_rss_anon_mib()]
        stop = threading.Event()

        def watch(stop: threading.Event = stop, peak: list = peak) -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], _rss_anon_mib())
                time.sleep(0.05)

        thread = threading.Thread(target=watch, daemon=True)
        before = _rss_anon_mib()
        thread.start()
        start = time.perf_counter()
        try:
            feats = extract_features(
                backbone,
                paths,
                prep,
                batch_size=batch_size,
                num_workers=1,
                device="cpu",
                progress=False,
                cache_dir=cache,
            )
            checksum = float(np.asarray(feats[:: max(1, n // 100)]).sum())  # touch the result
        finally:
            stop.set()
            thread.join()
            shutil.rmtree(cache, ignore_errors=True)
        rows.append(
            {
                "n_images": n,
                "features_mib": n * backbone.n_features * 4 / 2**20,
                "rss_anon_before_mib": before,
                "rss_anon_peak_mib": peak[0],
                "seconds": time.perf_counter() - start,
                "checksum": checksum,
            }
        )
        print(
            f"| {n} | {rows[-1]['features_mib']:.0f} MiB | {before:.0f} MiB | {peak[0]:.0f} MiB | "
            f"{n / rows[-1]['seconds']:.0f} img/s |",
            flush=True,
        )
    return rows


def _images(data: Path, name: str, n: int) -> list[Path]:
    folder, pattern, _ = IMAGE_SETS[name]
    paths = sorted((data / folder).glob(pattern))
    if not paths:
        raise SystemExit(f"no images for {name} under {data / folder}: give --data, the shared data folder")
    # Spread over classes: every k-th image.
    step = max(1, len(paths) // n)
    return paths[::step][:n]


def forward_fn(model, prep: Preprocessing, device: torch.device) -> Callable[[np.ndarray], object]:
    """The engine's forward pass on a uint8 (B, s, s, 3) batch, normalisation included."""
    if getattr(model, "engine", "torch") == "onnxruntime":
        return lambda batch: model(prep.normalize_array(batch))
    net = prepare_model(model, device)
    on_cuda = device.type == "cuda"  # fp16 autocast on CUDA, as the pipeline (never on CPU: slower there)
    autocast = torch.autocast("cuda", dtype=torch.float16) if on_cuda else torch.autocast("cpu", enabled=False)

    def run(batch):
        x = torch.from_numpy(batch).to(device, non_blocking=True).permute(0, 3, 1, 2)
        with torch.inference_mode(), autocast:
            out = net(prep.normalize(x).contiguous(memory_format=torch.channels_last))
        return out

    return run


def bench_forward(model, prep: Preprocessing, images: np.ndarray, batch_size: int, device=None) -> float:
    """Images/s of the forward pass alone, on uint8 images decoded before timing."""
    device = device or torch.device("cpu")
    run = forward_fn(model, prep, device)
    run(images[:batch_size])  # warm-up
    _sync(device)
    start = time.perf_counter()
    for i in range(0, len(images), batch_size):
        run(images[i : i + batch_size])
    _sync(device)
    return len(images) / (time.perf_counter() - start)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_pipeline(
    model, prep: Preprocessing, paths: Sequence[Path], batch_size: int, workers: int, device=None, **kwargs
) -> float:
    """Images/s from files to a fresh on-disk cache."""
    device = device or torch.device("cpu")
    extract_features(
        model, paths[:batch_size], prep, batch_size=batch_size, num_workers=0, device=device, progress=False, **kwargs
    )  # warm-up (kernels), not timed
    cache = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    try:
        start = time.perf_counter()
        extract_features(
            model,
            paths,
            prep,
            batch_size=batch_size,
            num_workers=workers,
            device=device,
            progress=False,
            cache_dir=cache,
            **kwargs,
        )
        return len(paths) / (time.perf_counter() - start)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def bench_incumbent(backbone, paths: Sequence[Path], size: int) -> float:
    """Images/s of the original app's recipe (ImageFolder, Resize+CenterCrop, batch 8, no workers, no_grad)."""
    from torchvision import datasets, transforms

    root = Path(tempfile.mkdtemp(prefix="bench-imagefolder-"))
    try:
        (root / "class").mkdir()
        for i, p in enumerate(paths):  # ImageFolder needs class folders: link the same files
            os.symlink(p.resolve(), root / "class" / f"{i:05d}{p.suffix}")
        transform = transforms.Compose(
            [
                transforms.Resize(size),
                transforms.CenterCrop(size),
                transforms.ToTensor(),
                transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
            ]
        )
        loader = torch.utils.data.DataLoader(
            datasets.ImageFolder(str(root), transform=transform), batch_size=8, num_workers=0, shuffle=False
        )
        model = backbone.to(memory_format=torch.contiguous_format).eval()
        with torch.no_grad():
            model(next(iter(loader))[0])  # warm-up, not timed
            start = time.perf_counter()
            feats = [model(x).numpy() for x, _ in loader]
            np.save(root / "features.npy", np.concatenate(feats))
            return len(paths) / (time.perf_counter() - start)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def engine_models(arch: str, weights: str, size: int, engines: Sequence[str], graph_dir: Path) -> dict:
    """The backbone as each engine runs it, from the same module and weights."""
    backbone = create_backbone(arch, weights=weights, seed=0)
    models = {}
    for engine in engines:
        if engine == "torch":
            models[engine] = backbone
        elif engine == "onnxruntime":
            from mtdp_core.inference.engines import onnx_backbone

            os.environ["MTDP_GRAPH_DIR"] = str(graph_dir)
            models[engine] = onnx_backbone(arch, weights, seed=0, image_size=size, build=lambda: backbone)
        else:
            raise SystemExit(f"unknown engine {engine!r}: use torch, onnxruntime")
    return models


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging("WARNING")
    if args.gpu_decode:
        return main_gpu_decode(args, argv)
    device = torch.device("cpu")
    engines = (args.engines or "torch,onnxruntime").split(",")
    workers = (
        [int(w) for w in args.workers.split(",")]
        if args.workers
        else sorted({default_num_workers(device, e) for e in engines})
    )
    if args.batch_size is None:
        args.batch_size = default_batch_size(device, args.size)
    graph_dir = args.graph_dir or Path(tempfile.mkdtemp(prefix="bench-graphs-"))
    versions = f"torch {torch.__version__}"
    if "onnxruntime" in engines:
        import onnxruntime

        versions += f", onnxruntime {onnxruntime.__version__}"
    results = []
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {versions}, "
        f"{torch.get_num_threads()} threads"
    )
    load_before = os.getloadavg()
    if args.memory:
        print(
            f"# feature extraction memory ({time.strftime('%Y-%m-%d %H:%M')}, {machine}, resnet18 at 32 px, "
            f"cache on disk)"
        )
        print("| images | features size | RssAnon before | RssAnon peak | speed |")
        print("|---:|---:|---:|---:|---:|")
        rows = bench_memory(args.data, [int(v) for v in args.memory.split(",")], args.batch_size)
        if args.output:
            args.output.write_text(
                json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine, "memory": rows}, indent=1)
            )
        return 0
    print(
        f"# feature extraction benchmark ({time.strftime('%Y-%m-%d %H:%M')}, {machine}, batch {args.batch_size}, "
        f"load average {load_before[0]:.1f}, best of {args.reps})"
    )
    print(
        "| model | images | engine | forward img/s | pipeline img/s (workers) | pipeline / forward "
        "| pipeline / faster forward | incumbent img/s | pipeline / incumbent |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for set_name in args.sets.split(","):
        paths = _images(args.data, set_name, args.n_images or 256)
        for arch in (args.models or ",".join(MODELS)).split(","):
            models = engine_models(arch, MODELS[arch], args.size, engines, graph_dir)
            prep = Preprocessing.for_backbone(models[engines[0]], size=args.size)
            images = np.stack([prep.load_array(p) for p in paths])
            runs: dict[str, list[float]] = {"incumbent": []}
            for engine in engines:
                runs[f"forward_{engine}"] = []
                for w in workers:
                    runs[f"pipeline_{engine}_{w}"] = []
            for _ in range(args.reps):  # interleaved: each repetition measures every variant once
                for engine, model in models.items():
                    runs[f"forward_{engine}"].append(bench_forward(model, prep, images, args.batch_size))
                    for w in workers:
                        runs[f"pipeline_{engine}_{w}"].append(bench_pipeline(model, prep, paths, args.batch_size, w))
                if args.incumbent:
                    runs["incumbent"].append(bench_incumbent(create_backbone(arch, MODELS[arch]), paths, args.size))
            best = {k: max(v) if v else None for k, v in runs.items()}
            fastest_forward = max(best[f"forward_{e}"] for e in engines)
            for engine in engines:
                pipe = {w: best[f"pipeline_{engine}_{w}"] for w in workers}
                best_w = max(workers, key=lambda w, pipe=pipe: pipe[w])
                pipeline, forward = pipe[best_w], best[f"forward_{engine}"]
                row = {
                    "model": arch,
                    "weights": MODELS[arch],
                    "images": set_name,
                    "n_images": len(paths),
                    "size": args.size,
                    "batch_size": args.batch_size,
                    "engine": engine,
                    "forward": forward,
                    "pipeline": pipeline,
                    "pipeline_workers": best_w,
                    "pipeline_by_workers": pipe,
                    "pipeline_over_forward": pipeline / forward,
                    "pipeline_over_fastest_forward": pipeline / fastest_forward,
                    "incumbent": best["incumbent"],
                    "pipeline_over_incumbent": pipeline / best["incumbent"] if best["incumbent"] else None,
                    "runs": {k: v for k, v in runs.items() if engine in k or k == "incumbent"},
                }
                results.append(row)
                pipes = ", ".join(f"{pipe[w]:.1f} ({w})" for w in workers)
                inc = (
                    f"{best['incumbent']:.1f} | {row['pipeline_over_incumbent']:.2f}x" if best["incumbent"] else "– | –"
                )
                print(
                    f"| {arch} ({MODELS[arch]}) | {set_name} ({len(paths)}) | {engine} | {forward:.1f} | {pipes} | "
                    f"{100 * pipeline / forward:.0f}% | {100 * row['pipeline_over_fastest_forward']:.0f}% | {inc} |",
                    flush=True,
                )
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
                    "results": results,
                },
                indent=1,
            )
        )
    return 0


# --------------------------------------------------------------------------- GPU decoding


def _synthetic_tiles(folder: Path, n: int, size: int) -> list[Path]:
    """JPEG tiles with image-like content (smooth colour fields, texture, edges), quality 90."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    paths = []
    for i in range(n):
        a, b, c = rng.random(3) * 6
        base = np.stack([np.sin(a * xx + b * yy), np.cos(b * xx - c * yy), np.sin(c * (xx + yy))], -1)
        noise = rng.normal(0, 0.15, (size, size, 3))
        array = np.clip((base * 0.4 + 0.5 + noise) * 255, 0, 255).astype(np.uint8)
        path = folder / f"tile{i:05d}.jpg"
        Image.fromarray(array).save(path, quality=90)
        paths.append(path)
    return paths


def main_gpu_decode(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    """CPU-worker decoding vs nvJPEG on the GPU, and the forward pass alone, on one CUDA device."""
    from torchvision.io import ImageReadMode, decode_jpeg

    from mtdp_core.inference.gpu_decode import gpu_jpeg_available

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--gpu-decode needs a CUDA device (torch.cuda.is_available() is False here)")
    available = gpu_jpeg_available(str(device))
    models = args.models or "resnet50"
    batch = args.batch_size or default_batch_size(device, args.size)
    workers = [int(w) for w in args.workers.split(",")] if args.workers else [default_num_workers(device)]
    n = args.n_images or 4096
    tmp = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    sets: dict[str, list[Path]] = {}
    for set_name in args.sets.split(","):
        folder, pattern, _ = IMAGE_SETS[set_name]
        files = sorted((args.data / folder).glob(pattern))
        if files:  # real tiles, repeated up to n
            sets[set_name] = [files[i % len(files)] for i in range(n)]
        else:
            side = 768 if set_name == "lc25000" else 224
            sets[f"synthetic {side} px"] = _synthetic_tiles(tmp / str(side), min(n, 1024), side)
            sets[f"synthetic {side} px"] = [sets[f"synthetic {side} px"][i % min(n, 1024)] for i in range(n)]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)
    print(
        f"# GPU decoding benchmark ({time.strftime('%Y-%m-%d %H:%M')}, {name}, torch {torch.__version__}, "
        f"{os.cpu_count()} CPU cores, batch {batch}, fp16 autocast, nvJPEG available: {available}, best of {args.reps})"
    )
    print(
        "| model | images | forward img/s | pipeline, CPU workers img/s (workers) | pipeline, nvJPEG img/s "
        "| nvJPEG / CPU workers | nvJPEG pipeline / forward | nvJPEG decode alone img/s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    results = []
    for set_name, paths in sets.items():
        data = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths[:batch]]
        for arch in models.split(","):
            backbone = create_backbone(arch, weights=MODELS.get(arch, "random"), seed=0)
            prep = Preprocessing.for_backbone(backbone, size=args.size)
            images = np.stack([prep.load_array(p) for p in paths[: batch * 8]])
            runs: dict[str, list[float]] = {"forward": [], "nvjpeg_pipeline": [], "decode": []}
            runs.update({f"cpu_pipeline_{w}": [] for w in workers})
            for _ in range(args.reps):
                runs["forward"].append(bench_forward(backbone, prep, images, batch, device))
                for w in workers:
                    runs[f"cpu_pipeline_{w}"].append(bench_pipeline(backbone, prep, paths, batch, w, device))
                if available:
                    runs["nvjpeg_pipeline"].append(
                        bench_pipeline(backbone, prep, paths, batch, workers[0], device, gpu_decode=True)
                    )
                    decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
                    _sync(device)
                    start = time.perf_counter()
                    for _ in range(10):
                        decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
                    _sync(device)
                    runs["decode"].append(10 * len(data) / (time.perf_counter() - start))
            best = {k: max(v) if v else None for k, v in runs.items()}
            best_w = max(workers, key=lambda w, best=best: best[f"cpu_pipeline_{w}"])
            cpu = best[f"cpu_pipeline_{best_w}"]
            nv = best["nvjpeg_pipeline"]
            row = {
                "model": arch,
                "images": set_name,
                "n_images": len(paths),
                "batch_size": batch,
                "device": name,
                "torch": torch.__version__,
                "best": best,
                "runs": runs,
                "cpu_workers": best_w,
            }
            results.append(row)
            fmt = lambda v: f"{v:.0f}" if v else "–"
            ratio = lambda a, b: f"{a / b:.2f}x" if a and b else "–"
            print(
                f"| {arch} | {set_name} ({len(paths)}) | {best['forward']:.0f} | {cpu:.0f} ({best_w}) | {fmt(nv)} | "
                f"{ratio(nv, cpu)} | {ratio(nv, best['forward'])} | {fmt(best['decode'])} |",
                flush=True,
            )
    shutil.rmtree(tmp, ignore_errors=True)
    if args.output:
        args.output.write_text(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%d %H:%M"),
                    "device": name,
                    "argv": list(argv if argv is not None else sys.argv[1:]),
                    "results": results,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
