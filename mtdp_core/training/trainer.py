"""Multi-task pre-training, as in Mormont et al. 2020: ``train(config) -> TrainResult``.

The run, top to bottom:

1. join the process group (torchrun) or run alone; seed this process;
2. open the task pool (building it from ../shared/data first if asked);
3. build the backbone (e.g. ImageNet weights), one linear head per task, SGD with a
   backbone group (γ) and a heads group (γ·τ), the AMP settings (CUDA only);
4. the training data: task-balanced batches (each sample: a task uniformly, then an image
   of it uniformly), the paper's augmentation, ImageNet normalisation on the device;
5. resume from the last checkpoint, or start: write config.json and re-estimate the BN
   statistics on mixed batches (Supplementary B);
6. iterate: warm-up (heads only at γ_w, backbone frozen incl. BN statistics) then the whole
   network; loss = Eq. 1; head gradients × B/|B_i| (Supplementary C); log loss, learning
   rates and images/s; validate per task; checkpoint;
7. at the end: validate, export the backbone (``create_backbone(arch, weights=path)`` loads
   it) and write summary.json.

Outputs in ``output_dir``: config.json (the resolved config: pass it back with --config to
rerun), run.json (versions, device, tasks), metrics.jsonl (one JSON event per line),
checkpoints/last.pt, backbone.pt, summary.json.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from mtdp_core import __version__
from mtdp_core.backbones import create_backbone, save_backbone
from mtdp_core.data.datasets import MultiTaskDataset
from mtdp_core.data.images import Preprocessing, TrainAugmentation
from mtdp_core.data.pools import TaskPool, load_pool
from mtdp_core.data.sampler import BN_ADAPT_STREAM, TaskBalancedSampler
from mtdp_core.errors import CheckpointError, ConfigurationError, DataError
from mtdp_core.multitask import MultiTaskModel, multitask_loss, rescale_head_grads
from mtdp_core.runtime import Precision, describe_device, resolve_precision
from mtdp_core.training.batchnorm import adapt_batch_norm
from mtdp_core.training.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from mtdp_core.training.config import RESUME_MUST_MATCH, TrainConfig
from mtdp_core.training.distributed import DistContext, init_distributed, wrap_ddp
from mtdp_core.training.metrics import evaluate, validation_indices
from mtdp_core.training.optim import build_optimizer, enter_phase, learning_rates, phase_at, set_learning_rates

logger = logging.getLogger(__name__)

CHECKPOINT = Path("checkpoints") / "last.pt"
BACKBONE_FILE = "backbone.pt"


@dataclass
class TrainResult:
    """What a call to ``train`` produced.

    Attributes:
        output_dir: the run's folder.
        iteration: iterations done so far (== config.iterations when completed).
        completed: False when the run stopped early (``stop_after``) and can be resumed.
        checkpoint: path of checkpoints/last.pt.
        backbone_path: the exported backbone (None until the run completes).
        validation: the last per-task validation results (rank 0; None without val split).
        summary: the content of summary.json (empty until the run completes).
    """

    output_dir: Path
    iteration: int
    completed: bool
    checkpoint: Path
    backbone_path: Path | None = None
    validation: dict | None = None
    summary: dict = field(default_factory=dict)


def train(config: TrainConfig | Mapping[str, Any]) -> TrainResult:
    """Pre-train a backbone on a pool of tasks; see ``TrainConfig`` for every option.

    Works in one process, or under ``torchrun`` (one process per GPU, or gloo on CPU): the
    global batch ``config.batch_size`` is split across processes and each sees a different
    slice of the same task-balanced stream, so N processes train the same model as one.
    """
    config = TrainConfig.from_dict(config) if not isinstance(config, TrainConfig) else config
    config.validate()
    ctx = init_distributed(config.device)
    try:
        return _train(config, ctx)
    finally:
        ctx.close()


def _train(config: TrainConfig, ctx: DistContext) -> TrainResult:
    out = Path(config.output_dir)
    device = ctx.device
    _seed_process(config.seed, ctx.rank)
    _configure_backends(config, device)
    pool = _open_pool(config, ctx)
    resume_from = _resume_path(config, out)

    # ---- model, optimiser, precision
    backbone = create_backbone(config.backbone, weights=config.weights, seed=config.seed, sha256=config.weights_sha256)
    model = MultiTaskModel(backbone, [(t.name, t.n_classes) for t in pool], head_seed=config.seed)
    if config.sync_bn and ctx.enabled:
        if device.type != "cuda":
            raise ConfigurationError(
                "sync_bn needs CUDA (torch's SyncBatchNorm has no CPU kernel): use --no-sync-bn or --bn-mode frozen "
                "on CPU."
            )
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config)
    precision = resolve_precision(config.amp, device)
    scaler = precision.grad_scaler()

    # ---- data: task-balanced batches, the paper's augmentation, normalisation on the device
    prep = Preprocessing.for_backbone(backbone, size=config.image_size)
    train_set = MultiTaskDataset(
        list(pool), config.train_splits, TrainAugmentation(prep, config.square_crop, config.hflip, config.vflip)
    )
    _check_nonempty(train_set, config.train_splits)
    sampler = TaskBalancedSampler(
        train_set.task_sizes,
        config.batch_size,
        batches_per_epoch=config.iterations,
        seed=config.seed,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )

    def to_input(images: torch.Tensor) -> torch.Tensor:
        x = prep.normalize(images.to(device, non_blocking=True))
        return x.contiguous(memory_format=torch.channels_last) if config.channels_last else x

    # ---- resume, or start
    log = _RunLog(out, ctx.is_main)
    if resume_from is not None:
        start = _restore(resume_from, config, pool, model, optimizer, scaler, ctx)
        log.truncate_after(start)
        if start >= config.iterations:
            logger.info(
                "%s is a complete run (%d/%d iterations): validating and exporting again",
                resume_from,
                start,
                config.iterations,
            )
        else:
            logger.info("resumed from %s at iteration %d/%d", resume_from, start, config.iterations)
    else:
        start = 0
        log.start(config, pool, train_set, ctx, precision)
        if config.bn_adapt_batches and config.weights == "random":
            logger.info("BN adaptation skipped: random weights have no source statistics to preserve")
        elif config.bn_adapt_batches:
            stats = _adapt_bn(model, train_set, sampler, config, ctx, to_input)
            log.event("bn_adapt", 0, **stats)
            logger.info(
                "BN statistics re-estimated on %d images (%d layers; mean |Δμ|/σ = %.3f)",
                stats["samples"],
                stats["layers"],
                stats["mean_shift"],
            )
    stop = min(config.iterations, config.stop_after or config.iterations)
    validator = _Validator.build(config, pool, prep, ctx, precision)

    # ---- the loop
    sampler.set_iteration(start)
    loader = _train_loader(train_set, sampler, config, device)
    batches = iter(loader)
    phase, net = None, None
    window = _Window(start)
    validation = None
    with (
        logging_redirect_tqdm(),
        tqdm(
            total=config.iterations,
            initial=start,
            desc="multitask",
            unit="it",
            disable=not (ctx.is_main and config.progress),
            dynamic_ncols=True,
        ) as bar,
    ):
        for iteration in range(start, stop):
            if phase_at(config, iteration) != phase:
                phase = phase_at(config, iteration)
                enter_phase(model, phase, bn_mode=config.bn_mode)
                del net  # drop the previous DDP wrapper (and its gradient hooks) first
                net = wrap_ddp(model, ctx)  # DDP registers the parameters trainable in this phase
                logger.info(
                    "iteration %d: %s phase (%s)",
                    iteration,
                    phase,
                    "heads only, backbone frozen" if phase == "warmup" else "whole network",
                )
            rates = learning_rates(config, iteration)
            set_learning_rates(optimizer, rates)

            images, labels, task_ids = next(batches)
            x, y = to_input(images), labels.to(device, non_blocking=True)
            with precision.autocast():
                logits = net(x, task_ids)
            loss = multitask_loss(logits, y)  # Eq. 1 on this rank's share; DDP averages over ranks
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if config.rescale_head_grads:
                # φ_i = B/|B_i| with the counts of the whole (all-rank) batch, which every rank
                # knows because it draws the same global batch.
                rescale_head_grads(model, sampler.task_counts(iteration), config.batch_size)
            scaler.step(optimizer)
            scaler.update()

            done = iteration + 1
            window.add(loss.detach(), len(y))
            bar.update(1)
            if done % config.log_every == 0 or done == stop:
                stats = window.flush(ctx, done)
                bar.set_postfix(loss=f"{stats['loss']:.4f}", img_s=f"{stats['images_per_second']:.1f}")
                log.event("train", done, phase=phase, lr_backbone=rates["backbone"], lr_heads=rates["heads"], **stats)
                logger.info(
                    "it %d/%d  loss %.4f  lr %.2e (heads %.2e)  %.1f img/s  %s",
                    done,
                    config.iterations,
                    stats["loss"],
                    rates["backbone"],
                    rates["heads"],
                    stats["images_per_second"],
                    phase,
                )
            if validator and config.val_every and done % config.val_every == 0 and done < config.iterations:
                with window.paused():  # validation time is not training throughput
                    validation = validator(model, done, log)
                enter_phase(model, phase, bn_mode=config.bn_mode)
            if done % config.checkpoint_every == 0 and done < stop:
                with window.paused():
                    _save(out / CHECKPOINT, done, config, pool, model, optimizer, scaler, sampler, ctx)
    del batches, loader

    last = max(start, stop)
    _save(out / CHECKPOINT, last, config, pool, model, optimizer, scaler, sampler, ctx)
    result = TrainResult(
        output_dir=out,
        iteration=last,
        completed=last >= config.iterations,
        checkpoint=out / CHECKPOINT,
        validation=validation,
    )
    if not result.completed:
        logger.info("stopped at iteration %d/%d; run again with the same config to resume", last, config.iterations)
        return result

    # ---- the end: final validation, export, summary
    if validator:
        result.validation = validator(model, last, log)
    if ctx.is_main:
        result.backbone_path = _export(model, out / BACKBONE_FILE, config, pool, last)
        result.summary = _write_summary(out, config, result, log, ctx)
        logger.info(
            "backbone exported to %s (load it with create_backbone(%r, weights=%r))",
            result.backbone_path,
            config.backbone,
            str(result.backbone_path),
        )
    ctx.barrier()
    return result


# --------------------------------------------------------------------------- set-up


def _seed_process(seed: int, rank: int) -> None:
    """Seed the global RNGs (used by e.g. stochastic depth), differently on each rank."""
    state = np.random.SeedSequence([seed, 0x5EED, rank]).generate_state(2)
    torch.manual_seed(int(state[0]))
    np.random.seed(int(state[1]))
    random.seed(int(state[0]))


def _configure_backends(config: TrainConfig, device: torch.device) -> None:
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = not config.deterministic
    torch.backends.cuda.matmul.allow_tf32 = True  # fp32 GEMMs on tensor cores when AMP is off
    torch.backends.cudnn.allow_tf32 = True
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def _open_pool(config: TrainConfig, ctx: DistContext) -> TaskPool:
    from mtdp_core.data.sources import build_shared_pool, pool_needs_building

    path = Path(config.pool)
    if config.build_pool_from and pool_needs_building(path):
        if ctx.is_main:
            logger.info("building the task pool %s from %s", path, config.build_pool_from)
            build_shared_pool(config.build_pool_from, path, progress=config.progress)
        ctx.barrier()
    return load_pool(path).subset(include=config.tasks, exclude=config.exclude_tasks)


def _check_nonempty(dataset: MultiTaskDataset, splits: list[str]) -> None:
    empty = [name for name, size in zip(dataset.task_names, dataset.task_sizes) if size == 0]
    if empty:
        raise DataError(
            f"Task(s) {empty} have no sample in split(s) {splits}: exclude them (--exclude-tasks) or change "
            "--train-splits."
        )


def _resume_path(config: TrainConfig, out: Path) -> Path | None:
    last = out / CHECKPOINT
    if config.resume == "auto":
        return last if last.is_file() else None
    if config.resume == "never":
        if last.is_file():
            raise ConfigurationError(
                f"Output dir {out} already holds a run ({last}): use another --output-dir, or --resume auto to "
                "continue it."
            )
        return None
    path = Path(config.resume)
    if not path.is_file():
        raise CheckpointError(
            f"Checkpoint {path} (--resume) does not exist: give checkpoints/last.pt of a run, or --resume auto."
        )
    return path


def _train_loader(
    dataset: MultiTaskDataset, sampler: TaskBalancedSampler, config: TrainConfig, device: torch.device
) -> torch.utils.data.DataLoader:
    workers = config.num_workers
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=config.prefetch_factor if workers else None,
        # The loader's own generator: creating its iterator must not consume the global RNG
        # (that would make a resumed run's stochastic depth differ). Augmentation randomness
        # comes from the per-sample seeds, not from the workers' RNGs.
        generator=torch.Generator().manual_seed(config.seed),
    )


# --------------------------------------------------------------------------- BN adaptation


def _adapt_bn(
    model: MultiTaskModel,
    dataset: MultiTaskDataset,
    sampler: TaskBalancedSampler,
    config: TrainConfig,
    ctx: DistContext,
    to_input,
) -> dict:
    """Supplementary B on ``bn_adapt_batches`` mixed batches from a stream of their own."""
    bn_sampler = TaskBalancedSampler(
        dataset.task_sizes,
        config.batch_size,
        batches_per_epoch=config.bn_adapt_batches,
        seed=config.seed,
        rank=ctx.rank,
        world_size=ctx.world_size,
        stream=BN_ADAPT_STREAM,
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=bn_sampler,
        num_workers=config.num_workers,
        pin_memory=ctx.device.type == "cuda",
        generator=torch.Generator().manual_seed(config.seed),
    )
    batches = (to_input(images) for images, _, _ in loader)
    return adapt_batch_norm(model.backbone, batches, all_reduce=ctx.all_reduce_sum_ if ctx.enabled else None)


# --------------------------------------------------------------------------- checkpoints


def _task_list(pool: TaskPool) -> list[dict]:
    return [{"name": t.name, "classes": list(t.classes)} for t in pool]


def _save(
    path: Path,
    iteration: int,
    config: TrainConfig,
    pool: TaskPool,
    model: MultiTaskModel,
    optimizer,
    scaler,
    sampler,
    ctx: DistContext,
) -> None:
    rng_states = ctx.gather_to_main(capture_rng_state())  # every rank's, for an exact resume
    if ctx.is_main:
        sampler_state = {**sampler.state_dict(), "next_batch": iteration}
        save_checkpoint(
            path,
            {
                "iteration": iteration,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                "sampler": sampler_state,
                "rng": rng_states,
                "world_size": ctx.world_size,
                "config": config.to_dict(),
                "tasks": _task_list(pool),
            },
        )
        logger.debug("checkpoint %s at iteration %d", path, iteration)
    ctx.barrier()


def _restore(
    path: Path, config: TrainConfig, pool: TaskPool, model: MultiTaskModel, optimizer, scaler, ctx: DistContext
) -> int:
    payload = load_checkpoint(path)
    saved = payload["config"]
    for key in RESUME_MUST_MATCH + (("iterations",) if config.lr_schedule != "constant" else ()):
        if saved.get(key) != getattr(config, key):
            raise CheckpointError(
                f"Cannot resume from {path}: {key} was {saved.get(key)!r} there and is {getattr(config, key)!r} now. "
                "Use the checkpoint's value (its config.json), or a new --output-dir to start a new run."
            )
    if payload["tasks"] != _task_list(pool):
        raise CheckpointError(
            f"Cannot resume from {path}: it was trained on other tasks or classes "
            f"({[t['name'] for t in payload['tasks']]})."
        )
    if payload["sampler"]["task_sizes"] != [t.n_samples(config.train_splits) for t in pool]:
        raise CheckpointError(
            f"Cannot resume from {path}: the pool's training splits changed size since (rebuilt pool?); start a new "
            "run."
        )
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    if payload.get("scaler"):
        scaler.load_state_dict(payload["scaler"])
    rng = payload.get("rng") or []
    if len(rng) == ctx.world_size:
        restore_rng_state(rng[ctx.rank])
    else:
        logger.warning(
            "checkpoint from %d process(es), resuming with %d: data and weights continue exactly, "
            "the global RNG (stochastic depth only) is reseeded",
            len(rng),
            ctx.world_size,
        )
    return int(payload["iteration"])


# --------------------------------------------------------------------------- logging


class _Window:
    """Loss and throughput since the last log line."""

    def __init__(self, iteration: int) -> None:
        self.start_time = time.perf_counter()
        self.start_iteration = iteration
        self.loss_sum: torch.Tensor | None = None
        self.samples = 0

    @contextlib.contextmanager
    def paused(self):
        began = time.perf_counter()
        try:
            yield
        finally:
            self.start_time += time.perf_counter() - began

    def add(self, loss: torch.Tensor, n: int) -> None:
        self.loss_sum = loss * n if self.loss_sum is None else self.loss_sum + loss * n
        self.samples += n

    def flush(self, ctx: DistContext, iteration: int) -> dict:
        totals = torch.stack([self.loss_sum.float(), torch.tensor(float(self.samples), device=self.loss_sum.device)])
        ctx.all_reduce_sum_(totals)
        loss, samples = (float(v) for v in totals.cpu())
        elapsed = time.perf_counter() - self.start_time
        stats = {"loss": loss / samples, "images_per_second": samples / elapsed, "seconds": elapsed}
        self.__init__(iteration)
        return stats


class _RunLog:
    """config.json, run.json and metrics.jsonl in the output folder (rank 0 only)."""

    def __init__(self, out: Path, enabled: bool) -> None:
        self.out = out
        self.enabled = enabled
        self.path = out / "metrics.jsonl"
        self.events: list[dict] = []

    def start(
        self, config: TrainConfig, pool: TaskPool, dataset: MultiTaskDataset, ctx: DistContext, precision: Precision
    ) -> None:
        if not self.enabled:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        run = {
            "mtdp_version": __version__,
            "torch": torch.__version__,
            "device": describe_device(ctx.device),
            "world_size": ctx.world_size,
            "precision": precision.name,
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "pool": str(Path(config.pool).resolve()),
            "tasks": [
                {"name": n, "classes": c, "train_samples": s}
                for n, c, s in zip(dataset.task_names, dataset.n_classes, dataset.task_sizes)
            ],
        }
        (self.out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
        self.path.write_text("")

    def truncate_after(self, iteration: int) -> None:
        """On resume: drop events logged after the checkpoint (they will be logged again)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            if line.strip() and json.loads(line).get("iteration", 0) <= iteration:
                kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept))

    def event(self, kind: str, iteration: int, **values: Any) -> None:
        record = {"event": kind, "iteration": iteration, "time": round(time.time(), 3), **values}
        self.events.append(record)
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record, allow_nan=True) + "\n")


