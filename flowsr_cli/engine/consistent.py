"""``--consistency on``: any upscaler's output back-projected onto its input, band by band as tiles arrive.

The wrapped upscaler's tiles are gathered into bands of whole output rows. A patch model's grid pattern is
removed first (:mod:`flowsr_cli.engine.degrid`), then the band is projected
(:mod:`flowsr_cli.engine.projection`). A band is processed once the rows within its halo (both operations'
reach) below it have arrived, together with that many rows above it, and only its own rows are passed on:
so the result equals processing the whole image at once, whatever the tiling, while memory holds a few
bands of full-width rows rather than the whole image. Bands start on the patch grid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from flowsr_cli.engine.degrid import degrid_reach, remove_grid
from flowsr_cli.engine.projection import DEFAULT_ITERATIONS, halo_rows, project_rows
from flowsr_cli.engine.upscaler import ProgressCallback, TileSink, Upscaler, UpscaleReport
from flowsr_cli.io.sizing import Size

BAND_ELEMENTS = 1 << 23
"""Target values (channels x rows x columns) in one projected band, before its halo rows."""

RowSink = Callable[[range, torch.Tensor], None]
"""Receives finished, projected full-width rows: (output rows, (1, C, rows, W) tensor)."""


class _BandStream:
    """One sample's tiles in, projected full-width bands out.

    Rows are kept one by one with the columns that have arrived, so any tiling works, also an engine that
    redoes the image in other tiles after some reached the sink (LINF and SRFlow after CUDA out-of-memory):
    a row arriving again replaces its values, and rows already passed on and forgotten are not taken again."""

    def __init__(self, lr: torch.Tensor, size: Size, iterations: int, grid_period: int | None, emit: RowSink) -> None:
        self.lr, self.size, self.iterations, self.grid_period, self.emit = lr, size, iterations, grid_period, emit
        self.step = grid_period or 1
        """Bands start and end on multiples of this (the patch grid), but for the image's last row."""
        reach = halo_rows(size.height, lr.shape[-2], iterations) + (degrid_reach(grid_period) if grid_period else 0)
        self.halo = _round_up(reach, self.step)
        self.band = _round_up(max(4 * self.halo, BAND_ELEMENTS // (lr.shape[1] * size.width)), self.step)
        self.rows: dict[int, torch.Tensor] = {}
        """Output row -> its (C, W) values, for the rows not forgotten yet."""
        self.filled: dict[int, torch.Tensor] = {}
        """Output row -> which of its columns have arrived."""
        self.complete = 0
        """Rows before this one have every column."""
        self.emitted = 0

    def add(self, rows: range, columns: range, tile: torch.Tensor) -> None:
        """Store one tile; project and emit every band that became ready."""
        for row in range(max(rows.start, self.emitted - self.halo), rows.stop):
            if row not in self.rows:
                self.rows[row] = torch.empty(tile.shape[1], self.size.width)
                self.filled[row] = torch.zeros(self.size.width, dtype=torch.bool)
            self.rows[row][:, columns.start : columns.stop] = tile[0, :, row - rows.start]
            self.filled[row][columns.start : columns.stop] = True
        while self.complete < self.size.height and self._has_every_column(self.complete):
            self.complete += 1
        self._emit_ready()

    def _has_every_column(self, row: int) -> bool:
        return row in self.filled and bool(self.filled[row].all())

    def _emit_ready(self) -> None:
        height = self.size.height
        while self.emitted < height:
            end = height if self.complete == height else self.complete - self.halo
            if end - self.emitted < (1 if self.complete == height else self.band):
                return
            end = min(end, self.emitted + self.band)
            if end < height:
                end -= end % self.step
            start = max(0, self.emitted - self.halo)
            stop = min(height, end + self.halo)
            raw = self._rows(start, stop)
            window = make_consistent(raw, self.lr, self.grid_period, self.iterations, range(start, stop), height)
            self.emit(range(self.emitted, end), window[..., self.emitted - start : end - start, :])
            self.emitted = end
            self._forget_before(self.emitted - self.halo)

    def _rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` (all complete) as a (1, C, rows, W) tensor."""
        return torch.stack([self.rows[row] for row in range(start, stop)], dim=1).unsqueeze(0)

    def _forget_before(self, row: int) -> None:
        for key in [key for key in self.rows if key < row]:
            del self.rows[key], self.filled[key]


def make_consistent(
    raw: torch.Tensor,
    lr: torch.Tensor,
    grid_period: int | None,
    iterations: int = DEFAULT_ITERATIONS,
    rows: range | None = None,
    out_height: int | None = None,
) -> torch.Tensor:
    """``raw`` (B, C, R, W), rows ``rows`` (default: all) of an ``out_height``-row upscale of ``lr`` (default:
    R rows), clamped to [0, 1], cleaned of its grid of period ``grid_period`` (None: no grid) and projected
    ``iterations`` times onto ``lr``. Non-finite values (an unguarded engine's, which evaluation counts) are
    taken as the nearest bound meanwhile and kept where they were, so that they neither spread nor vanish."""
    rows = range(raw.shape[-2]) if rows is None else rows
    finite = torch.isfinite(raw)
    cleaned = raw if bool(finite.all()) else torch.nan_to_num(raw, nan=0.0, posinf=1.0, neginf=0.0)
    cleaned = cleaned.clamp(0.0, 1.0)
    if grid_period:
        cleaned = remove_grid(cleaned, grid_period)
    result = project_rows(cleaned, lr, raw.shape[-2] if out_height is None else out_height, rows, iterations)
    return result if bool(finite.all()) else torch.where(finite, result, raw)


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def patch_period(upscaler: Upscaler) -> int | None:
    """The period of the grid a model's latents can print, when above 1: the engine's ``grid_period``
    (SRFlow: its 2 x 2 squeeze), else its model's ``patch_size`` (LINF: 3); None for other upscalers."""
    period = getattr(upscaler, "grid_period", None)
    if period is None:
        period = getattr(getattr(upscaler, "model", None), "patch_size", None)
    return period if isinstance(period, int) and period > 1 else None


@dataclass
class ConsistentUpscaler:
    """Another upscaler whose every output is cleaned of its patch grid (patch models) and back-projected
    ``iterations`` times towards its input, so that its MATLAB-bicubic shrink matches the input
    (``--consistency on``). Tiled == untiled."""

    inner: Upscaler
    iterations: int = DEFAULT_ITERATIONS
    name: str = field(init=False)
    notes: list[str] = field(init=False)
    """The wrapped upscaler's name and notes (the same list)."""
    degrid_period: int | None = field(init=False)
    """The patch period whose pattern is removed (:func:`patch_period` of the wrapped upscaler), or None."""

    def __post_init__(self) -> None:
        self.name, self.notes = self.inner.name, self.inner.notes
        self.degrid_period = patch_period(self.inner)

    @property
    def stochastic(self) -> bool:
        """As the wrapped upscaler."""
        return self.inner.stochastic

    def __getattr__(self, attribute: str) -> object:
        """The wrapped upscaler's other attributes (``fixed_scale``, ``gaussian``, ``temperature``, ...)."""
        if attribute == "inner":
            raise AttributeError(attribute)
        return getattr(self.inner, attribute)

    def upscale(
        self,
        lr: torch.Tensor,
        size: Size,
        sink: TileSink,
        seeds: Sequence[int] = (0,),
        progress: ProgressCallback | None = None,
    ) -> UpscaleReport:
        """The wrapped upscaler's output for every seed, projected, delivered in full-width row bands."""

        def emitter(sample: int) -> RowSink:
            return lambda rows, band: sink(sample, rows, range(size.width), band)

        streams = [
            _BandStream(lr, size, self.iterations, self.degrid_period, emitter(sample)) for sample in range(len(seeds))
        ]

        def collect(sample: int, rows: range, columns: range, tile: torch.Tensor) -> None:
            streams[sample].add(rows, columns, tile.float())

        return self.inner.upscale(lr, size, collect, seeds, progress)
