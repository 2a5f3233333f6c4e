"""Fixed-scale flows (SRFlow, HCFlow) as tiled upscalers: halo tiles blended with linear feathers, position-tied
noise, the exploding-inverse guard.

Such flows' convolutions see the whole image, so tiles cannot be exact. Each tile reads its core plus a halo
of LR context; its output covers the core widened by a feather of half the halo, and where neighbours'
outputs overlap they are blended with linear weights that sum to one, so no seam shows. Crops start on
the grid of the flow's coarsest level, so a tile's latents are a window of the whole image's latents;
every latent row is drawn from its own seed, so the same seed gives the same image for any tile plan
(up to the tiling tolerance). Finished rows of output leave in bands as soon as no later tile touches them.

A family plugs its network in by subclassing :class:`BlendedUpscaler`: its ``model`` satisfies
:class:`TiledFlow`, and it says how to sample the flow from latents at a temperature, how to keep the
features in float32 and how much memory an LR pixel costs.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

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
from flowsr_cli.io.sizing import Size


class TiledFlow(Protocol):
    """What the engine needs of a fixed-scale flow network."""

    scale: int
    """The one scale it enlarges by."""
    size_multiple: int
    """The LR grid of its coarsest level: crops start on it, so their latents are windows of the image's."""

    def encode(self, lr: torch.Tensor) -> Any:
        """LR (1, 3, h, w) in [0, 1] -> the features every sample of it reuses."""
        ...

    def latent_shapes(self, features: Any) -> list[tuple[int, int, int]]:
        """(C, H, W) of each latent of an LR's features, for an LR padded to ``size_multiple``."""
        ...


class LatentPredictor(Protocol):
    """A learned prior over a flow's latents, used instead of Gaussian latents."""

    size_multiple: int
    """The LR grid tiles must start on for the prior to see what the whole image would give it."""
    halo: int
    """LR context around each tile (--tile-pad auto) that keeps its tiles close to the untiled image."""

    def predict_latents(
        self,
        features: Any,
        lr: torch.Tensor,
        origin: tuple[int, int] = (0, 0),
        whole: tuple[int, int] | None = None,
    ) -> list[torch.Tensor]:
        """The latents (in the flow's ``latent_shapes`` order, at temperature 1) for an LR crop and its
        features; the crop's top-left pixel is ``origin`` (on the ``size_multiple`` grid) of an LR image of
        ``whole`` (height, width) pixels before padding (None: the crop is the whole image)."""
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