# --------------------------------------------------------------------------- validation


class _Validator:
    def __init__(
        self,
        dataset: MultiTaskDataset,
        indices: np.ndarray,
        metrics: dict[str, str],
        prep: Preprocessing,
        ctx: DistContext,
        precision: Precision,
        config: TrainConfig,
    ) -> None:
        self.dataset, self.indices, self.metrics = dataset, indices, metrics
        self.prep, self.ctx, self.precision, self.config = prep, ctx, precision, config

    @classmethod
    def build(
        cls, config: TrainConfig, pool: TaskPool, prep: Preprocessing, ctx: DistContext, precision: Precision
    ) -> _Validator | None:
        if config.val_split is None:
            return None
        tasks = [t for t in pool if t.n_samples(config.val_split) > 0]
        if not tasks:
            logger.info("no task has a %r split: no validation", config.val_split)
            return None
        # Over every task of the pool, so that task indices are the model's; tasks without
        # validation samples simply contribute none.
        dataset = MultiTaskDataset(list(pool), config.val_split, prep)
        indices = validation_indices(dataset, config.val_max_samples, config.seed)
        return cls(dataset, indices, {t.name: t.metric for t in tasks}, prep, ctx, precision, config)

    def __call__(self, model: MultiTaskModel, iteration: int, log: _RunLog) -> dict | None:
        start = time.perf_counter()
        per_process = max(1, self.config.batch_size // self.ctx.world_size)
        results = evaluate(
            model,
            self.dataset,
            self.indices,
            normalize=self.prep.normalize,
            ctx=self.ctx,
            precision=self.precision,
            batch_size=self.config.val_batch_size or 2 * per_process,
            num_workers=self.config.num_workers,
            channels_last=self.config.channels_last,
            metrics=self.metrics,
        )
        if results is None:
            return None
        scores = [r["score"] for r in results.values() if not math.isnan(r["score"])]
        mean = float(np.mean(scores)) if scores else math.nan
        log.event("val", iteration, tasks=results, mean_score=mean)
        for name, r in results.items():
            logger.info(
                "val it %d  %-18s %s %.4f  acc %.4f  loss %.4f  (n=%d)",
                iteration,
                name,
                r["metric"],
                r["score"],
                r["accuracy"],
                r["loss"],
                r["n"],
            )
        logger.info(
            "val it %d  mean score %.4f over %d tasks (%.1f s)",
            iteration,
            mean,
            len(results),
            time.perf_counter() - start,
        )
        return results


# --------------------------------------------------------------------------- export


def _export(model: MultiTaskModel, path: Path, config: TrainConfig, pool: TaskPool, iteration: int) -> Path:
    metadata = {
        "trained_with": "mtdp multi-task pre-training",
        "iterations": iteration,
        "config": config.to_dict(),
        "tasks": _task_list(pool),
    }
    return save_backbone(model.backbone, path, metadata=metadata)


def _write_summary(out: Path, config: TrainConfig, result: TrainResult, log: _RunLog, ctx: DistContext) -> dict:
    digest = hashlib.sha256(result.backbone_path.read_bytes()).hexdigest()
    train_events = [e for e in log.events if e["event"] == "train"]
    summary = {
        "iterations": result.iteration,
        "backbone": config.backbone,
        "backbone_path": str(result.backbone_path),
        "backbone_sha256": digest,
        "final_train_loss": train_events[-1]["loss"] if train_events else None,
        "images_per_second": (float(np.mean([e["images_per_second"] for e in train_events])) if train_events else None),
        "world_size": ctx.world_size,
        "device": describe_device(ctx.device),
        "validation": result.validation,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=True) + "\n")
    return summary
