"""Choosing where and in which precision models run."""

from __future__ import annotations

import torch

from flowsr_cli.errors import UsageError

_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(setting: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; an unavailable CUDA device is a UsageError."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {setting}: CUDA is not available on this machine; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {setting}: only {torch.cuda.device_count()} CUDA device(s) present (cuda:0 ...)"
            )
    return device


def resolve_dtype(precision: str) -> torch.dtype:
    """The compute dtype for a precision setting; ``auto`` is float32, the safe choice for flows."""
    return _PRECISIONS.get(precision, torch.float32)
