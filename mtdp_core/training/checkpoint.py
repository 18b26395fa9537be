"""Training checkpoints: everything needed to continue a run bit for bit.

A checkpoint holds the model (backbone and heads), the optimiser (momentum buffers), the
AMP grad scaler, the iteration, the sampler's position, every rank's RNG states, the
resolved config and the task list. The data stream needs no more than the iteration (see
``TaskBalancedSampler``). Files hold tensors and plain Python values only, are read with
``torch.load(weights_only=True)`` and written atomically (temporary file, then rename).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtdp_core import __version__
from mtdp_core.errors import CheckpointError

CHECKPOINT_FORMAT = "mtdp.multitask_checkpoint"
CHECKPOINT_VERSION = 1


def capture_rng_state() -> dict[str, Any]:
    """This process's torch (CPU and CUDA), numpy and Python RNG states, as safe-to-load values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(py_state["state"]), py_state["gauss"]))


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    full = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "mtdp_version": __version__, **payload}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(full, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"Checkpoint {path} does not exist: give the path of a checkpoints/last.pt, or --resume auto."
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: say which, not a pickle traceback
        raise CheckpointError(
            f"Cannot read checkpoint {path} ({type(exc).__name__}: {str(exc)[:120]}): it is damaged or not an mtdp "
            "checkpoint."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not an mtdp multi-task training checkpoint (format "
            f"{payload.get('format') if isinstance(payload, dict) else None!r})."
        )
    if int(payload.get("format_version", 0)) > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"Checkpoint {path} has format version {payload['format_version']}, newer than this mtdp reads "
            f"({CHECKPOINT_VERSION}): upgrade mtdp."
        )
    return payload
