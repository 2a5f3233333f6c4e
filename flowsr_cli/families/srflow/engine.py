"""SRFlow as a tiled upscaler: fixed x4, halo tiles blended with linear feathers, position-tied noise, guard.

SRFlow's convolutions see the whole image, so tiles cannot be exact. Each tile reads its core plus a halo
of LR context; its output covers the core widened by a feather of half the halo, and where neighbours'
outputs overlap they are blended with linear weights that sum to one, so no seam shows. Crops start on
the grid of the flow's coarsest level, so a tile's latents are a window of the whole image's latents;
every latent row is drawn from its own seed, so the same seed gives the same image for any tile plan
(up to the tiling tolerance). Finished rows of output leave in bands as soon as no later tile touches them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import torch

from flowsr_cli.engine.memory import available_memory, choose_tile, halve_tile_on_oom
from flowsr_cli.engine.resize import resize_window
from flowsr_cli.engine.sampling import row_seed
from flowsr_cli.engine.upscaler import (
    ProgressCallback,
    TileSink,
    UpscaleReport,
    fixed_scale_error,
    guard_temperatures,
)
from flowsr_cli.families.registry import EngineOptions
from flowsr_cli.families.srflow.network import SCALE, SRFlow, SRFlowFeatures
from flowsr_cli.io.sizing import Size

DEFAULT_HALO = 16
"""LR pixels of context around each tile (--tile-pad auto). SRFlow's receptive field spans the image, but its
effective reach is short: on a tiny model, 16 pixels keep tiles within 5e-4 of untiled (8: 9e-2, 24: 1e-6)."""


PREDICTOR_HALO = 48
"""LR context (--tile-pad auto) with flowsr's own learned prior (``SRFlowLP.halo``), whose UNets reach
further than the flow: on the bundled srflow-lp (tile 48 on a B100 photo at LR 120x80), 16 pixels stayed
within 6.2e-3 of untiled, 32 within 2.0e-3 and 48 within 8.7e-5."""


class LatentPredictor(Protocol):
    """A learned prior over SRFlow's latents (an SRFlow-LP model), used instead of Gaussian latents."""

    flow: SRFlow
    size_multiple: int
    """The LR grid tiles must start on for the prior to see what the whole image would give it."""
    halo: int
    """LR context around each tile (--tile-pad auto) that keeps its tiles close to the untiled image."""

    def predict_latents(
        self,
        features: SRFlowFeatures,
        lr: torch.Tensor,
        origin: tuple[int, int] = (0, 0),
        whole: tuple[int, int] | None = None,
    ) -> list[torch.Tensor]:
        """The latents (in :meth:`SRFlow.latent_shapes` order) for an LR crop and its features; the crop's
        top-left pixel is ``origin`` (on the ``size_multiple`` grid) of an LR image of ``whole`` (height,
        width) pixels before padding (None: the crop is the whole image)."""
        ...


@dataclass(frozen=True)
class BlendAxis:
    """Along one axis: the LR samples a tile reads, the output samples it produces and their blend weights."""

    crop: range
    span: range
    weights: torch.Tensor
    """(len(span),) float32; over all tiles of the axis they sum to 1 at every output sample."""


def _feather(span: range, length: int, ramp: int) -> torch.Tensor:
    """1 inside ``span``, falling linearly to 0 over ``ramp`` samples at each end that is not an image border."""
    centres = torch.arange(span.start, span.stop, dtype=torch.float64) + 0.5
    weight = torch.ones(len(span), dtype=torch.float64)
    if ramp > 0 and span.start > 0:
        weight = torch.minimum(weight, (centres - span.start) / ramp)
    if ramp > 0 and span.stop < length:
        weight = torch.minimum(weight, (span.stop - centres) / ramp)
    return weight


