"""Benchmark: which runtime runs a frozen backbone fastest on this CPU (the choice of docs/transfer.md).

The forward pass alone, on the same normalised batches, the same weights (one ONNX graph
exported by ``mtdp_core.inference`` from the torch module, for both ONNX runtimes), interleaved
and repeated; the best repetition of each is reported with its ratio to torch:

- ``torch``: the Backbone module, ``inference_mode``, channels_last (the torch engine);
- ``onnxruntime``: the graph in ONNX Runtime, as the onnxruntime engine runs it
  (``onnx_backbone.session_options``: idle threads do not spin), and with spinning on
  (``onnxruntime_spin``, with ``--spinning``);
- ``openvino``: the same graph compiled by OpenVINO for the CPU at float32
  (``INFERENCE_PRECISION_HINT=f32``: its default on some CPUs is a reduced precision that
  changes features by ~1e-2), latency hint, the same threads (when ``openvino`` is importable).

Every runtime's features are compared with torch's (max |diff| / max |torch|).

    python benchmarks/bench_engines.py --models efficientnet_lite0,densenet121,resnet50 --reps 5 \\
        --output bench-engines.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mtdp_core.backbones import create_backbone, resolve_weights
from mtdp_core.inference.graphs import INPUT_NAME, OUTPUT_NAME, ensure_graph, graph_key
from mtdp_core.inference.onnx_backbone import session_options
from mtdp_core.logs import configure_logging
from mtdp_core.runtime import cpu_threads

MODELS = {"efficientnet_lite0": "imagenet", "densenet121": "random", "resnet50": "random"}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help=f"backbones among {', '.join(MODELS)}")
    p.add_argument("--size", type=int, default=224, help="input size (default: 224)")
    p.add_argument("--batch-sizes", default="8", help="comma-separated batch sizes (default: 8)")
    p.add_argument("--n-batches", type=int, default=6, help="timed batches per measurement (default: 6)")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default: 3)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: mtdp's cpu_threads())")
    p.add_argument("--spinning", action="store_true", help="also onnxruntime with its idle threads spinning")
    p.add_argument("--graph-dir", type=Path, default=None, help="where the graphs are exported (default: a temp dir)")
    p.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    return p


def _time(fn: Callable[[np.ndarray], np.ndarray], batches: Sequence[np.ndarray]) -> float:
    fn(batches[0])  # warm-up
    start = time.perf_counter()
    for x in batches:
        fn(x)
    return sum(len(x) for x in batches) / (time.perf_counter() - start)


def runners(backbone, graph: Path, threads: int, spinning: bool) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    import onnxruntime as ort

    model = backbone.eval().to(memory_format=torch.channels_last)

    def run_torch(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x).contiguous(memory_format=torch.channels_last)).numpy()

    session = ort.InferenceSession(str(graph), session_options(threads), ["CPUExecutionProvider"])
    out = {
        "torch": run_torch,
        "onnxruntime": lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x})[0],
    }
    if spinning:
        busy = ort.InferenceSession(str(graph), session_options(threads, spinning=True), ["CPUExecutionProvider"])
        out["onnxruntime_spin"] = lambda x: busy.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    try:
        import openvino as ov
    except ImportError:
        return out
    compiled = ov.Core().compile_model(
        str(graph),
        "CPU",
        {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"},
    )
    request = compiled.create_infer_request()
    out["openvino"] = lambda x: np.asarray(request.infer({0: x})[0])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    configure_logging("WARNING")
    threads = args.threads or cpu_threads()
    torch.set_num_threads(threads)
    graph_dir = args.graph_dir or Path(tempfile.mkdtemp(prefix="bench-graphs-"))
    versions = {"torch": torch.__version__}
    for name in ("onnxruntime", "openvino"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {threads} threads"
    load_before = os.getloadavg()
    print(
        f"# forward pass by runtime ({time.strftime('%Y-%m-%d %H:%M')}, {machine}, "
        f"{', '.join(f'{k} {v}' for k, v in versions.items())}, {args.size} px, load average "
        f"{load_before[0]:.1f}, best of {args.reps})"
    )
    rows = []
    rng = np.random.default_rng(0)
    for arch in args.models.split(","):
        weights = MODELS[arch]
        backbone = create_backbone(arch, weights, seed=0)
        key = graph_key(arch, resolve_weights(arch, weights, seed=0).digest(), args.size)
        graph = ensure_graph(key, lambda backbone=backbone: backbone, folder=graph_dir)
        fns = runners(backbone, graph, threads, args.spinning)
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            batches = [
                ((rng.random((batch, 3, args.size, args.size), dtype=np.float32) - 0.45) / 0.225).astype(np.float32)
                for _ in range(args.n_batches)
            ]
            reference = fns["torch"](batches[0])
            diffs = {
                k: float(np.abs(f(batches[0]) - reference).max() / np.abs(reference).max()) for k, f in fns.items()
            }
            runs: dict[str, list[float]] = {k: [] for k in fns}
            for _ in range(args.reps):
                for k, f in fns.items():
                    runs[k].append(_time(f, batches))
            best = {k: max(v) for k, v in runs.items()}
            rows.append(
                {"model": arch, "weights": weights, "batch": batch, "best": best, "runs": runs, "max_rel_diff": diffs}
            )
            cells = " | ".join(f"{best[k]:.1f} ({best[k] / best['torch']:.2f}x)" for k in fns)
            if len(rows) == 1:
                print(f"| model | batch | {' | '.join(fns)} |")
                print("|---|---:|" + "---:|" * len(fns))
            print(f"| {arch} ({weights}) | {batch} | {cells} |", flush=True)
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f}; max rel. diff to torch:")
    for r in rows:
        print(f"  {r['model']} b{r['batch']}: " + ", ".join(f"{k} {v:.1e}" for k, v in r["max_rel_diff"].items()))
    if args.output:
        args.output.write_text(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%d %H:%M"),
                    "machine": machine,
                    "versions": versions,
                    "size": args.size,
                    "load_before": load_before,
                    "load_after": load_after,
                    "rows": rows,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
