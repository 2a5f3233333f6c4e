"""``--consistency on``: any upscaler's output back-projected onto its input, band by band as tiles arrive.

The wrapped upscaler's tiles are gathered into bands of whole output rows. A patch model's grid pattern is
removed first (:mod:`flowsr_cli.engine.degrid`), then the band is projected
(:mod:`flowsr_cli.engine.projection`). A band is processed once the rows within its halo (both operations'
reach) below it have arrived, together with that many rows above it, and only its own rows are passed on:
so the result equals processing the whole image at once, whatever the tiling, while memory holds a few
bands of full-width rows rather than the whole image. A wide band is processed in strips of columns, each
with a halo of columns on both sides, so that the stage's temporaries stay small however wide the output
is. Bands and strips start on the patch grid.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from flowsr_cli.engine.allocator import return_freed_memory
from flowsr_cli.engine.degrid import degrid_reach, remove_grid
from flowsr_cli.engine.projection import DEFAULT_ITERATIONS, halo_rows, project_window
from flowsr_cli.engine.upscaler import ProgressCallback, TileSink, Upscaler, UpscaleReport
from flowsr_cli.io.sizing import Size

BAND_ELEMENTS = 1 << 23
"""Target values (channels x rows x columns) in one projected band, before its halo rows."""

WINDOW_ELEMENTS = 1 << 24
"""The most values (channels x rows x columns, halos included) one processed window of a band should hold: a
band wider than that is processed in strips of columns (each at least four column halos wide). The stage's
temporaries are several windows' worth (an 8192-pixel-wide band at x4 held about 1.3 GB in one window)."""

BLOCK_ROWS = 64
"""Rows per block of stored tile rows: few copies per tile, and memory freed soon after rows are passed on."""

WindowSink = Callable[[range, range, torch.Tensor], None]
"""Receives finished, projected pixels: (output rows, output columns, (1, C, rows, columns) tensor)."""


@dataclass
class _RowBlock:
    """Consecutive output rows kept together: their values (C, rows, W) and which columns have arrived (rows, W)."""

    rows: range
    values: torch.Tensor
    filled: torch.Tensor

    def part(self, rows: range) -> tuple[int, int]:
        """The block-local (start, stop) of ``rows`` clipped to this block (start >= stop when they miss it)."""
        return max(rows.start, self.rows.start) - self.rows.start, min(rows.stop, self.rows.stop) - self.rows.start


class _BandStream:
    """One sample's tiles in, projected bands out (strip by strip when wide).

    Rows are kept in blocks of consecutive rows (one per run of rows that arrived together) with the columns
    that have arrived, so any tiling works, also an engine that redoes the image in other tiles after some
    reached the sink (LINF and SRFlow after CUDA out-of-memory): a row arriving again replaces its values, and
    rows already passed on and forgotten are not taken again. A tile is stored with one copy per block it
    meets, not one per row."""

    def __init__(
        self, lr: torch.Tensor, size: Size, iterations: int, grid_period: int | None, emit: WindowSink
    ) -> None:
        self.lr, self.size, self.iterations, self.grid_period, self.emit = lr, size, iterations, grid_period, emit
        self.step = grid_period or 1
        """Bands and strips start and end on multiples of this (the patch grid), but for the image's last row."""
        grid_reach = degrid_reach(grid_period) if grid_period else 0
        self.halo = _round_up(halo_rows(size.height, lr.shape[-2], iterations) + grid_reach, self.step)
        channels = lr.shape[1]
        self.band = _round_up(max(4 * self.halo, BAND_ELEMENTS // (channels * size.width)), self.step)
        column_halo = _round_up(halo_rows(size.width, lr.shape[-1], iterations) + grid_reach, self.step)
        self.strips = _column_strips(size.width, column_halo, channels * (self.band + 2 * self.halo), self.step)
        """Each strip's (core, window) columns: a band is processed strip by strip."""
        self.blocks: list[_RowBlock] = []
        """The rows not forgotten yet, in order and without gaps between blocks."""
        self.complete = 0
        """Rows before this one have every column."""
        self.emitted = 0

    def add(self, rows: range, columns: range, tile: torch.Tensor) -> None:
        """Store one tile; project and emit every band that became ready."""
        kept = range(max(rows.start, self.emitted - self.halo), rows.stop)
        if len(kept):
            self._make_room(kept, tile.shape[1])
            for block in self.blocks:
                first, last = block.part(kept)
                if first < last:
                    offset = block.rows.start - rows.start
                    tile_rows = tile[0, :, offset + first : offset + last]
                    block.values[:, first:last, columns.start : columns.stop] = tile_rows
                    block.filled[first:last, columns.start : columns.stop] = True
        self._advance_complete()
        self._emit_ready()

    def _make_room(self, rows: range, channels: int) -> None:
        """New blocks for the rows of ``rows`` before or after the stored ones (with any rows between)."""
        if not self.blocks:
            self.blocks = self._new_blocks(rows, channels)
            return
        if rows.start < self.blocks[0].rows.start:
            self.blocks[:0] = self._new_blocks(range(rows.start, self.blocks[0].rows.start), channels)
        if rows.stop > self.blocks[-1].rows.stop:
            self.blocks += self._new_blocks(range(self.blocks[-1].rows.stop, rows.stop), channels)

    def _new_blocks(self, rows: range, channels: int) -> list[_RowBlock]:
        """Blocks of at most :data:`BLOCK_ROWS` rows covering ``rows`` (so passed-on rows are freed in such steps)."""
        width = self.size.width
        parts = [range(start, min(start + BLOCK_ROWS, rows.stop)) for start in range(rows.start, rows.stop, BLOCK_ROWS)]
        return [
            _RowBlock(part, torch.empty(channels, len(part), width), torch.zeros(len(part), width, dtype=torch.bool))
            for part in parts
        ]

    def _advance_complete(self) -> None:
        """Move :attr:`complete` past every row that has all its columns."""
        for block in self.blocks:
            if block.rows.start > self.complete:
                return
            first, last = block.part(range(self.complete, self.size.height))
            if first >= last:
                continue
            done = block.filled[first:last].all(dim=1)
            if not bool(done.all()):
                self.complete += int(done.logical_not().int().argmax())
                return
            self.complete = block.rows.start + last

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
            for core, columns in self.strips:  # one strip's temporaries are gone before the next one's come
                self._emit_strip(range(start, stop), range(self.emitted, end), columns, core)
            self.emitted = end
            self._forget_before(self.emitted - self.halo)
            return_freed_memory()  # the band's temporaries: the next band's, or the next tile's, differ in size

    def _emit_strip(self, rows: range, emitted: range, columns: range, core: range) -> None:
        """Make the stored ``rows`` x ``columns`` consistent and emit its ``emitted`` rows x ``core`` columns."""
        raw = self._rows(rows.start, rows.stop, columns)
        size = (self.size.height, self.size.width)
        window = make_consistent(raw, self.lr, self.grid_period, self.iterations, rows, columns, size)
        top, left = emitted.start - rows.start, core.start - columns.start
        self.emit(emitted, core, window[..., top : top + len(emitted), left : left + len(core)])

    def _rows(self, start: int, stop: int, columns: range) -> torch.Tensor:
        """Rows ``start:stop`` (all complete) of ``columns`` as a (1, C, rows, columns) tensor."""
        parts = []
        for block in self.blocks:
            first, last = block.part(range(start, stop))
            if first < last:
                parts.append(block.values[:, first:last, columns.start : columns.stop])
        return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)).unsqueeze(0)

    def _forget_before(self, row: int) -> None:
        """Drop the blocks whose every row lies before ``row``."""
        self.blocks = [block for block in self.blocks if block.rows.stop > row]


