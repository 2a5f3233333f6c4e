"""LINF-LP as a tiled upscaler: the latent module predicts z, the frozen flow inverts it (deterministic).

Tiles are planned on the latent grid: each core of latent cells is predicted from a window reaching
the latent module's receptive field past it, aligned to the UNet's pooling grid, and from an LR crop
(aligned to the LR branch's stride) wide enough for the encoder, the LR branch and the initial
prior. Every coordinate is the whole image's, so tiles reproduce the untiled output.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from flowsr_cli.engine.memory import available_memory, choose_window, query_chunk
from flowsr_cli.engine.upscaler import ProgressCallback, TileSink, Upscaler, UpscaleReport
from flowsr_cli.families.common.latent import LR_STRIDE, LatentModule, lr_positions
from flowsr_cli.families.linf.engine import run_linf, use_onnx
from flowsr_cli.families.linf.prior import LINFLP
from flowsr_cli.families.registry import EngineOptions
from flowsr_cli.io.sizing import Size

TILE_PHASES = (0.15, 0.5, 0.88)
"""Where a tile's progress stands once its LR features, the flow's conditioning of its core and its
predicted latents are done; the render takes the rest. Measured shares of a tile's time (CPU, x4): the
bundled linf-lp 8/38/45/9 %, the paper's EDSR-baseline LINF-LP 23/31/33/12 %."""


@dataclass(frozen=True)
class PriorTileAxis:
    """Along one axis: latent cells produced (core), latent cells predicted (window), LR pixels read."""

    core: range
    window: range
    crop: range


def _floor_to(value: int, multiple: int) -> int:
    return value // multiple * multiple


