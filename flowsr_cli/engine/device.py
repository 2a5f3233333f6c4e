"""Choosing where and in which precision models run."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flowsr_cli.errors import UsageError

_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class DeviceChoice:
    """The device to use and, when it is not what the user might expect, a note saying why."""

    device: torch.device
    note: str | None = None


def _cuda_usable(device: torch.device) -> str | None:
    """None if a tensor can be put on ``device``; otherwise the reason."""
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as exc:
        return " ".join(str(exc).split())[:200] or type(exc).__name__
    return None


def resolve_device(setting: str) -> DeviceChoice:
    """``auto`` picks a usable CUDA device, else the CPU (saying so); explicit CUDA that is missing
    or fails to initialise is a UsageError."""
    if setting == "auto":
        if not torch.cuda.is_available():
            return DeviceChoice(torch.device("cpu"), "no CUDA device found: running on the CPU")
        problem = _cuda_usable(torch.device("cuda"))
        if problem is not None:
            return DeviceChoice(torch.device("cpu"), f"CUDA failed to initialise ({problem}): running on the CPU")
        return DeviceChoice(torch.device("cuda"))
    device = torch.device(setting)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {setting}: CUDA is not available on this machine; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {setting}: only {torch.cuda.device_count()} CUDA device(s) present (cuda:0 ...)"
            )
        problem = _cuda_usable(device)
        if problem is not None:
            raise UsageError(f"--device {setting}: CUDA failed to initialise ({problem}); use --device cpu or auto")
    return DeviceChoice(device)


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype of the encoder and conditioning (the flow inverse always runs in float32).

    ``auto`` is float16 on CUDA and float32 on the CPU, where half precision is slower.
    """
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return _PRECISIONS[precision]


def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bfloat16 matrices in hardware (AMX tiles or AVX-512 BF16)."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, check, lambda: False)()) for check in checks)


def precision_note(dtype: torch.dtype, device: torch.device) -> str | None:
    """A note when ``dtype`` will be slow on ``device``: half precision on a CPU, where only bfloat16 on a CPU
    with native bfloat16 is fast; None otherwise."""
    if device.type != "cpu" or dtype == torch.float32:
        return None
    if dtype == torch.float16:
        return "fp16 on the CPU is emulated and slower than fp32: use --precision bf16 or fp32"
    if not cpu_has_native_bf16():
        return "this CPU has no native bf16 (AMX or AVX-512 BF16): bf16 is emulated and slower than fp32"
    return None
