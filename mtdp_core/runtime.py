"""Choosing the device and logging what runs where."""

from __future__ import annotations

import logging

import torch

from mtdp_core.errors import ConfigurationError

logger = logging.getLogger(__name__)


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Asking for CUDA where there is none is an error rather than a silent fall-back to the CPU
    (a job that would take ten times longer should say so at once).
    """
    if isinstance(spec, torch.device):
        return spec
    text = (spec or "auto").strip().lower()
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


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return (
            f"{torch.cuda.get_device_name(index)} (cuda:{index}, CUDA {torch.version.cuda}, torch {torch.__version__})"
        )
    return f"CPU ({torch.get_num_threads()} threads, torch {torch.__version__})"
