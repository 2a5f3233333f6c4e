"""The Upscaler interface every model implements, and building the one a run asks for."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from flowsr_cli.device import resolve_device, resolve_dtype
from flowsr_cli.errors import UsageError
from flowsr_cli.models import load_model
from flowsr_cli.models.linf import LINF
from flowsr_cli.resize import resize
from flowsr_cli.sampling import gaussian_latent
from flowsr_cli.sizing import Size

ProgressCallback = Callable[[float], None]
"""Called with the finished fraction (0..1] of one output."""

BICUBIC = "bicubic"


class Upscaler(Protocol):
    """Turns a low-resolution RGB tensor into high-resolution ones of a requested size."""

    name: str

    @property
    def stochastic(self) -> bool:
        """True when different seeds give different outputs."""
        ...

    def upscale(
        self, lr: torch.Tensor, size: Size, seeds: Sequence[int] = (0,), progress: ProgressCallback | None = None
    ) -> Iterator[torch.Tensor]:
        """``lr``: (1, 3, h, w) float32 in [0, 1] on the CPU. Yields one (1, 3, size.height, size.width)
        float32 CPU tensor per seed; values may leave [0, 1] (callers clamp) and may be non-finite."""
        ...


@dataclass
class BicubicUpscaler:
    """The MATLAB-style bicubic resize: the baseline every model is compared with."""

    device: torch.device
    dtype: torch.dtype
    name: str = BICUBIC
    stochastic: bool = False

    def upscale(
        self, lr: torch.Tensor, size: Size, seeds: Sequence[int] = (0,), progress: ProgressCallback | None = None
    ) -> Iterator[torch.Tensor]:
        """Bicubic interpolation to ``size`` (the same image for every seed)."""
        with torch.inference_mode():
            hr = resize(lr.to(self.device, self.dtype), (size.height, size.width)).to("cpu", torch.float32)
        for _ in seeds:
            if progress is not None:
                progress(1.0)
            yield hr


@dataclass
class FlowUpscaler:
    """LINF sampled with Gaussian latents z = temperature * N(0, I); encoder features computed once per image."""

    model: LINF
    device: torch.device
    temperature: float
    name: str
    chunk_queries: int = 16384

    @property
    def stochastic(self) -> bool:
        """Sampling is deterministic at temperature 0."""
        return self.temperature > 0

    def upscale(
        self, lr: torch.Tensor, size: Size, seeds: Sequence[int] = (0,), progress: ProgressCallback | None = None
    ) -> Iterator[torch.Tensor]:
        """One HR image per seed from a single pass of the encoder."""
        with torch.inference_mode():
            features = self.model.encode(lr.to(self.device) * 2 - 1)
        for seed in seeds:
            latent = gaussian_latent(seed, self.temperature, lr.shape[0], self.model.dim)
            with torch.inference_mode():
                hr = self.model.render(features, (size.height, size.width), latent, self.chunk_queries, progress)
            yield ((hr + 1) / 2).to("cpu", torch.float32)


@dataclass(frozen=True)
class UpscalerRequest:
    """What the user chose: a model, where to run it, and how to sample it."""

    model: str
    device: str = "auto"
    precision: str = "auto"
    prior: str | None = None
    temperature: float = 0.5
    models_dir: Path | None = None


def resolve_model_file(model: str, models_dir: Path | None) -> Path | None:
    """The model file ``model`` names: a path to a file, or a name in ``models_dir`` (imported models)."""
    path = Path(model).expanduser()
    if path.suffix == ".safetensors" or path.is_file():
        return path
    if models_dir is not None and (models_dir / f"{model}.safetensors").is_file():
        return models_dir / f"{model}.safetensors"
    return None


def available_models(models_dir: Path | None) -> list[str]:
    """Names ``--model`` accepts besides paths."""
    local = sorted(path.stem for path in models_dir.glob("*.safetensors")) if models_dir and models_dir.is_dir() else []
    return [BICUBIC, *local]


def create_upscaler(request: UpscalerRequest) -> Upscaler:
    """Build the upscaler a request names on its device."""
    device = resolve_device(request.device)
    if request.model == BICUBIC:
        if request.prior == "learned":
            raise UsageError("--prior learned needs a model with a learned prior; bicubic has none")
        return BicubicUpscaler(device, resolve_dtype(request.precision))
    path = resolve_model_file(request.model, request.models_dir)
    if path is None:
        known = ", ".join(available_models(request.models_dir))
        raise UsageError(f"unknown model {request.model!r}; available: {known}, or a path to a .safetensors model")
    model = load_model(path, device)
    if not isinstance(model, LINF):
        raise UsageError(f"model {request.model!r} is a {model.spec['name']}, which `upscale` cannot run yet")
    if request.prior == "learned":
        raise UsageError(f"model {request.model!r} has no learned prior; use --prior gaussian")
    return FlowUpscaler(model, device, request.temperature, name=request.model)
