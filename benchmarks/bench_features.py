"""Benchmark: feature extraction, image files on disk -> features on disk, in images/s.

For each (backbone, image set), in the same run and on the same images:

- ``forward``: the model's forward pass alone, on pre-decoded tensors already in memory
  (same batch size, ``inference_mode`` and ``channels_last`` as the pipeline): the ceiling.
- ``pipeline``: ``mtdp_core.transfer.features.extract_features`` from the image files to a
  fresh on-disk cache (decoding workers, uint8 batches, normalisation on the batch,
  inference_mode, channels_last), for each worker count asked.
- ``incumbent``: the recipe of the original Cytomine app: torchvision ImageFolder with
  Resize(224) + CenterCrop(224) + ToTensor + Normalize, batch 8, no workers, fp32,
  ``torch.no_grad()``, contiguous tensors; features gathered and saved with ``np.save``.

Targets (issue #4): pipeline >= 85% of forward on CPU, and >= 2x incumbent.

``--memory N1,N2,...``: instead, extract N images (the set's files, repeated) with a small
network at 32 px into the cache, and report the peak anonymous memory (RssAnon) of the
process for each N: bounded memory means it does not grow with N (the features live in the
memory-mapped file, which the kernel can write back and evict).

The measurements of one (backbone, image set) are interleaved and repeated (``--reps``);
the table reports the best of the repetitions of each (the run least disturbed by other
processes: these machines are shared), the JSON keeps every one. The load average before
and after is recorded.

    python benchmarks/bench_features.py --data ../shared/data --output bench-features.json
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
from collections.abc import Sequence
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
    p.add_argument("--models", default=",".join(MODELS), help=f"backbones among {', '.join(MODELS)}")
    p.add_argument("--n-images", type=int, default=256, help="images per set (at most the set's size)")
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
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions of every measurement (default: 3)")
    p.add_argument("--no-incumbent", dest="incumbent", action="store_false", help="skip the incumbent recipe")
    p.add_argument(
        "--memory",
        default=None,
        metavar="N1,N2",
        help="measure peak memory against the number of images instead (e.g. 5000,50000)",
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


def bench_forward(backbone, prep: Preprocessing, images: torch.Tensor, batch_size: int) -> float:
    """Images/s of the forward pass alone, on uint8 tensors decoded before timing."""
    model = prepare_model(backbone, torch.device("cpu"))
    with torch.inference_mode():
        model(prep.normalize(images[:batch_size]).contiguous(memory_format=torch.channels_last))  # warm-up
        start = time.perf_counter()
        for i in range(0, len(images), batch_size):
            x = prep.normalize(images[i : i + batch_size]).contiguous(memory_format=torch.channels_last)
            model(x)
        return len(images) / (time.perf_counter() - start)


def bench_pipeline(backbone, prep: Preprocessing, paths: Sequence[Path], batch_size: int, workers: int) -> float:
    """Images/s from files to a fresh on-disk cache."""
    extract_features(
        backbone, paths[:batch_size], prep, batch_size=batch_size, num_workers=0, device="cpu", progress=False
    )  # warm-up (kernels), not timed
    cache = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    try:
        start = time.perf_counter()
        extract_features(
            backbone,
            paths,
            prep,
            batch_size=batch_size,
            num_workers=workers,
            device="cpu",
            progress=False,
            cache_dir=cache,
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


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging("WARNING")
    device = torch.device("cpu")
    workers = [int(w) for w in args.workers.split(",")] if args.workers else [default_num_workers(device)]
    if args.batch_size is None:
        args.batch_size = default_batch_size(device, args.size)
    results = []
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
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
        f"# feature extraction benchmark ({time.strftime('%Y-%m-%d %H:%M')}, {machine}, "
        f"load average {load_before[0]:.1f}, best of {args.reps})"
    )
    print(
        "| model | images | forward img/s | pipeline img/s (workers) | pipeline / forward | incumbent img/s "
        "| pipeline / incumbent |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for set_name in args.sets.split(","):
        paths = _images(args.data, set_name, args.n_images)
        for arch in args.models.split(","):
            backbone = create_backbone(arch, weights=MODELS[arch], seed=0)
            prep = Preprocessing.for_backbone(backbone, size=args.size)
            images = torch.stack([prep.load(p) for p in paths])
            runs: dict[str, list[float]] = {"forward": [], "incumbent": [], **{f"pipeline_{w}": [] for w in workers}}
            for _ in range(args.reps):  # interleaved: each repetition measures every variant once
                runs["forward"].append(bench_forward(backbone, prep, images, args.batch_size))
                for w in workers:
                    runs[f"pipeline_{w}"].append(bench_pipeline(backbone, prep, paths, args.batch_size, w))
                if args.incumbent:
                    runs["incumbent"].append(bench_incumbent(backbone, paths, args.size))
            best = {k: max(v) if v else None for k, v in runs.items()}
            results.append(
                {
                    "model": arch,
                    "weights": MODELS[arch],
                    "images": set_name,
                    "n_images": len(paths),
                    "size": args.size,
                    "batch_size": args.batch_size,
                    "runs": runs,
                    "best": best,
                }
            )
            best_w = max(workers, key=lambda w: best[f"pipeline_{w}"])
            pipeline = best[f"pipeline_{best_w}"]
            pipes = ", ".join(f"{best[f'pipeline_{w}']:.1f} ({w})" for w in workers)
            inc = f"{best['incumbent']:.1f} | {pipeline / best['incumbent']:.2f}x" if best["incumbent"] else "– | –"
            print(
                f"| {arch} ({MODELS[arch]}) | {set_name} ({len(paths)}) | {best['forward']:.1f} | {pipes} | "
                f"{100 * pipeline / best['forward']:.0f}% | {inc} |",
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


if __name__ == "__main__":
    raise SystemExit(main())
