#!/usr/bin/env python
"""Throughput of a multi-task training step against a plain single-task step.

Same backbone, batch, image size, optimiser (SGD, momentum 0.9) and inputs; the multi-task
step adds the routing to T heads (22 by default, the paper's pool), the Eq. 1 loss and the
head-gradient rescaling, and its batches mix the tasks as the task-balanced sampler does
(~all 22 heads active in a batch of 64). A third variant, the per-head Python loop of the
original code (one Linear call and one loss per active head), shows what the vectorised
routing saves. Variants run in interleaved rounds, in rotating order, so that load from
other processes hits them alike; medians over rounds are reported, and the overhead is the
median of the per-round ratios, from wall time and from this process's CPU time (the latter
is less disturbed by other jobs on a shared machine; on such a CPU machine, ``--threads 1``
also avoids OpenMP threads waiting for each other). The heads alone (forward, loss, backward
and rescaling on given features) are also timed: that is the only part of the step that
differs between the variants.

    python benchmarks/bench_multitask.py                                  # CPU: resnet18, 64 px, batch 32
    python benchmarks/bench_multitask.py --backbone resnet50 --size 224 --batch-size 64 --device cuda --amp bf16

Prints a Markdown table (and writes --json); docs/multitask_training.md records results.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtdp_core.backbones import create_backbone
from mtdp_core.data.sampler import TaskBalancedSampler
from mtdp_core.multitask import MultiTaskModel, multitask_loss, rescale_head_grads
from mtdp_core.runtime import describe_device, resolve_device, resolve_precision


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18", help="backbone name (default: resnet18)")
    parser.add_argument("--size", type=int, default=64, help="input side in pixels (default: 64)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32)")
    parser.add_argument("--tasks", type=int, default=22, help="number of heads of the multi-task model (default: 22)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant per round (default: 8)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default: 7)")
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed steps per variant first (default: 3)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--amp", default="auto", choices=["auto", "none", "bf16", "fp16"], help="mixed precision (CUDA only)"
    )
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false", help="keep NCHW")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-loop", dest="loop", action="store_false", help="skip the per-head loop variant")
    parser.add_argument(
        "--head-repeats", type=int, default=200, help="repetitions of the heads-only timing (default: 200)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def _loop_forward(model: MultiTaskModel, x: torch.Tensor, task_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The original multitask-dipath routing: one head call and one loss per active task."""
    features = model.backbone(x)
    losses = []
    ids = task_ids.to(x.device)
    for t in torch.unique(task_ids).tolist():
        which = ids == t
        logits = model.heads[model.task_names[t]](features[which])
        losses.append(F.cross_entropy(logits.float(), labels[which], reduction="none"))
    return torch.cat(losses).mean()