def plan_blend_axis(in_size: int, tile: int, halo: int, multiple: int, scale: int) -> list[BlendAxis]:
    """Tiles along one LR axis of ``in_size`` pixels with cores of ``tile`` pixels (0 or >= in_size: one tile),
    for an output ``scale`` times larger.

    Cores and halo are rounded to ``multiple`` (the flow's coarsest grid); a tile's output covers its core
    widened by ``feather = halo // 2`` LR pixels, so neighbours overlap by ``2 * feather * scale`` samples.
    """
    out_size = scale * in_size
    if tile <= 0 or tile >= in_size:
        return [BlendAxis(range(in_size), range(out_size), torch.ones(out_size))]
    tile = max(multiple, tile // multiple * multiple)
    halo = math.ceil(halo / multiple) * multiple
    feather = min(halo // 2, tile // 2)
    cores = [range(start, min(start + tile, in_size)) for start in range(0, in_size, tile)]
    crops = [range(max(0, core.start - halo), min(in_size, core.stop + halo)) for core in cores]
    spans = [range(scale * max(0, core.start - feather), scale * min(in_size, core.stop + feather)) for core in cores]
    raw = [_feather(span, out_size, 2 * scale * feather) for span in spans]
    total = torch.zeros(out_size, dtype=torch.float64)
    for span, weight in zip(spans, raw):
        total[span.start : span.stop] += weight
    return [
        BlendAxis(crop, span, (weight / total[span.start : span.stop]).float())
        for crop, span, weight in zip(crops, spans, raw)
    ]


def gaussian_latents(
    shapes: Sequence[tuple[int, int, int]],
    crop_size: tuple[int, int],
    seed: int,
    origin: tuple[int, int],
    whole_size: tuple[int, int],
) -> list[torch.Tensor]:
    """N(0, I) latents of ``shapes`` on the CPU for an LR crop of ``crop_size`` (height, width, padded as the
    shapes are) whose top-left LR pixel is ``origin`` (on the flow's ``size_multiple`` grid) in an image of
    padded LR size ``whole_size``. Each latent row is drawn over the whole image's width from a seed tied to
    (seed, level, absolute row), so any crop gets the same values."""
    latents = []
    for level, (channels, height, width) in enumerate(shapes):
        top, left = origin[0] * height // crop_size[0], origin[1] * width // crop_size[1]
        full_width = whole_size[1] * width // crop_size[1]
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


def padded(size: tuple[int, int], multiple: int) -> tuple[int, int]:
    """(height, width) rounded up to ``multiple``."""
    return math.ceil(size[0] / multiple) * multiple, math.ceil(size[1] / multiple) * multiple


@dataclass
class BlendedUpscaler(ABC):
    """A fixed-scale flow sampled with z = temperature * N(0, I) latents, or a learned prior's, tile by tile.

    Subclasses give the family's sampling (:meth:`_sample`), its features in float32 (:meth:`_float_features`),
    its memory per LR pixel (:meth:`_bytes_per_input_pixel`) and its measured :attr:`default_halo`."""

    model: TiledFlow
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

    default_halo: ClassVar[int]
    """LR context around each tile (--tile-pad auto) without a learned prior, measured per family."""

    @abstractmethod
    def _sample(
        self, features: Any, latents: list[torch.Tensor] | None, scale: float, progress: ProgressCallback | None
    ) -> torch.Tensor:
        """The flow's output for the crop (1, 3, fixed_scale x its size) in float32 from ``scale`` times ``latents``
        (N(0, I)-scale; None: all zero, the prior means); ``progress`` gets the finished fraction."""

    @abstractmethod
    def _float_features(self, features: Any) -> Any:
        """The features with everything the flow's inverse reads in float32."""

    @abstractmethod
    def _bytes_per_input_pixel(self) -> float:
        """Peak float32 bytes per LR pixel of a tile's crop."""

    @property
    def fixed_scale(self) -> int:
        """The flow only enlarges by its own scale."""
        return self.model.scale

    @property
    def grid_period(self) -> int:
        """The period in output pixels of the pattern its latents can print: the finest level's 2x2 squeeze."""
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
        """Context around each tile in LR pixels: :attr:`default_halo` (the learned prior's own with one) unless
        --tile-pad says otherwise. A learned prior keeps at least 1 (rounded up to its grid by the tile
        plan), so every crop spans at least one step of its grid, which its UNets may need to pool."""
        if self.tile_pad != "auto":
            return int(self.tile_pad) if self.predictor is None else max(1, int(self.tile_pad))
        return self.default_halo if self.predictor is None else self.predictor.halo

    @property
    def _size_multiple(self) -> int:
        """The LR grid that tile crops start on: the flow's, or the learned prior's (coarser)."""
        return self.model.size_multiple if self.predictor is None else self.predictor.size_multiple

    @property
    def _latent_scale(self) -> float:
        """Factor on the base latents: the temperature on N(0, I), 1 on a learned prior's prediction."""
        return 1.0 if self.predictor is not None else self.temperature

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
        """Every seed's image in bands of rows; on CUDA out-of-memory the tile is halved and the image redone."""
        scale = self.fixed_scale
        if size != Size(scale * lr.shape[-1], scale * lr.shape[-2]):
            raise fixed_scale_error(self.name, scale)

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
        scale, multiple = self.fixed_scale, self._size_multiple
        rows = plan_blend_axis(height, tile, self.halo, multiple, scale)
        columns = plan_blend_axis(width, tile, self.halo, multiple, scale)
        report.tiles, report.tile_size = len(rows) * len(columns), tile if len(rows) * len(columns) > 1 else 0
        pending = [torch.zeros(1, 3, 0, scale * width) for _ in seeds]
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
            done = rows[index + 1].span.start if index + 1 < len(rows) else scale * height
            for sample, band in enumerate(pending):
                sink(sample, range(first, done), range(scale * width), band[:, :, : done - first])
            pending = [band[:, :, done - first :] for band in pending]
            first = done

    def _autocast(self, dtype: torch.dtype) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32)

    def _encode(
        self, lr: torch.Tensor, row: BlendAxis, column: BlendAxis, dtype: torch.dtype
    ) -> tuple[torch.Tensor, Any]:
        """The tile's LR crop on the device and its features, in float32 where the inverse reads them."""
        crop = lr[:, :, row.crop.start : row.crop.stop, column.crop.start : column.crop.stop].to(self.device)
        with torch.inference_mode(), self._autocast(dtype):
            features = self.model.encode(crop)
        return crop, self._float_features(features)

    def _base_latents(
        self,
        crop: torch.Tensor,
        features: Any,
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
        multiple = self.model.size_multiple
        crop_size = padded((len(row.crop), len(column.crop)), multiple)
        drawn = gaussian_latents(self.model.latent_shapes(features), crop_size, seed, origin, padded(whole, multiple))
        return [latent.to(self.device) for latent in drawn]

    def _render(
        self,
        features: Any,
        base: list[torch.Tensor] | None,
        scale: float,
        row: BlendAxis,
        column: BlendAxis,
        progress: ProgressCallback | None = None,
    ) -> torch.Tensor:
        """The tile's output window (its span) on the CPU, in float32, from ``scale`` times the base latents;
        ``progress`` gets the flow inverse's finished fraction."""
        latents = None if scale == 0 else base
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=False):
            output = self._sample(features, latents, scale, progress)
        factor = self.fixed_scale
        top, left = row.span.start - factor * row.crop.start, column.span.start - factor * column.crop.start
        return output[..., top : top + len(row.span), left : left + len(column.span)].to("cpu", torch.float32)

    def _render_guarded(
        self,
        lr: torch.Tensor,
        crop: torch.Tensor,
        features: Any,
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
        factor = self.fixed_scale
        bicubic = resize_window(lr, (height, width), (factor * height, factor * width), row.span, column.span, (0, 0))
        return torch.where(torch.isfinite(output), output, bicubic)
