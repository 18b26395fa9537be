"""Choosing the device, the numeric precision on it, the CPU threads, and logging what runs where.

torch is optional here: without it (the torch-free inference images, engine onnxruntime),
the only device is the CPU, represented by ``CPU`` (``.type == "cpu"``, as a torch.device).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from mtdp_core.errors import ConfigurationError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlainDevice:
    """A device without torch (``CPU`` where torch is not installed): what code that reads
    ``device.type`` and ``str(device)`` needs."""

    type: str = "cpu"
    index: int | None = None

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"


CPU = PlainDevice()


@cache
def torch_available() -> bool:
    """Whether torch can be imported here (False in the torch-free images)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity (a container's or taskset's cpuset), or
    the machine's count where affinity is unknown."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def cpu_threads() -> int:
    """Intra-op threads of a CPU forward pass, for every engine: ``OMP_NUM_THREADS`` when set
    (as torch reads it), else the cores available to the process (``available_cores``)."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return available_cores()


def resolve_device(spec: Any = "auto") -> torch.device | PlainDevice:
    """``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Asking for CUDA where there is none is an error rather than a silent fall-back to the CPU
    (a job that would take ten times longer should say so at once). Without torch installed,
    ``auto`` and ``cpu`` give ``CPU``.
    """
    if isinstance(spec, PlainDevice):
        return spec
    text = str(spec or "auto").strip().lower()
    if not torch_available():
        if text in ("auto", "cpu"):
            return CPU
        raise ConfigurationError(
            f"Device {spec!r} asked for but torch is not installed here (a CPU-only inference image): "
            "use device cpu or auto, or an image with torch for GPUs."
        )
    import torch

    if isinstance(spec, torch.device):
        return spec
    if text == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(text)
        except RuntimeError:
            raise ConfigurationError(f"Invalid device {spec!r}: use auto, cpu, cuda or cuda:N.") from None
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise ConfigurationError(
                    f"Device {spec!r} asked for but CUDA is not available here (torch {torch.__version__}): "
                    "use --device cpu or auto, or run on a machine with an NVIDIA GPU and driver."
                )
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise ConfigurationError(
                    f"Device {spec!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s) (cuda:0..)."
                )
        elif device.type != "cpu":
            raise ConfigurationError(f"Unsupported device {spec!r}: use auto, cpu, cuda or cuda:N.")
    return device


def describe_device(device: Any) -> str:
    if device.type == "cuda":
        import torch

        index = device.index if device.index is not None else torch.cuda.current_device()
        return (
            f"{torch.cuda.get_device_name(index)} (cuda:{index}, CUDA {torch.version.cuda}, torch {torch.__version__})"
        )
    if not torch_available():
        return f"CPU ({cpu_threads()} threads, no torch)"
    import torch

    return f"CPU ({torch.get_num_threads()} threads, torch {torch.__version__})"


# --------------------------------------------------------------------------- mixed precision

#: ``auto``: mixed precision where it pays (CUDA); ``none``: fp32; ``bf16``/``fp16``: that dtype (CUDA only).
AMP_CHOICES = ("auto", "none", "bf16", "fp16")


@dataclass(frozen=True)
class Precision:
    """The autocast dtype (None: fp32) and the device type it applies to.

    The one precision policy of the project (training, fine-tuning and feature extraction all
    get theirs from ``resolve_precision``).
    """

    dtype: torch.dtype | None
    device_type: str

    # fp32 (dtype None) needs no torch: the onnxruntime engine runs where torch is not installed.
    @property
    def name(self) -> str:
        if self.dtype is None:
            return "fp32"
        import torch

        return {torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @property
    def dtype_name(self) -> str:
        """``float32``, ``bfloat16`` or ``float16`` (part of a feature cache's identity)."""
        return "float32" if self.dtype is None else str(self.dtype).removeprefix("torch.")

    @property
    def needs_grad_scaler(self) -> bool:
        # fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range.
        return self.dtype is not None and self.name == "fp16"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        import torch

        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        import torch

        return torch.amp.GradScaler(self.device_type, enabled=self.needs_grad_scaler)


def resolve_precision(amp: str | bool, device: Any) -> Precision:
    """The autocast dtype for ``amp`` on ``device``.

    ``auto`` (or True): bf16 on GPUs that support it (fp32's range: no overflow, no loss
    scaling), else fp16; fp32 on CPU, where bf16/fp16 autocast is 5-20x *slower* without bf16
    units (measured on the project's machines). ``none`` (or False): fp32. ``bf16``/``fp16``
    force a dtype, on CUDA only (asking for one on a CPU is an error, not a slow run).
    """
    if isinstance(amp, bool):
        amp = "auto" if amp else "none"
    if amp not in AMP_CHOICES:
        raise ConfigurationError(f"Invalid amp {amp!r}: use one of {', '.join(AMP_CHOICES)}.")
    if amp == "none" or (amp == "auto" and device.type != "cuda"):
        return Precision(None, device.type)
    if device.type != "cuda":
        raise ConfigurationError(
            f"amp={amp} asked for on {device}: mixed precision is CUDA-only here (bf16 on CPU is 5-20x slower); use "
            "--amp none or auto."
        )
    import torch

    if amp == "auto":
        return Precision(torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16, "cuda")
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigurationError(
            f"amp=bf16 asked for but {torch.cuda.get_device_name(device)} has no bf16 support: use --amp fp16."
        )
    return Precision(torch.bfloat16 if amp == "bf16" else torch.float16, "cuda")