def plan_prior_axis(model: LINFLP, out_length: int, lr_length: int, core_cells: int) -> list[PriorTileAxis]:
    """Tiles along one axis for cores of ``core_cells`` latent cells (0: one tile)."""
    cells = model.latent_count(out_length)
    multiple = model.latent.multiple
    reach = model.latent.receptive_field
    margin = max(model.flow.receptive_radius, model.latent.lr_reach + LR_STRIDE, 6) + 2
    positions = lr_positions(out_length, model.patch_size, lr_length, count=cells).tolist()
    if core_cells <= 0 or core_cells >= cells:
        return [PriorTileAxis(range(cells), range(cells), range(lr_length))]
    core_cells = max(multiple, _floor_to(core_cells, multiple))
    balanced = math.ceil(cells / math.ceil(cells / core_cells))
    core_cells = -(-balanced // multiple) * multiple  # equal tiles: no thin last tile with a full window
    tiles = []
    for start in range(0, cells, core_cells):
        stop = min(cells, start + core_cells)
        window_start = max(0, _floor_to(start - reach, multiple))
        window_stop = min(cells, -(-(stop + reach) // multiple) * multiple)
        crop_start = max(0, _floor_to(math.floor(positions[window_start]) - margin, LR_STRIDE))
        crop_stop = min(lr_length, math.ceil(positions[window_stop - 1]) + margin + 1)
        tiles.append(PriorTileAxis(range(start, stop), range(window_start, window_stop), range(crop_start, crop_stop)))
    return tiles


@dataclass
class LearnedPriorUpscaler:
    """The learned prior, tile by tile; seeds do not matter. The flow's conditioning of a tile's core
    is computed once and shared by the forward pass (z_init) and the inverse (the output); that of the
    context around the core, which only the forward pass reads, is computed there and not kept."""

    model: LINFLP
    device: torch.device
    name: str
    tile: str | int = "auto"
    chunk_queries: int = 16384
    notes: list[str] = field(default_factory=list)
    dtype: torch.dtype = torch.float32
    """Compute dtype of the encoder, the conditioning MLP and the latent module, and what the conditioning grid
    stores (the flow computes in float32)."""
    _grid_memory: torch.Tensor | None = field(default=None, repr=False)
    """Memory of the largest conditioning grid so far, kept for the next tile and image (see :meth:`_grid_space`)."""

    @property
    def stochastic(self) -> bool:
        """The learned prior ignores seeds."""
        return False

    def window_side(self, scale: float, reserved: int = 0) -> int:
        """The side (LR pixels) of the largest window the memory budget allows a tile at ``scale``, with
        ``reserved`` bytes of the budget already taken by the image being upscaled."""
        flow = self.model.flow
        cells_per_pixel = scale / self.model.patch_size
        per_pixel = (
            flow.encoder.out_channels * 4 * 8
            + flow.hidden * 4 * 4
            + scale * scale * 3 * 4 * 6
            + cells_per_pixel**2 * flow.flow.condition_size * self.dtype.itemsize
        )
        kept = 0 if self._grid_memory is None else self._grid_memory.numel() * self._grid_memory.element_size()
        return choose_window(available_memory(self.device) + kept, per_pixel, reserved)  # the kept grid serves it

    def _core_cells(self, lr: torch.Tensor, size: Size) -> int:
        """Latent cells per tile core (0: one tile), from --tile (LR pixels) or the memory budget.

        ``auto`` bounds the whole window a tile reads, not just its core: an image whose side fits in
        the budget's window is done whole, a larger one in cores that are the window less the latent
        module's reach on both sides, so no tile needs more memory than the whole of a smaller image.
        The budget first sets aside what the image itself holds: its 8-bit output canvas and the input."""
        scale = size.height / lr.shape[-2]
        cells_per_pixel = scale / self.model.patch_size
        longest = max(lr.shape[-2:])
        if self.tile != "auto":
            tile = int(self.tile)
            return 0 if not tile or tile >= longest else math.floor(tile * cells_per_pixel)
        held = size.width * size.height * 3 + lr.numel() * lr.element_size()  # the output canvas and the input
        window = self.window_side(scale, held)
        if window >= longest:
            return 0
        reach = self.model.latent.receptive_field
        return max(self.model.latent.multiple, math.floor(window * cells_per_pixel) - 2 * reach)

    def upscale(
        self,
        lr: torch.Tensor,
        size: Size,
        sink: TileSink,
        seeds: Sequence[int] = (0,),
        progress: ProgressCallback | None = None,
    ) -> UpscaleReport:
        """One deterministic output, tile by tile, sent to the sink for every seed; non-finite pixels
        (an exploding inverse) take the bilinear base."""
        height, width = lr.shape[-2:]
        core_cells = self._core_cells(lr, size)
        row_tiles = plan_prior_axis(self.model, size.height, height, core_cells)
        column_tiles = plan_prior_axis(self.model, size.width, width, core_cells)
        report = UpscaleReport(tiles=len(row_tiles) * len(column_tiles), tile_size=0)
        if report.tiles > 1:
            widest = max(len(axis.core) for axis in (*row_tiles, *column_tiles)) * self.model.patch_size
            report.tile_size = round(widest * height / size.height)
        for index, (rows, columns) in enumerate(itertools.product(row_tiles, column_tiles)):
            output, repaired = self._tile(lr, size, rows, columns, _share(progress, index, index + 1, report.tiles))
            report.guarded_tiles += repaired
            pixel_rows, pixel_columns = self._pixels(rows.core, size.height), self._pixels(columns.core, size.width)
            for sample in range(len(seeds)):
                sink(sample, pixel_rows, pixel_columns, output)
        return report

    def _grid_space(self, batch: int, rows: int, columns: int) -> torch.Tensor:
        """Where a tile's conditioning grid of rows x columns latent cells goes: the memory of the last tile's, grown
        when this one needs more. The grid is the largest tensor of an upscale (a 512^2 input at x4: 1 GB in float32),
        and memory the system hands out afresh is faulted in and zeroed page by page as it is first written
        (docs/speed.md: 1.09-1.14x faster at 512^2 x4 once it is kept), which every tile and image after the first is
        spared. The budget of a tile counts the kept memory as free (:meth:`window_side`): the tile's grid reuses it."""
        shape = (batch, self.model.flow.flow.condition_size, rows, columns)
        count = math.prod(shape)
        if self._grid_memory is None or self._grid_memory.numel() < count:
            self._grid_memory = None  # the smaller one goes before the larger one comes
            self._grid_memory = torch.empty(count, dtype=self.dtype, device=self.device)
        return self._grid_memory[:count].view(shape)

    def _pixels(self, cells: range, length: int) -> range:
        patch = self.model.patch_size
        return range(cells.start * patch, min(cells.stop * patch, length))

    def _tile(
        self, lr: torch.Tensor, size: Size, rows: PriorTileAxis, columns: PriorTileAxis, progress: ProgressCallback
    ) -> tuple[torch.Tensor, int]:
        """The tile's output on the CPU and whether it needed repair; ``progress`` gets the tile's finished
        fraction after each phase (:data:`TILE_PHASES`) and each band of its conditioning, latent prediction
        and render."""
        encoded, conditioned, predicted = TILE_PHASES
        flow = self.model.flow
        full = (size.height, size.width)
        crop = lr[:, :, rows.crop.start : rows.crop.stop, columns.crop.start : columns.crop.stop].to(self.device)
        autocast = torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)
        with torch.inference_mode(), autocast:
            features = flow.encode(
                crop * 2 - 1,
                origin=(rows.crop.start, columns.crop.start),
                full_size=tuple(lr.shape[-2:]),
                whole_unit=lr,
            )
            progress(encoded)
            conditions = flow.condition_grid(
                features,
                full,
                rows.core,
                columns.core,
                self.chunk_queries,
                _share(progress, encoded, conditioned),
                out=self._grid_space(crop.shape[0], len(rows.core), len(columns.core)),
            )
            z_hat = self.model.predict_latent(
                features,
                full,
                rows.window,
                columns.window,
                self.chunk_queries,
                conditions,
                _share(progress, conditioned, predicted),
            )

            def read(latent_rows: range, latent_columns: range) -> torch.Tensor:
                top, left = latent_rows.start - rows.window.start, latent_columns.start - columns.window.start
                return z_hat[:, :, top : top + len(latent_rows), left : left + len(latent_columns)].flatten(2)

            output = flow.render(
                features,
                full,
                read,
                rows.core,
                columns.core,
                self.chunk_queries,
                progress=_share(progress, predicted, 1.0),
                conditions=conditions,
            )
            repaired = 0
            if not bool(torch.isfinite(output).all()):
                repaired = 1
                base = flow.bilinear_base(
                    features, full, self._pixels(rows.core, size.height), self._pixels(columns.core, size.width)
                )
                output = torch.where(torch.isfinite(output), output, base)
        return ((output + 1) / 2).to("cpu", torch.float32), repaired


def _share(progress: ProgressCallback | None, start: float, stop: float, total: float = 1.0) -> ProgressCallback:
    """A callback for a part of the work: its fractions 0..1 reach ``progress`` as ``start..stop`` (of ``total``),
    1 exactly as ``stop``."""

    def report(fraction: float) -> None:
        if progress is not None:
            progress((stop - (stop - start) * (1.0 - fraction)) / total)

    return report


def run_linf_lp(model: LINFLP, options: EngineOptions) -> Upscaler:
    """The engine of a LINF-LP model: its learned prior, or its flow alone under ``--prior gaussian``. Under the
    ``onnx`` backend the latent module's UNet runs with ONNX Runtime too, as do the flow's plain networks; the
    original variant's UNet (``linf-lp-original``) reads where its window lies in the whole map, so it stays in
    PyTorch."""
    if options.prior == "gaussian":
        return run_linf(model.flow, options)
    use_onnx(model.flow, options)
    if options.onnx is not None and isinstance(model.latent, LatentModule):
        model.latent.unet = options.onnx.wrap(model.latent.unet, "latent-unet")
    return LearnedPriorUpscaler(
        model,
        options.device,
        name=options.name,
        tile=options.tile,
        chunk_queries=query_chunk(options.device),
        notes=options.notes,
        dtype=options.dtype,
    )
