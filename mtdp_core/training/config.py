"""The configuration of a multi-task pre-training run: one dataclass, JSON files, CLI flags.

Every option is a field of ``TrainConfig`` with its help text; the training script's flags
are generated from these fields, so a JSON config, a Python dict and the command line all
speak the same names (``head_lr_multiplier`` in JSON is ``--head-lr-multiplier`` on the
command line). Keys starting with ``_`` in a JSON file are comments and are ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mtdp_core.errors import ConfigurationError


def _opt(default: Any, help: str, **kwargs: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class TrainConfig:
    """All options of ``train()``. Defaults are the paper's (ResNet50 without warm-up)."""

    # ---- data
    pool: str = _opt("", "task pool folder (see docs/task_pools.md); required", group="data")
    build_pool_from: str | None = _opt(
        None,
        "shared-data folder to build the pool from (as `mtdp pool build`) when `pool` does not exist yet",
        group="data",
    )
    tasks: list[str] | None = _opt(None, "train on these tasks only (default: every task of the pool)", group="data")
    exclude_tasks: list[str] = _opt([], "leave these tasks out (leave-one-task-out)", group="data")
    train_splits: list[str] = _opt(
        ["train"], "splits trained on; the paper's released models used train val test", group="data"
    )
    val_split: str | None = _opt(
        "val", "split of per-task validation metrics during training; none to skip", group="data"
    )
    image_size: int = _opt(224, "side of the square network input, pixels", group="data")
    square_crop: bool = _opt(True, "augmentation: random square crop of non-square images (the paper's)", group="data")
    hflip: bool = _opt(True, "augmentation: random horizontal flip", group="data")
    vflip: bool = _opt(True, "augmentation: random vertical flip", group="data")
    num_workers: int = _opt(
        4, "DataLoader worker processes per training process (0: load in the main process)", group="data"
    )
    prefetch_factor: int = _opt(2, "batches each worker loads ahead", group="data")
    # ---- model
    backbone: str = _opt("resnet50", "shared network θ_s: a name from `mtdp backbones`", group="model")
    weights: str = _opt("imagenet", "initial weights: imagenet, random, ... or a .pth file", group="model")
    weights_sha256: str | None = _opt(None, "expected sha256 of the initial weights file", group="model")
    # ---- optimisation
    iterations: int = _opt(
        50000, "total training iterations, warm-up included (the paper: 50000)", group="optimisation"
    )
    batch_size: int = _opt(64, "global batch size B, all processes together (the paper: 64)", group="optimisation")
    lr: float = _opt(1e-3, "learning rate γ of the backbone after warm-up", group="optimisation")
    head_lr_multiplier: float = _opt(
        1.0, "τ: the heads train at γ·τ after warm-up (the paper: 1, 5 or 10)", group="optimisation"
    )
    momentum: float = _opt(0.9, "SGD momentum (the paper: 0.9)", group="optimisation")
    nesterov: bool = _opt(False, "Nesterov momentum (not in the paper)", group="optimisation")
    weight_decay: float = _opt(0.0, "L2 weight decay (the paper: none)", group="optimisation")
    lr_schedule: Literal["constant", "cosine"] = _opt(
        "constant", "γ after warm-up: constant (the paper) or cosine decay to 0", group="optimisation"
    )
    warmup_iterations: int = _opt(
        0,
        "iterations training the heads only, backbone frozen incl. BN statistics (the paper: 0 or 5000)",
        group="optimisation",
    )
    warmup_lr: float = _opt(
        1e-3, "γ_w: the heads' learning rate during warm-up (the paper: 1e-3)", group="optimisation"
    )
    rescale_head_grads: bool = _opt(
        True, "multiply head i's gradients by B/|B_i| (the paper's Supplementary C)", group="optimisation"
    )
    bn_adapt_batches: int = _opt(
        20,
        "before training, re-estimate BN statistics on this many mixed batches and rewrite γ/β so outputs are "
        "unchanged (Supplementary B); 0 to skip; skipped for random weights",
        group="optimisation",
    )
    bn_mode: Literal["train", "frozen"] = _opt(
        "train",
        "train: BN uses batch statistics (the paper); frozen: BN keeps its running statistics throughout",
        group="optimisation",
    )
    sync_bn: bool = _opt(
        False, "DDP on CUDA: batch statistics over the global batch (SyncBatchNorm)", group="optimisation"
    )
    # ---- runtime
    seed: int = _opt(0, "seed of head initialisation, batch sampling and augmentation", group="runtime")
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N (under torchrun: cuda:LOCAL_RANK)", group="runtime")
    amp: Literal["auto", "none", "bf16", "fp16"] = _opt(
        "auto", "mixed precision, CUDA only: auto = bf16 where supported, else fp16; none on CPU", group="runtime"
    )
    channels_last: bool = _opt(
        True, "channels-last memory format (faster convolutions on CPU and tensor cores)", group="runtime"
    )
    deterministic: bool = _opt(
        False, "deterministic CUDA kernels (slower); CPU runs are deterministic anyway", group="runtime"
    )
    # ---- outputs
    output_dir: str = _opt(
        "runs/multitask",
        "folder of config.json, metrics.jsonl, checkpoints/, backbone.pt, summary.json",
        group="outputs",
    )
    resume: str = _opt(
        "auto",
        "auto: continue from output_dir/checkpoints/last.pt if present; never: refuse a used output_dir; or a "
        "checkpoint path",
        group="outputs",
    )
    log_every: int = _opt(20, "log the training loss, learning rates and images/s every N iterations", group="outputs")
    val_every: int = _opt(1000, "per-task validation every N iterations (0: at the end only)", group="outputs")
    val_max_samples: int | None = _opt(None, "validate on at most N samples per task (seeded subset)", group="outputs")
    val_batch_size: int | None = _opt(
        None, "batch size of validation (default: 2 x batch size per process)", group="outputs"
    )
    checkpoint_every: int = _opt(
        1000, "write checkpoints/last.pt every N iterations (and at the end of every run)", group="outputs"
    )
    stop_after: int | None = _opt(
        None, "stop this invocation at iteration N, checkpointed (e.g. job time limits); resume later", group="outputs"
    )
    progress: bool = _opt(True, "progress bar (rank 0)", group="outputs")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "config") -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in data if k not in names and not str(k).startswith("_")]
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigurationError(
                f"Unknown option {key!r} in {where}.{hint} See `train_multitask.py --help` for the options."
            )
        values = {k: _coerce(k, v, where) for k, v in data.items() if k in names}
        config = cls(**values)
        config.validate()
        return config

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TrainConfig:
        return cls.from_dict(load_config_file(path), where=str(path))

    def replace(self, **changes: Any) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), (list, tuple)) else v)
            for f in dataclasses.fields(self)
        }

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigurationError(message)

        need(
            bool(self.pool),
            "No task pool given: set `pool` in the config or --pool PATH (build one with `mtdp pool build`).",
        )
        need(self.iterations >= 1, f"Invalid iterations {self.iterations}: use >= 1.")
        need(self.batch_size >= 1, f"Invalid batch_size {self.batch_size}: use >= 1.")
        need(
            self.lr >= 0 and self.warmup_lr >= 0,
            f"Invalid learning rates lr={self.lr}, warmup_lr={self.warmup_lr}: use >= 0.",
        )
        need(
            self.head_lr_multiplier >= 0,
            f"Invalid head_lr_multiplier {self.head_lr_multiplier}: use >= 0 (the paper: 1, 5, 10).",
        )
        need(0 <= self.momentum < 1, f"Invalid momentum {self.momentum}: use 0 <= momentum < 1.")
        need(self.weight_decay >= 0, f"Invalid weight_decay {self.weight_decay}: use >= 0.")
        need(not self.nesterov or self.momentum > 0, "nesterov needs momentum > 0.")
        need(
            0 <= self.warmup_iterations <= self.iterations,
            f"Invalid warmup_iterations {self.warmup_iterations}: use 0..iterations ({self.iterations}).",
        )
        need(self.image_size >= 16, f"Invalid image_size {self.image_size}: use >= 16 pixels.")
        need(
            self.num_workers >= 0 and self.prefetch_factor >= 1,
            f"Invalid num_workers {self.num_workers} / prefetch_factor {self.prefetch_factor}.",
        )
        need(self.bn_adapt_batches >= 0, f"Invalid bn_adapt_batches {self.bn_adapt_batches}: use >= 0.")
        need(
            self.log_every >= 1 and self.checkpoint_every >= 1 and self.val_every >= 0,
            f"Invalid log_every {self.log_every} / checkpoint_every {self.checkpoint_every} / val_every "
            f"{self.val_every}.",
        )
        need(
            self.val_max_samples is None or self.val_max_samples >= 1,
            f"Invalid val_max_samples {self.val_max_samples}: use >= 1 or none.",
        )
        need(
            self.val_batch_size is None or self.val_batch_size >= 1,
            f"Invalid val_batch_size {self.val_batch_size}: use >= 1 or none.",
        )
        need(
            self.stop_after is None or 1 <= self.stop_after, f"Invalid stop_after {self.stop_after}: use >= 1 or none."
        )
        need(self.seed >= 0, f"Invalid seed {self.seed}: use a non-negative integer.")
        need(
            bool(self.train_splits) and all(s in ("train", "val", "test") for s in self.train_splits),
            f"Invalid train_splits {self.train_splits}: use some of train, val, test.",
        )
        need(
            self.val_split in (None, "train", "val", "test"),
            f"Invalid val_split {self.val_split!r}: use train, val, test or none.",
        )
        need(
            self.resume in ("auto", "never") or bool(self.resume),
            "Invalid resume: use auto, never or a checkpoint path.",
        )


