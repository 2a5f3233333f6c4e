"""The Upscaler interface every model implements, and the named upscalers `upscale` can use."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from flowsr_cli.device import resolve_device, resolve_dtype
from flowsr_cli.errors import UsageError
from flowsr_cli.resize import resize
from flowsr_cli.sizing import Size

ProgressCallback = Callable[[float], None]
"""Called with the finished fraction (0..1] of one image."""


class Upscaler(Protocol):
    """Turns a low-resolution RGB tensor into a high-resolution one of a requested size."""

    name: str

    def upscale(self, lr: torch.Tensor, size: Size, progress: ProgressCallback | None = None) -> torch.Tensor:
        """``lr``: (1, 3, h, w) float32 in [0, 1] on the CPU. Returns (1, 3, size.height, size.width)
        float32 on the CPU; values may leave [0, 1] (callers clamp) and may be non-finite for flows."""
        ...


@dataclass
class BicubicUpscaler:
    """The MATLAB-style bicubic resize: the baseline every model is compared with."""

    device: torch.device
    dtype: torch.dtype
    name: str = "bicubic"

    def upscale(self, lr: torch.Tensor, size: Size, progress: ProgressCallback | None = None) -> torch.Tensor:
        """Bicubic interpolation to ``size``."""
        with torch.inference_mode():
            hr = resize(lr.to(self.device, self.dtype), (size.height, size.width))
        if progress is not None:
            progress(1.0)
        return hr.to("cpu", torch.float32)


_UPSCALERS: dict[str, Callable[[torch.device, torch.dtype], Upscaler]] = {"bicubic": BicubicUpscaler}


def available_upscalers() -> list[str]:
    """Names accepted by ``--model``."""
    return sorted(_UPSCALERS)


def create_upscaler(model: str, device: str, precision: str) -> Upscaler:
    """Build the upscaler named ``model`` on the chosen device and precision."""
    factory = _UPSCALERS.get(model)
    if factory is None:
        raise UsageError(f"unknown model {model!r}; available: {', '.join(available_upscalers())}")
    return factory(resolve_device(device), resolve_dtype(precision))
