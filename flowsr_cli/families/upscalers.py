"""The upscaler a run asks for: the bicubic baseline by name, or a model file (a path, or a name the hub
resolves) run by the engine its family registered."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flowsr_cli.engine.bicubic import BICUBIC, BicubicUpscaler
from flowsr_cli.engine.device import resolve_device, resolve_dtype
from flowsr_cli.engine.upscaler import Upscaler
from flowsr_cli.errors import UsageError
from flowsr_cli.families.model_file import load_model
from flowsr_cli.families.registry import EngineOptions, build_engine

if TYPE_CHECKING:
    from flowsr_cli.hub.catalog import Hub


@dataclass(frozen=True)
class UpscalerRequest:
    """What the user chose: a model, where to run it, how to tile and how to sample it."""

    model: str
    device: str = "auto"
    precision: str = "auto"
    tile: str | int = "auto"
    tile_pad: str | int = "auto"
    prior: str | None = None
    temperature: float = 0.5
    guard: bool = True
    hub: Hub | None = None
    """Turns model names into files (registry, cache, downloads); None accepts paths only."""


def create_upscaler(request: UpscalerRequest) -> Upscaler:
    """Build the upscaler a request names, on its device."""
    choice = resolve_device(request.device)
    notes = [choice.note] if choice.note else []
    if request.model == BICUBIC:
        if request.prior == "learned":
            raise UsageError("--prior learned needs a model with a learned prior; bicubic has none")
        return BicubicUpscaler(choice.device, tile=request.tile, notes=notes)
    path = request.hub.resolve(request.model) if request.hub is not None else Path(request.model)
    if path is None:
        known = ", ".join([BICUBIC, *(request.hub.entries() if request.hub is not None else ())])
        raise UsageError(f"unknown model {request.model!r}; available: {known}, or a path to a .safetensors model")
    options = EngineOptions(
        name=request.model,
        device=choice.device,
        dtype=resolve_dtype(request.precision, choice.device),
        temperature=request.temperature,
        prior=request.prior,
        tile=request.tile,
        tile_pad=request.tile_pad,
        guard=request.guard,
        notes=notes,
    )
    return build_engine(load_model(path, choice.device), options)