# Options that shape the training trajectory: resuming with other values would silently
# train a different model, so they must equal the checkpoint's.
RESUME_MUST_MATCH: tuple[str, ...] = (
    "tasks",
    "exclude_tasks",
    "train_splits",
    "image_size",
    "square_crop",
    "hflip",
    "vflip",
    "backbone",
    "weights",
    "batch_size",
    "lr",
    "head_lr_multiplier",
    "momentum",
    "nesterov",
    "weight_decay",
    "lr_schedule",
    "warmup_iterations",
    "warmup_lr",
    "rescale_head_grads",
    "bn_adapt_batches",
    "bn_mode",
    "sync_bn",
    "seed",
)


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON config file (or TOML, with Python's tomllib) into a dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(
            f"Config file {path} does not exist: give a JSON file such as training/configs/shared_small.json."
        )
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (json.JSONDecodeError, ValueError) as exc:
        raise ConfigurationError(
            f"Config file {path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {exc}."
        ) from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"Config file {path} must hold an object of options, got {type(data).__name__}.")
    return data


# --------------------------------------------------------------------------- types and CLI

_HINTS: dict[str, Any] | None = None


def _hints() -> dict[str, Any]:
    global _HINTS
    if _HINTS is None:
        _HINTS = typing.get_type_hints(TrainConfig)
    return _HINTS