def make_consistent(
    raw: torch.Tensor,
    lr: torch.Tensor,
    grid_period: int | None,
    iterations: int = DEFAULT_ITERATIONS,
    rows: range | None = None,
    columns: range | None = None,
    out_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """``raw`` (B, C, R, W), rows ``rows`` and columns ``columns`` (default: all) of an upscale of ``lr`` of
    ``out_size`` (default: R x W), clamped to [0, 1], cleaned of its grid of period ``grid_period`` (None: no
    grid) and projected ``iterations`` times onto ``lr``. Non-finite values (an unguarded engine's, which
    evaluation counts) are taken as the nearest bound meanwhile and kept where they were, so that they neither
    spread nor vanish."""
    rows = range(raw.shape[-2]) if rows is None else rows
    columns = range(raw.shape[-1]) if columns is None else columns
    size = (raw.shape[-2], raw.shape[-1]) if out_size is None else out_size
    finite = torch.isfinite(raw)
    every_finite = bool(finite.all())
    source = raw if every_finite else torch.nan_to_num(raw, nan=0.0, posinf=1.0, neginf=0.0)
    # no local name holds the cleaned window, so the projection's first clamp releases it
    result = project_window(_degridded(source, grid_period), lr, size, rows, columns, iterations)
    return result if every_finite else torch.where(finite, result, raw)


def _degridded(band: torch.Tensor, grid_period: int | None) -> torch.Tensor:
    """``band`` clamped to [0, 1] and cleaned of its grid of period ``grid_period`` (None: no grid)."""
    clamped = band.clamp(0.0, 1.0)
    return remove_grid(clamped, grid_period) if grid_period else clamped


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


def _column_strips(width: int, halo: int, values_per_column: int, step: int) -> list[tuple[range, range]]:
    """The strips of a band ``width`` columns wide, each as its (core, window) columns: as few as keep a window
    (core and ``halo`` columns on each side) within :data:`WINDOW_ELEMENTS` at ``values_per_column``, cores at
    least four halos wide and starting on multiples of ``step``."""
    widest = max(4 * halo, WINDOW_ELEMENTS // values_per_column - 2 * halo)
    count = max(1, min(-(-width // widest), width // (4 * halo)))
    core = _round_up(-(-width // count), step)
    return [
        (range(start, min(width, start + core)), range(max(0, start - halo), min(width, start + core + halo)))
        for start in range(0, width, core)
    ]


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
        """The wrapped upscaler's output for every seed, projected, delivered in bands of rows (in strips of
        columns when wide)."""
        streams = [
            _BandStream(lr, size, self.iterations, self.degrid_period, functools.partial(sink, sample))
            for sample in range(len(seeds))
        ]

        def collect(sample: int, rows: range, columns: range, tile: torch.Tensor) -> None:
            return_freed_memory()  # the tile's blocks are free; the stage's bands are of other sizes
            streams[sample].add(rows, columns, tile.float())

        return self.inner.upscale(lr, size, collect, seeds, progress)
