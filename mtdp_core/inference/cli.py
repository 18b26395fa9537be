"""``mtdp engine``: pre-export backbones to ONNX graphs, list and clear the graph cache, show the engines."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from mtdp_core.errors import ConfigurationError

logger = logging.getLogger(__name__)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes in pixels, got {text!r}") from None
    if not sizes or any(s < 8 for s in sizes):
        raise argparse.ArgumentTypeError(f"sizes must be integers of at least 8 pixels, got {text!r}")
    return sizes


def register(subparsers: argparse._SubParsersAction) -> None:
    from mtdp_core.inference.graphs import graph_dirs

    p = subparsers.add_parser(
        "engine",
        help="inference engines: pre-export backbones to ONNX graphs, list or clear them",
        description=(
            "Frozen backbones run with torch or, on CPUs, as ONNX graphs in ONNX Runtime (engine auto|torch|"
            "onnxruntime; see docs/transfer.md). A graph is exported from the torch module once, checked against "
            "it and cached, keyed by architecture, weights sha256, input size and mtdp version. `export` makes them "
            "ahead of time (container builds: no export when a job runs; torch-free images need them). Graph "
            f"folders, in order: {os.pathsep.join(str(d) for d in graph_dirs())} (MTDP_GRAPH_DIR puts yours first)."
        ),
    )
    sub = p.add_subparsers(dest="engine_command", metavar="ACTION", required=True)

    e = sub.add_parser(
        "export",
        help="export a backbone with its weights to an ONNX graph (needs torch)",
        description="Export BACKBONE with WEIGHTS at each --size, check the graph against torch, and cache it.",
    )
    e.add_argument("backbone", help="a registered backbone, e.g. densenet121 (see `mtdp backbones`)")
    e.add_argument("weights", help="imagenet, imagenet_v2, mtdp, random, or a checkpoint file")
    e.add_argument(
        "--size", type=_sizes, default=[224], help="input size(s) in pixels, e.g. 224 or 224,384 (default: 224)"
    )
    e.add_argument("--seed", type=int, default=0, help="seed of random weights (default: 0)")
    e.add_argument("--sha256", default=None, help="expected sha256 of the weights file (checked)")
    e.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="folder to write the graph to (default: the first writable graph folder); set MTDP_GRAPH_DIR "
        "to it where the graph is used",
    )
    e.set_defaults(func=_cmd_export)

    ls = sub.add_parser("list", help="the graphs in the graph folders")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=_cmd_list)

    c = sub.add_parser("clear", help="delete cached graphs")
    c.add_argument("--stale", action="store_true", help="only graphs of other mtdp versions (never read again)")
    c.set_defaults(func=_cmd_clear)

    i = sub.add_parser("info", help="which engines are installed and what `auto` picks here")
    i.set_defaults(func=_cmd_info)


def _cmd_export(args: argparse.Namespace) -> int:
    from mtdp_core.backbones import create_backbone, get_backbone_entry, resolve_weights
    from mtdp_core.inference.engines import onnxruntime_available
    from mtdp_core.inference.graphs import ensure_graph, graph_key

    get_backbone_entry(args.backbone)  # an unknown name fails with the valid ones
    if not onnxruntime_available():
        raise ConfigurationError(
            "Exported graphs are checked with onnxruntime, which is not installed: pip install onnxruntime."
        )
    resolved = resolve_weights(args.backbone, args.weights, seed=args.seed, sha256=args.sha256)
    built: list = []

    def factory():
        if not built:
            built.append(create_backbone(args.backbone, args.weights, seed=args.seed, sha256=args.sha256))
        return built[0]

    for size in args.size:
        path = ensure_graph(graph_key(args.backbone, resolved.digest(), size), factory, folder=args.dir)
        print(path)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from mtdp_core.inference.graphs import list_graphs

    entries = list_graphs()
    if args.json:
        print(json.dumps(entries, indent=1))
        return 0
    if not entries:
        print("no exported graphs")
        return 0
    for e in entries:
        w = e["weights"] or {}
        weights = (
            f"{w.get('source')} seed {w.get('seed')}"
            if w.get("source") == "random"
            else (f"{w.get('source')} {str(w.get('sha256'))[:12]}")
        )
        state = "" if e["current"] else "  (stale: another mtdp version)"
        print(f"{e['arch']}  {e['image_size']} px  {weights}  {e['bytes'] / 2**20:.1f} MiB  {e['path']}{state}")
    return 0


def _cmd_clear(args: argparse.Namespace) -> int:
    from mtdp_core.inference.graphs import clear_graphs

    removed = clear_graphs(stale_only=args.stale)
    print(f"{len(removed)} graph(s) removed")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from mtdp_core.inference.engines import ENGINES, onnxruntime_available, resolve_engine
    from mtdp_core.inference.graphs import graph_dirs
    from mtdp_core.runtime import available_cores, cpu_threads, torch_available

    rows = []
    if torch_available():
        import torch

        rows.append(f"torch        {torch.__version__} (CUDA: {'yes' if torch.cuda.is_available() else 'no'})")
    else:
        rows.append("torch        not installed")
    if onnxruntime_available():
        import onnxruntime

        rows.append(f"onnxruntime  {onnxruntime.__version__} ({', '.join(onnxruntime.get_available_providers())})")
    else:
        rows.append("onnxruntime  not installed")
    rows.append(f"auto         {resolve_engine('auto', 'auto')[0]} (engines: {', '.join(ENGINES)})")
    rows.append(f"CPU threads  {cpu_threads()} ({available_cores()} cores available)")
    rows.append(f"graphs       {os.pathsep.join(str(d) for d in graph_dirs())}")
    print("\n".join(rows))
    return 0