def _kind(name: str) -> tuple[type, bool, tuple | None]:
    """(base type, optional, choices) of a field."""
    hint = _hints()[name]
    optional = False
    args = typing.get_args(hint)
    if type(None) in args:
        optional = True
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is Literal:
        return str, optional, typing.get_args(hint)
    if typing.get_origin(hint) is list:
        return list, optional, None
    return hint, optional, None


def _coerce(name: str, value: Any, where: str) -> Any:
    base, optional, choices = _kind(name)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise ConfigurationError(f"Option {name} in {where} cannot be empty.")
    try:
        if base is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            if not isinstance(value, (bool, int)):
                raise ValueError(value)
            return bool(value)
        if base is list:
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split() if v]
            if not isinstance(value, Sequence):
                raise ValueError(value)
            if optional and len(value) == 0:
                return None
            return [str(v) for v in value]
        if base is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            if isinstance(value, bool):
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        value = str(value)
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"Invalid value {value!r} for option {name} in {where}: expected "
            f"{base.__name__}{' or none' if optional else ''}."
        ) from None
    if choices and value not in choices:
        raise ConfigurationError(
            f"Invalid value {value!r} for option {name} in {where}: use one of {', '.join(choices)}."
        )
    return value


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (default: not given, so the config file's value stays)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(TrainConfig):
        group_name = f.metadata.get("group", "options")
        group = groups.setdefault(group_name, parser.add_argument_group(f"{group_name} options"))
        base, optional, choices = _kind(f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        flag = "--" + f.name.replace("_", "-")
        shown = "none" if default is None else (" ".join(default) if isinstance(default, list) else default)
        help_text = f"{f.metadata['help']} (default: {shown})".replace("%", "%%")
        if base is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif base is list:
            group.add_argument(flag, dest=f.name, nargs="*", default=None, metavar="NAME", help=help_text)
        else:
            metavar = "{" + ",".join(choices) + "}" if choices else base.__name__.upper()
            group.add_argument(flag, dest=f.name, default=None, metavar=metavar, help=help_text)


def config_from_args(args: argparse.Namespace, base: Mapping[str, Any] | None = None) -> TrainConfig:
    """Merge flags given on the command line over ``base`` (e.g. a config file's values)."""
    values = dict(base or {})
    for f in dataclasses.fields(TrainConfig):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
    return TrainConfig.from_dict(values, where="config and command line")
