#!/usr/bin/env python
"""Summarise a pre-training run as Markdown: loss curve, per-task validation, throughput.

    python training/summarize_run.py runs/shared_small

Reads OUTPUT_DIR/metrics.jsonl (and summary.json when the run is complete); prints the
training loss at every logged iteration range (mean over each tenth of the run) and the
per-task validation metrics at every validation point.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a training output_dir")
    parser.add_argument("--bins", type=int, default=10, help="loss-curve rows (default: 10)")
    return parser


def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    path = args.run / "metrics.jsonl"
    if not path.is_file():
        print(f"error: {path} does not exist: give the output_dir of a training run", file=sys.stderr)
        return 1
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    train = [e for e in events if e["event"] == "train"]
    # A re-run of a complete run validates again: keep the last event of each iteration.
    val = list({e["iteration"]: e for e in events if e["event"] == "val"}.values())
    if train:
        last = train[-1]["iteration"]
        iterations = [e["iteration"] for e in train]
        step = min((b - a for a, b in itertools.pairwise(iterations) if b > a), default=last)  # log_every
        width = max(1, math.ceil(last / args.bins / step)) * step
        print("| iterations | phase | mean training loss | images/s |")
        print("|---|---|---:|---:|")
        for start in range(0, last, width):
            chunk = [e for e in train if start < e["iteration"] <= start + width]
            if chunk:
                phases = "/".join(sorted({e["phase"] for e in chunk}))
                loss = sum(e["loss"] for e in chunk) / len(chunk)
                speed = sum(e["images_per_second"] for e in chunk) / len(chunk)
                print(f"| {start + 1}-{min(start + width, last)} | {phases} | {loss:.4f} | {speed:.1f} |")
        print()
    if val:
        tasks = list(val[-1]["tasks"])
        print("| iteration | " + " | ".join(f"{t} ({val[-1]['tasks'][t]['metric']})" for t in tasks) + " | mean |")
        print("|---:|" + "---:|" * (len(tasks) + 1))
        for e in val:
            cells = [_fmt(e["tasks"].get(t, {}).get("score")) for t in tasks]
            print(f"| {e['iteration']} | " + " | ".join(cells) + f" | {_fmt(e['mean_score'])} |")
        print()
    summary = args.run / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        print(
            f"backbone: {s['backbone_path']} (sha256 {s['backbone_sha256'][:16]}...), {s['iterations']} iterations, "
            f"{s['device']}, world size {s['world_size']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
