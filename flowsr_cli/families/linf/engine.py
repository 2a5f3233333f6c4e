"""LINF as a tiled upscaler: exact tiles, seed-stable noise, precision, CUDA OOM retry, inverse guard."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from flowsr_cli.engine.memory import available_memory, choose_tile, halve_tile_on_oom, query_chunk
from flowsr_cli.engine.onnx_part import OnnxPart
from flowsr_cli.engine.sampling import gaussian_latent
from flowsr_cli.engine.tiling import Tile, patch_positions, plan_tiles
from flowsr_cli.engine.upscaler import ProgressCallback, TileSink, UpscaleReport, guard_temperatures
from flowsr_cli.families.linf.network import LINF, LRFeatures
from flowsr_cli.families.registry import EngineOptions
from flowsr_cli.io.sizing import Size


@dataclass
class FlowUpscaler:
    """LINF sampled with Gaussian latents z = temperature * N(0, I), tile by tile."""

    model: LINF
    device: torch.device
    dtype: torch.dtype
    temperature: float
    name: str
    tile: str | int = "auto"
    tile_pad: str | int = "auto"
    chunk_queries: int = 16384
    guard: bool = True
    """Repair exploding inverses; evaluation turns it off to measure the raw inf rate."""
    notes: list[str] = field(default_factory=list)
    _reduced_tile: int | None = None

    @property
    def stochastic(self) -> bool:
        """Sampling is deterministic at temperature 0."""
        return self.temperature > 0

    @property
    def gaussian(self) -> bool:
        """Latents are Gaussian at ``temperature``."""
        return True

    @property
    def halo(self) -> int:
        """Context around each tile: the model's receptive field unless --tile-pad says otherwise."""
        return self.model.receptive_radius if self.tile_pad == "auto" else int(self.tile_pad)

    def _bytes_per_input_pixel(self, scale: float) -> float:
        encoder = self.model.encoder.out_channels * 4 * 8
        fourier = self.model.hidden * 4 * 4
        output = scale * scale * 3 * 4 * 4
        return float(encoder + fourier + output)

    def _tile_size(self, lr: torch.Tensor, size: Size) -> int:
        if self._reduced_tile is not None:
            return self._reduced_tile
        if self.tile != "auto":
            return int(self.tile)
        scale = size.height / lr.shape[-2]
        return choose_tile(available_memory(self.device), self._bytes_per_input_pixel(scale), self.halo)

    def upscale(
        self,
        lr: torch.Tensor,
        size: Size,
        sink: TileSink,
        seeds: Sequence[int] = (0,),
        progress: ProgressCallback | None = None,
    ) -> UpscaleReport:
        """Every seed's image, tile by tile; on CUDA out-of-memory the tile is halved and the image redone."""

        def attempt(tile: int) -> UpscaleReport:
            report = UpscaleReport()
            self._upscale_tiles(lr, size, sink, seeds, tile, progress, report)
            return report

        report, reduced = halve_tile_on_oom(
            attempt, self._tile_size(lr, size), max(lr.shape[-2:]), self.notes, self._reduced_tile is not None
        )
        if reduced is not None:
            self._reduced_tile = reduced
        return report

    def _upscale_tiles(
        self,
        lr: torch.Tensor,
        size: Size,
        sink: TileSink,
        seeds: Sequence[int],
        tile: int,
        progress: ProgressCallback | None,
        report: UpscaleReport,
    ) -> None:
        height, width = lr.shape[-2:]
        patch = self.model.patch_size
        tiles = plan_tiles(
            (height, width),
            patch_positions(height, size.height, patch),
            patch_positions(width, size.width, patch),
            tile,
            self.halo,
        )
        report.tiles, report.tile_size = len(tiles), tile if len(tiles) > 1 else 0
        steps = len(tiles) * len(seeds)
        for index, part in enumerate(tiles):
            features = self._encode(lr, part, self.dtype)
            for sample, seed in enumerate(seeds):
                step = index * len(seeds) + sample

                def tile_progress(fraction: float, step: int = step) -> None:
                    if progress is not None:
                        progress((step + fraction) / steps)

                output = self._render_guarded(lr, features, size, part, seed, report, tile_progress)
                sink(sample, *self._pixel_window(part, size), ((output + 1) / 2).to("cpu", torch.float32))

    def _autocast(self, dtype: torch.dtype) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32)

    def _encode(self, lr: torch.Tensor, part: Tile, dtype: torch.dtype) -> LRFeatures:
        rows, columns = part.rows.crop, part.columns.crop
        crop = lr[:, :, rows.start : rows.stop, columns.start : columns.stop].to(self.device) * 2 - 1
        with torch.inference_mode(), self._autocast(dtype):
            return self.model.encode(
                crop, origin=(rows.start, columns.start), full_size=tuple(lr.shape[-2:]), whole_unit=lr
            )

    def _render(
        self,
        features: LRFeatures,
        size: Size,
        part: Tile,
        seed: int,
        temperature: float,
        dtype: torch.dtype,
        progress: ProgressCallback | None,
    ) -> torch.Tensor:
        width = math.ceil(size.width / self.model.patch_size)
        latent = gaussian_latent(seed, temperature, 1, self.model.dim, width)
        with torch.inference_mode(), self._autocast(dtype):
            return self.model.render(
                features,
                (size.height, size.width),
                latent,
                part.rows.out,
                part.columns.out,
                chunk_queries=self.chunk_queries,
                progress=progress,
            )

    def _render_guarded(
        self,
        lr: torch.Tensor,
        features: LRFeatures,
        size: Size,
        part: Tile,
        seed: int,
        report: UpscaleReport,
        progress: ProgressCallback | None,
    ) -> torch.Tensor:
        """Render a tile; if the flow inverse exploded, retry in float32, then at halved temperatures,
        then at temperature 0; non-finite pixels that remain become the bilinear base."""
        output = self._render(features, size, part, seed, self.temperature, self.dtype, progress)
        if not self.guard or bool(torch.isfinite(output).all()):
            return output
        report.guarded_tiles += 1
        exact = features if self.dtype == torch.float32 else self._encode(lr, part, torch.float32)
        temperatures = guard_temperatures(self.temperature)
        if self.dtype == torch.float32:
            temperatures = temperatures[1:]
        for temperature in temperatures:
            output = self._render(exact, size, part, seed, temperature, torch.float32, None)
            if bool(torch.isfinite(output).all()):
                return output
        base = self.model.bilinear_base(exact, (size.height, size.width), *self._pixel_window(part, size))
        return torch.where(torch.isfinite(output), output, base)

    def _pixel_window(self, part: Tile, size: Size) -> tuple[range, range]:
        """The output pixel rows and columns a tile owns."""
        patch = self.model.patch_size
        rows = range(part.rows.out.start * patch, min(part.rows.out.stop * patch, size.height))
        columns = range(part.columns.out.start * patch, min(part.columns.out.stop * patch, size.width))
        return rows, columns


def use_onnx(model: LINF, options: EngineOptions) -> None:
    """Under the ``onnx`` backend, run LINF's plain networks with ONNX Runtime: its encoder (once per tile) and the
    hidden layers of its conditioning MLP (once per band of queries); the Fourier features, the MLP's last layer
    (the flow's affine parameters) and the flow stay in PyTorch."""
    if options.onnx is not None:
        model.encoder = options.onnx.wrap(model.encoder, "encoder")
        if not isinstance(model.mlp[0], OnnxPart):  # an earlier engine of this model swapped it already
            model.mlp = nn.Sequential(options.onnx.wrap(model.mlp[:-1], "mlp"), model.mlp[-1])


def run_linf(model: LINF, options: EngineOptions) -> FlowUpscaler:
    """The engine of a LINF model: Gaussian latents at the options' temperature."""
    use_onnx(model, options)
    return FlowUpscaler(
        model,
        options.device,
        options.dtype,
        options.temperature,
        options.name,
        tile=options.tile,
        tile_pad=options.tile_pad,
        chunk_queries=query_chunk(options.device),
        guard=options.guard,
        notes=options.notes,
    )
