"""The device and precision policy: mixed precision on CUDA only, one answer for every caller."""

from __future__ import annotations

import pytest
import torch

from mtdp_core.errors import ConfigurationError
from mtdp_core.runtime import resolve_precision


def test_precision_is_fp32_on_cpu_and_forced_dtypes_are_cuda_only():
    cpu = torch.device("cpu")
    for amp in ("auto", "none", True, False):
        precision = resolve_precision(amp, cpu)
        assert precision.dtype is None and precision.name == "fp32" and precision.dtype_name == "float32"
        assert not precision.needs_grad_scaler and not precision.grad_scaler().is_enabled()
    for amp in ("bf16", "fp16"):
        with pytest.raises(ConfigurationError, match="CUDA-only"):
            resolve_precision(amp, cpu)
    with pytest.raises(ConfigurationError, match="Invalid amp"):
        resolve_precision("fp8", cpu)


def test_cuda_auto_is_bf16_where_supported_else_fp16_with_loss_scaling(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", cuda).dtype is torch.bfloat16
    assert resolve_precision(True, cuda).name == "bf16" and not resolve_precision(True, cuda).needs_grad_scaler
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    precision = resolve_precision("auto", cuda)
    assert precision.dtype is torch.float16 and precision.dtype_name == "float16" and precision.needs_grad_scaler
    assert resolve_precision("none", cuda).dtype is None


def test_feature_extraction_follows_the_policy(monkeypatch):
    # Its cache identity names the dtype the policy picks (it used its own rule, always fp16, before).
    from mtdp_core.transfer.features import precision_of

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision_of(torch.device("cuda"), True) == "bfloat16"
    assert precision_of(torch.device("cuda"), False) == precision_of(torch.device("cpu"), True) == "float32"