def plan_blend_axis(in_size: int, tile: int, halo: int, multiple: int) -> list[BlendAxis]:
    """Tiles along one LR axis of ``in_size`` pixels with cores of ``tile`` pixels (0 or >= in_size: one tile).

    Cores and halo are rounded to ``multiple`` (the flow's coarsest grid); a tile's output covers its core
    widened by ``feather = halo // 2`` LR pixels, so neighbours overlap by ``2 * feather * SCALE`` samples.
    """
    out_size = SCALE * in_size
    if tile <= 0 or tile >= in_size:
        return [BlendAxis(range(in_size), range(out_size), torch.ones(out_size))]
    tile = max(multiple, tile // multiple * multiple)
    halo = math.ceil(halo / multiple) * multiple
    feather = min(halo // 2, tile // 2)
    cores = [range(start, min(start + tile, in_size)) for start in range(0, in_size, tile)]
    crops = [range(max(0, core.start - halo), min(in_size, core.stop + halo)) for core in cores]
    spans = [range(SCALE * max(0, core.start - feather), SCALE * min(in_size, core.stop + feather)) for core in cores]
    raw = [_feather(span, out_size, 2 * SCALE * feather) for span in spans]
    total = torch.zeros(out_size, dtype=torch.float64)
    for span, weight in zip(spans, raw):
        total[span.start : span.stop] += weight
    return [
        BlendAxis(crop, span, (weight / total[span.start : span.stop]).float())
        for crop, span, weight in zip(crops, spans, raw)
    ]


def gaussian_latents(
    model: SRFlow, features: SRFlowFeatures, seed: int, origin: tuple[int, int], full_padded: tuple[int, int]
) -> list[torch.Tensor]:
    """N(0, I) latents on the CPU for a crop whose top-left LR pixel is ``origin`` (a multiple of the model's
    ``size_multiple``) in an image whose padded LR size is ``full_padded``. Each latent row is drawn over the
    whole image's width from a seed tied to (seed, level, absolute row), so any crop gets the same values."""
    shapes = model.latent_shapes(features)
    padded_height, padded_width = features.padded_size
    latents = []
    for level, (channels, height, width) in enumerate(shapes):
        top, left = origin[0] * height // padded_height, origin[1] * width // padded_width
        full_width = full_padded[1] * width // padded_width
        rows = [
            torch.randn(
                channels,
                full_width,
                generator=torch.Generator().manual_seed(row_seed(seed, (top + row) * len(shapes) + level)),
            )[:, left : left + width]
            for row in range(height)
        ]
        latents.append(torch.stack(rows, dim=1).unsqueeze(0))
    return latents


@dataclass
class SRFlowUpscaler:
    """SRFlow x4 sampled with z = temperature * N(0, I) latents, or with a learned prior's latents, tile by tile."""

    model: SRFlow
    device: torch.device
    dtype: torch.dtype
    temperature: float
    name: str
    tile: str | int = "auto"
    tile_pad: str | int = "auto"
    guard: bool = True
    """Repair exploding inverses; evaluation turns it off to measure the raw inf rate."""
    notes: list[str] = field(default_factory=list)
    predictor: LatentPredictor | None = None
    """A learned prior whose predicted latents replace the Gaussian ones (seeds and temperature then unused)."""
    _reduced_tile: int | None = None

    @property
    def fixed_scale(self) -> int:
        """SRFlow only enlarges by exactly 4."""
        return SCALE

    @property
    def grid_period(self) -> int:
        """The period in output pixels of the pattern its latents can print: the first level's 2x2 squeeze."""
        return 2

    @property
    def stochastic(self) -> bool:
        """Gaussian latents at a positive temperature; a learned prior is deterministic."""
        return self.predictor is None and self.temperature > 0

    @property
    def gaussian(self) -> bool:
        """Latents are Gaussian at ``temperature`` (no learned prior)."""
        return self.predictor is None

    @property
    def halo(self) -> int:
        """Context around each tile in LR pixels: DEFAULT_HALO (the learned prior's own with one) unless
        --tile-pad says otherwise. A learned prior keeps at least 1 (rounded up to its grid by the tile
        plan), so every crop spans at least one step of its grid, which its UNets may need to pool."""
        if self.tile_pad != "auto":
            return int(self.tile_pad) if self.predictor is None else max(1, int(self.tile_pad))
        return DEFAULT_HALO if self.predictor is None else self.predictor.halo

    @property
    def _size_multiple(self) -> int:
        """The LR grid that tile crops start on: the flow's, or the learned prior's (coarser)."""
        return self.model.size_multiple if self.predictor is None else self.predictor.size_multiple

    @property
    def _latent_scale(self) -> float:
        """Factor on the base latents: the temperature on N(0, I), 1 on a learned prior's prediction."""
        return 1.0 if self.predictor is not None else self.temperature

    def _bytes_per_input_pixel(self) -> float:
        """Peak float32 bytes per LR pixel: the widest RRDB activations, the conditions of all levels (2xLR,
        LR, LR/2), the widest coupling input at the finest level (2xLR, 4 cells per LR pixel), the x4 output."""
        conditioner = self.model.conditioner
        encoder = max(conv.in_channels for conv in conditioner.modules() if isinstance(conv, torch.nn.Conv2d))
        convolutions = [conv for conv in self.model.flow_levels[0].modules() if isinstance(conv, torch.nn.Conv2d)]
        flow = max((max(conv.in_channels, conv.out_channels) for conv in convolutions), default=12)
        conditions = conditioner.out_channels * (4 + 1 + 1 / 4)
        output = SCALE * SCALE * 3 * 3
        return 4.0 * (3 * encoder + conditions + 4 * 3 * flow + output)

    def _tile_size(self) -> int:
        if self._reduced_tile is not None:
            return self._reduced_tile
        if self.tile != "auto":
            return int(self.tile)
        return choose_tile(available_memory(self.device), self._bytes_per_input_pixel(), self.halo)

    def upscale(
        self,
        lr: torch.Tensor,
        size: Size,
        sink: TileSink,
        seeds: Sequence[int] = (0,),
        progress: ProgressCallback | None = None,
    ) -> UpscaleReport:
        """Every seed's x4 image in bands of rows; on CUDA out-of-memory the tile is halved and the image redone."""
        if size != Size(SCALE * lr.shape[-1], SCALE * lr.shape[-2]):
            raise fixed_scale_error(self.name, SCALE)

        def attempt(tile: int) -> UpscaleReport:
            report = UpscaleReport()
            self._upscale_tiles(lr, sink, seeds, tile, progress, report)
            return report

        report, reduced = halve_tile_on_oom(
            attempt, self._tile_size(), max(lr.shape[-2:]), self.notes, self._reduced_tile is not None
        )
        if reduced is not None:
            self._reduced_tile = reduced
        return report

    def _upscale_tiles(
        self,
        lr: torch.Tensor,
        sink: TileSink,
        seeds: Sequence[int],
        tile: int,
        progress: ProgressCallback | None,
        report: UpscaleReport,
    ) -> None:
        height, width = lr.shape[-2:]
        multiple = self._size_multiple
        rows = plan_blend_axis(height, tile, self.halo, multiple)
        columns = plan_blend_axis(width, tile, self.halo, multiple)
        report.tiles, report.tile_size = len(rows) * len(columns), tile if len(rows) * len(columns) > 1 else 0
        pending = [torch.zeros(1, 3, 0, SCALE * width) for _ in seeds]
        first = 0  # the first output row not sent yet: pending bands start here
        steps, step = report.tiles * len(seeds), 0
        for index, row in enumerate(rows):
            grow = row.span.stop - first - pending[0].shape[2]
            pending = [torch.cat([band, band.new_zeros(1, 3, grow, band.shape[3])], dim=2) for band in pending]
            for column in columns:
                crop, features = self._encode(lr, row, column, self.dtype)
                weight = row.weights[:, None] * column.weights[None, :]
                for sample, seed in enumerate(seeds):

                    def render_progress(fraction: float, step: int = step) -> None:
                        if progress is not None:
                            progress((step + fraction) / steps)

                    output = self._render_guarded(lr, crop, features, row, column, seed, report, render_progress)
                    band = pending[sample][..., row.span.start - first : row.span.stop - first, :]
                    band[..., column.span.start : column.span.stop] += output * weight
                    step += 1
            done = rows[index + 1].span.start if index + 1 < len(rows) else SCALE * height
            for sample, band in enumerate(pending):
                sink(sample, range(first, done), range(SCALE * width), band[:, :, : done - first])
            pending = [band[:, :, done - first :] for band in pending]
            first = done

    def _autocast(self, dtype: torch.dtype) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32)

    def _encode(
        self, lr: torch.Tensor, row: BlendAxis, column: BlendAxis, dtype: torch.dtype
    ) -> tuple[torch.Tensor, SRFlowFeatures]:
        """The tile's LR crop on the device and its features, conditions in float32 (the inverse's dtype)."""
        crop = lr[:, :, row.crop.start : row.crop.stop, column.crop.start : column.crop.stop].to(self.device)
        with torch.inference_mode(), self._autocast(dtype):
            features = self.model.encode(crop)
        return crop, replace(features, conditions=[condition.float() for condition in features.conditions])

    def _base_latents(
        self,
        crop: torch.Tensor,
        features: SRFlowFeatures,
        row: BlendAxis,
        column: BlendAxis,
        seed: int,
        whole: tuple[int, int],
        dtype: torch.dtype,
    ) -> list[torch.Tensor]:
        """The learned prior's latents, or N(0, I) tied to absolute positions in an LR image of ``whole``
        (height, width) pixels; the temperature scales them."""
        origin = (row.crop.start, column.crop.start)
        if self.predictor is not None:
            with torch.inference_mode(), self._autocast(dtype):
                latents = self.predictor.predict_latents(features, crop, origin, whole)
            return [latent.float() for latent in latents]
        multiple = self._size_multiple
        full_padded = (math.ceil(whole[0] / multiple) * multiple, math.ceil(whole[1] / multiple) * multiple)
        return [latent.to(self.device) for latent in gaussian_latents(self.model, features, seed, origin, full_padded)]

    def _render(
        self,
        features: SRFlowFeatures,
        base: list[torch.Tensor] | None,
        scale: float,
        row: BlendAxis,
        column: BlendAxis,
        progress: ProgressCallback | None = None,
    ) -> torch.Tensor:
        """The tile's output window (its span) on the CPU, in float32, from ``scale`` times the base latents;
        ``progress`` gets the flow inverse's finished fraction."""
        if scale == 0 or base is None:
            latents = [features.conditions[0].new_zeros(1, *shape) for shape in self.model.latent_shapes(features)]
        else:
            latents = [latent * scale for latent in base]
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=False):
            output = self.model.sample(features, latents=latents, progress=progress)
        top, left = row.span.start - SCALE * row.crop.start, column.span.start - SCALE * column.crop.start
        return output[..., top : top + len(row.span), left : left + len(column.span)].to("cpu", torch.float32)

    def _render_guarded(
        self,
        lr: torch.Tensor,
        crop: torch.Tensor,
        features: SRFlowFeatures,
        row: BlendAxis,
        column: BlendAxis,
        seed: int,
        report: UpscaleReport,
        progress: ProgressCallback,
    ) -> torch.Tensor:
        """Render a tile (``progress`` gets the finished fraction); if the flow inverse exploded, retry in
        float32, then at halved temperatures, then at temperature 0; non-finite pixels that remain become the
        bicubic of the LR."""
        scale = self._latent_scale
        whole = (int(lr.shape[-2]), int(lr.shape[-1]))
        base = self._base_latents(crop, features, row, column, seed, whole, self.dtype) if scale else None
        output = self._render(features, base, scale, row, column, progress)
        if not self.guard or bool(torch.isfinite(output).all()):
            return output
        report.guarded_tiles += 1
        scales = guard_temperatures(scale)
        if self.dtype == torch.float32:
            scales = scales[1:]
        else:
            crop, features = self._encode(lr, row, column, torch.float32)
            if self.predictor is not None:
                base = self._base_latents(crop, features, row, column, seed, whole, torch.float32)
        for retry in scales:
            output = self._render(features, base, retry, row, column)
            if bool(torch.isfinite(output).all()):
                return output
        height, width = lr.shape[-2:]
        bicubic = resize_window(lr, (height, width), (SCALE * height, SCALE * width), row.span, column.span, (0, 0))
        return torch.where(torch.isfinite(output), output, bicubic)


def run_srflow(model: SRFlow, options: EngineOptions, predictor: LatentPredictor | None = None) -> SRFlowUpscaler:
    """The engine of an SRFlow model: Gaussian latents at the options' temperature, or ``predictor``'s."""
    return SRFlowUpscaler(
        model,
        options.device,
        options.dtype,
        options.temperature,
        options.name,
        tile=options.tile,
        tile_pad=options.tile_pad,
        guard=options.guard,
        notes=options.notes,
        predictor=predictor,
    )


def run_srflow_lp(model: LatentPredictor, options: EngineOptions) -> SRFlowUpscaler:
    """The engine of an SRFlow-LP model: its learned prior, or its flow alone under ``--prior gaussian``."""
    return run_srflow(model.flow, options, predictor=None if options.prior == "gaussian" else model)
