"""The Upscaler interface every engine implements, its report, and wrappers that work on any upscaler."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from flowsr_cli.errors import UsageError
from flowsr_cli.io.sizing import Size

TEMPERATURE_HALVINGS = 4
"""How often the exploding-inverse guard halves the temperature of a tile, before using 0."""

ProgressCallback = Callable[[float], None]
"""Called with the finished fraction (0..1] of one image (all its samples)."""

TileSink = Callable[[int, range, range, torch.Tensor], None]
"""Receives finished output: (sample index, output rows, output columns, (1, C, rows, columns) float
tile in [0, 1] scale, possibly outside [0, 1])."""


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


def guard_temperatures(temperature: float) -> list[float]:
    """The temperatures at which the exploding-inverse guard retries a tile: ``temperature`` halved
    :data:`TEMPERATURE_HALVINGS` times (the first entry is ``temperature`` itself), then 0."""
    return [temperature * 0.5**halving for halving in range(TEMPERATURE_HALVINGS + 1)] + [0.0]


def fixed_scale(upscaler: Upscaler) -> int | None:
    """The one scale a fixed-scale model (SRFlow: 4) produces, or None for any scale."""
    return getattr(upscaler, "fixed_scale", None)


def samples_gaussian(upscaler: Upscaler) -> bool:
    """True when the upscaler draws Gaussian latents at its ``temperature`` (evaluation sweeps temperatures)."""
    return bool(getattr(upscaler, "gaussian", False))


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
        from flowsr_cli.engine.resize import resize

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
