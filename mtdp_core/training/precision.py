"""Mixed precision, on CUDA only.

bf16 autocast on a CPU without bf16 units is 5 to 20 times slower than fp32 (measured on the
project's machines), so CPU runs are fp32 and asking for AMP on a CPU is an error.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from mtdp_core.errors import ConfigurationError

AMP_CHOICES = ("auto", "none", "bf16", "fp16")


@dataclass(frozen=True)
class Precision:
    """The autocast dtype (None: fp32) and the device type it applies to."""

    dtype: torch.dtype | None
    device_type: str

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @property
    def needs_grad_scaler(self) -> bool:
        # fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range.
        return self.dtype is torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.needs_grad_scaler)


def resolve_precision(amp: str, device: torch.device) -> Precision:
    """``auto``: bf16 on GPUs that support it, else fp16 on CUDA; fp32 on CPU."""
    if amp not in AMP_CHOICES:
        raise ConfigurationError(f"Invalid amp {amp!r}: use one of {', '.join(AMP_CHOICES)}.")
    if amp == "none" or (amp == "auto" and device.type != "cuda"):
        return Precision(None, device.type)
    if device.type != "cuda":
        raise ConfigurationError(
            f"amp={amp} asked for on {device}: mixed precision is CUDA-only here (bf16 on CPU is 5-20x slower); use "
            "--amp none or auto."
        )
    if amp == "auto":
        return Precision(torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16, "cuda")
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigurationError(
            f"amp=bf16 asked for but {torch.cuda.get_device_name(device)} has no bf16 support: use --amp fp16."
        )
    return Precision(torch.bfloat16 if amp == "bf16" else torch.float16, "cuda")