def _time_heads(
    multi: MultiTaskModel, linear: nn.Linear, args, device, precision, task_ids, labels, counts, sync
) -> dict[str, float]:
    """Microseconds per forward+loss+backward of the heads alone, on fixed features: the only
    part of the step that differs between the variants, timed without the backbone's noise."""
    features = torch.randn(args.batch_size, multi.backbone.n_features, device=device, requires_grad=True)

    def single_heads():
        with precision.autocast():
            loss = F.cross_entropy(linear(features).float(), labels)
        loss.backward()

    def routed_heads():
        with precision.autocast():
            loss = multitask_loss(multi.route(features, task_ids), labels)
        loss.backward()
        rescale_head_grads(multi, counts, args.batch_size)

    def loop_heads():
        losses = []
        ids = task_ids.to(device)
        with precision.autocast():
            for t in torch.unique(task_ids).tolist():
                which = ids == t
                losses.append(
                    F.cross_entropy(
                        multi.heads[multi.task_names[t]](features[which]).float(), labels[which], reduction="none"
                    )
                )
        torch.cat(losses).mean().backward()
        rescale_head_grads(multi, counts, args.batch_size)

    repeats = max(5, args.head_repeats)
    out = {}
    for name, fn in (("single-task", single_heads), ("multi-task", routed_heads), ("per-head loop", loop_heads)):
        samples = []
        for _ in range(5):
            for _ in range(2):
                fn()
            sync()
            start = time.perf_counter()
            for _ in range(repeats // 5):
                fn()
            sync()
            samples.append((time.perf_counter() - start) / (repeats // 5) * 1e6)
        out[name] = statistics.median(samples)
    multi.zero_grad(set_to_none=True)
    linear.zero_grad(set_to_none=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    precision = resolve_precision(args.amp, device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    rng = np.random.default_rng(args.seed)
    n_classes = rng.integers(2, 11, size=args.tasks).tolist()  # the paper's pool: 2 to 10 classes

    def build_backbone():
        return create_backbone(args.backbone, weights="random", seed=args.seed)

    single_backbone = build_backbone()
    single = (
        nn.Sequential(single_backbone, nn.Linear(single_backbone.n_features, max(n_classes)))
        .to(device, memory_format=fmt)
        .train()
    )
    multi = (
        MultiTaskModel(build_backbone(), {f"task{i}": c for i, c in enumerate(n_classes)})
        .to(device, memory_format=fmt)
        .train()
    )
    loop = (
        MultiTaskModel(build_backbone(), {f"task{i}": c for i, c in enumerate(n_classes)})
        .to(device, memory_format=fmt)
        .train()
    )

    def sgd(params):
        return torch.optim.SGD(params, lr=1e-4, momentum=0.9)

    opt_single = sgd(single.parameters())
    opt_multi = sgd(
        [{"params": multi.backbone_parameters(), "lr": 1e-4}, {"params": multi.head_parameters(), "lr": 5e-4}]
    )
    opt_loop = sgd([{"params": loop.backbone_parameters(), "lr": 1e-4}, {"params": loop.head_parameters(), "lr": 5e-4}])

    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch_size, 3, args.size, args.size, generator=g).to(device).contiguous(memory_format=fmt)
    sampler = TaskBalancedSampler([100] * args.tasks, args.batch_size, batches_per_epoch=1, seed=args.seed)
    batch = sampler.global_batch(0)
    task_ids = torch.from_numpy(batch.tasks)  # stays on the CPU, as in training
    labels = torch.tensor([int(rng.integers(0, n_classes[t])) for t in batch.tasks]).to(device)
    single_labels = labels.clone()
    counts = np.bincount(batch.tasks, minlength=args.tasks)
    scaler = precision.grad_scaler()

    def step_single():
        with precision.autocast():
            loss = F.cross_entropy(single(x).float(), single_labels)
        opt_single.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt_single)
        scaler.update()

    def step_multi():
        with precision.autocast():
            logits = multi(x, task_ids)
        loss = multitask_loss(logits, labels)
        opt_multi.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        rescale_head_grads(multi, counts, args.batch_size)
        scaler.step(opt_multi)
        scaler.update()

    def step_loop():
        with precision.autocast():
            loss = _loop_forward(loop, x, task_ids, labels)
        opt_loop.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        rescale_head_grads(loop, counts, args.batch_size)
        scaler.step(opt_loop)
        scaler.update()

    variants: dict[str, Callable[[], None]] = {"single-task": step_single, "multi-task": step_multi}
    if args.loop:
        variants["multi-task, per-head loop"] = step_loop

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in variants.values():
        for _ in range(args.warmup_steps):
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu_times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order
            sync()
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                variants[name]()
            sync()
            times[name].append((time.perf_counter() - start) / args.steps)
            cpu_times[name].append((time.process_time() - cpu_start) / args.steps)

    heads_only = _time_heads(multi, single[1], args, device, precision, task_ids, labels, counts, sync)

    base = times["single-task"]
    results = {
        "command": " ".join(["python", "benchmarks/bench_multitask.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {describe_device(device)}, {platform.processor() or platform.platform()}",
        "backbone": args.backbone,
        "size": args.size,
        "batch_size": args.batch_size,
        "tasks": args.tasks,
        "active_heads": int((counts > 0).sum()),
        "precision": precision.name,
        "channels_last": args.channels_last,
        "steps": args.steps,
        "rounds": args.rounds,
        "variants": {},
        "heads_only_us": heads_only,
    }
    for name in variants:
        ratios = [t / b for t, b in zip(times[name], base)]
        cpu_ratios = [t / b for t, b in zip(cpu_times[name], cpu_times["single-task"])]
        results["variants"][name] = {
            "median_step_ms": 1000 * statistics.median(times[name]),
            "images_per_second": args.batch_size / statistics.median(times[name]),
            "overhead_percent": 100 * (statistics.median(ratios) - 1),
            "overhead_percent_min_max": [100 * (min(ratios) - 1), 100 * (max(ratios) - 1)],
            # CPU time of this process: less sensitive than wall time to other jobs on a shared machine.
            "cpu_overhead_percent": 100 * (statistics.median(cpu_ratios) - 1),
        }
    print(
        f"{args.backbone}, {args.size} px, batch {args.batch_size}, {args.tasks} heads ({results['active_heads']} "
        "active), "
        f"{precision.name}, {describe_device(device)}; {args.rounds} rounds x {args.steps} steps"
    )
    print(
        "| step | median ms/step | images/s | overhead vs single-task, wall (median of rounds; min..max) | overhead, "
        "process CPU time |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, r in results["variants"].items():
        lo, hi = r["overhead_percent_min_max"]
        print(
            f"| {name} | {r['median_step_ms']:.1f} | {r['images_per_second']:.1f} | {r['overhead_percent']:+.2f}% "
            f"({lo:+.1f}..{hi:+.1f}) "
            f"| {r['cpu_overhead_percent']:+.2f}% |"
        )
    step_us = 1000 * results["variants"]["single-task"]["median_step_ms"]
    extra = heads_only["multi-task"] - heads_only["single-task"]
    print(
        "\nheads only (on given features: forward, loss, backward, + rescaling when multi-task): single head "
        f"{heads_only['single-task']:.0f} us, "
        f"{args.tasks} routed heads {heads_only['multi-task']:.0f} us, per-head loop "
        f"{heads_only['per-head loop']:.0f} us; "
        f"routing adds {extra:.0f} us = {100 * extra / step_us:.2f}% of a single-task step"
    )
    results["routing_extra_percent_of_step"] = 100 * extra / step_us
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
