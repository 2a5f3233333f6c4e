"""The Upscaler interface every model implements, and building the one a run asks for."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from flowsr_cli.device import resolve_device, resolve_dtype
from flowsr_cli.errors import UsageError
from flowsr_cli.sizing import Size

if TYPE_CHECKING:
    from flowsr_cli.hub import Hub

ProgressCallback = Callable[[float], None]
"""Called with the finished fraction (0..1] of one image (all its samples)."""

TileSink = Callable[[int, range, range, torch.Tensor], None]
"""Receives finished output: (sample index, output rows, output columns, (1, C, rows, columns) float
tile in [0, 1] scale, possibly outside [0, 1])."""

BICUBIC = "bicubic"


@dataclass
class UpscaleReport:
    """How one image was produced: tiling, and tiles the exploding-inverse guard had to repair."""

    tiles: int = 0
    tile_size: int = 0
    """Side of a tile (its core, without context) in input pixels, as ``--tile`` gives it; 0 if untiled."""
    guarded_tiles: int = 0
    notes: list[str] = field(default_factory=list)


class Upscaler(Protocol):
    """Upscales a low-resolution tensor tile by tile into a sink, once per seed."""

    name: str
    notes: list[str]
    """Things to tell the user once per run (e.g. running on the CPU)."""

    @property
    def stochastic(self) -> bool:
        """True when different seeds give different outputs."""
        ...

    def upscale(
        self,
        lr: torch.Tensor,
        size: Size,
        sink: TileSink,
        seeds: Sequence[int] = (0,),
        progress: ProgressCallback | None = None,
    ) -> UpscaleReport:
        """``lr``: (1, C, h, w) float32 in [0, 1] on the CPU (C = 3 for models). Every output pixel of
        every seed reaches ``sink`` exactly once, as finite values."""
        ...


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


def fixed_scale(upscaler: Upscaler) -> int | None:
    """The one scale a fixed-scale model (SRFlow: 4) produces, or None for any scale."""
    return getattr(upscaler, "fixed_scale", None)


def fixed_scale_error(name: str, scale: int) -> UsageError:
    """What to tell someone who asks a fixed-scale model for another size."""
    return UsageError(
        f"{name} is a fixed ×{scale} model: use --scale {scale}, --model linf-lp for any scale, "
        f"or --allow-resample to resample its ×{scale} output"
    )


@dataclass
class ResampledUpscaler:
    """A fixed-scale upscaler whose output is resized to any size with the MATLAB bicubic (antialiased when
    shrinking): ``--allow-resample``. Each seed's native output is held in memory as float32."""

    inner: Upscaler
    scale: int
    name: str = field(init=False)
    notes: list[str] = field(init=False)
    """The wrapped upscaler's name and notes (the same list)."""

    def __post_init__(self) -> None:
        self.name, self.notes = self.inner.name, self.inner.notes

    @property
    def stochastic(self) -> bool:
        """As the wrapped upscaler."""
        return self.inner.stochastic

    def upscale(
        self,
        lr: torch.Tensor,
        size: Size,
        sink: TileSink,
        seeds: Sequence[int] = (0,),
        progress: ProgressCallback | None = None,
    ) -> UpscaleReport:
        """The native ``scale`` x output of every seed, resampled to ``size`` (passed through if it is native)."""
        from flowsr_cli.resize import resize

        native = Size(self.scale * lr.shape[-1], self.scale * lr.shape[-2])
        if size == native:
            return self.inner.upscale(lr, size, sink, seeds, progress)
        outputs = [torch.empty(1, lr.shape[1], native.height, native.width) for _ in seeds]

        def collect(sample: int, rows: range, columns: range, tile: torch.Tensor) -> None:
            outputs[sample][..., rows.start : rows.stop, columns.start : columns.stop] = tile

        report = self.inner.upscale(lr, native, collect, seeds, progress)
        for sample, output in enumerate(outputs):
            sink(sample, range(size.height), range(size.width), resize(output, (size.height, size.width)))
        return report


def create_upscaler(request: UpscalerRequest) -> Upscaler:
    """Build the upscaler a request names, on its device."""
    from flowsr_cli.bicubic_engine import BicubicUpscaler
    from flowsr_cli.flow_engine import FlowUpscaler
    from flowsr_cli.memory import query_chunk
    from flowsr_cli.models import load_model
    from flowsr_cli.models.linf import LINF
    from flowsr_cli.models.linf_lp import LINFLP
    from flowsr_cli.models.srflow import SRFlow
    from flowsr_cli.prior_engine import LearnedPriorUpscaler

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
    model = load_model(path, choice.device)
    predicts_latents = hasattr(model, "predict_latents")
    if request.prior == "learned" and not (predicts_latents or isinstance(model, LINFLP)):
        raise UsageError(f"model {request.model!r} has no learned prior; use --prior gaussian")
    sampling: dict[str, Any] = {
        "dtype": resolve_dtype(request.precision, choice.device),
        "temperature": request.temperature,
        "name": request.model,
        "tile": request.tile,
        "tile_pad": request.tile_pad,
        "guard": request.guard,
        "notes": notes,
    }
    flow = getattr(model, "flow", model)
    if isinstance(flow, SRFlow):
        from flowsr_cli.srflow_engine import SRFlowUpscaler

        predictor = model if predicts_latents and request.prior != "gaussian" else None
        return SRFlowUpscaler(flow, choice.device, predictor=predictor, **sampling)
    chunk = query_chunk(choice.device)
    if isinstance(model, LINFLP):
        if request.prior in (None, "learned"):
            return LearnedPriorUpscaler(
                model, choice.device, name=request.model, tile=request.tile, chunk_queries=chunk, notes=notes
            )
        model = model.flow
    elif not isinstance(model, LINF):
        raise UsageError(f"model {request.model!r} is a {model.spec['name']}, which `upscale` cannot run yet")
    return FlowUpscaler(model, choice.device, chunk_queries=chunk, **sampling)
