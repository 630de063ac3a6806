"""The hardware a run uses: the device, its numeric precision and backend switches."""

from __future__ import annotations

from pathlib import Path

import torch

from imgclf.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """ "auto" → CUDA if present, else Apple MPS, else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but no CUDA GPU is available")
    return device


def configure_backends(device: torch.device) -> None:
    """cuDNN picks the fastest kernels for the (fixed) input size; fp32 matmuls may use TF32."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def cpu_has_bf16() -> bool:
    """True when the processor computes bfloat16 natively (AVX-512 BF16 or AMX); elsewhere bf16 on the
    CPU is emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype. "auto": bf16 on CUDA GPUs that support it and on processors with native bf16
    (AVX-512 BF16, AMX), else fp32; "bf16" wherever asked for; "fp32" never."""
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None
