"""Splitting an upscale into tiles that reproduce the untiled result exactly, at any scale.

Every output unit (an output pixel, or one p x p patch of a patch model) has a position on the
input grid, in input pixels (pixel k's centre is at k). The unit belongs to the tile whose core
holds the input pixel nearest that position. Positions come from the one global coordinate grid,
never from per-tile rounding, so tiles meet with no gap, overlap or half-pixel shift, and patch
tiles fall on the global patch grid. Each tile reads its core plus a halo at least as wide as the
model's receptive field; all tiles read the same size (edge tiles are moved inward instead of
padded), so kernels are reused and borders see the image's own padding, as untiled.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class AxisTile:
    """Along one axis: the input samples a tile reads, and the output units it produces."""

    crop: range
    out: range


@dataclass(frozen=True)
class Tile:
    """A rectangle of input read and the rectangle of output units it owns."""

    rows: AxisTile
    columns: AxisTile


def patch_positions(in_size: int, out_size: int, patch: int) -> list[float]:
    """Input-grid positions of the centres of the ``ceil(out_size / patch)`` output patches."""
    count = math.ceil(out_size / patch)
    return [(patch * (2 * index + 1) / out_size) * in_size / 2 - 0.5 for index in range(count)]


def plan_axis(in_size: int, positions: Sequence[float], tile: int, halo: int) -> list[AxisTile]:
    """Tiles along one axis of ``in_size`` input samples for output units at ``positions`` (increasing).

    ``tile`` is the core length (0 or >= in_size: one tile); ``halo`` the context on each side.
    """
    if tile <= 0 or tile >= in_size:
        return [AxisTile(range(in_size), range(len(positions)))]
    nearest = [min(max(math.floor(position + 0.5), 0), in_size - 1) for position in positions]
    crop_length = min(in_size, tile + 2 * halo)
    tiles: list[AxisTile] = []
    for core_start in range(0, in_size, tile):
        first = bisect.bisect_left(nearest, core_start)
        end = bisect.bisect_left(nearest, core_start + tile)
        if first == end:
            continue
        crop_start = max(0, min(core_start - halo, in_size - crop_length))
        tiles.append(AxisTile(range(crop_start, crop_start + crop_length), range(first, end)))
    return tiles


def plan_tiles(
    in_size: tuple[int, int], row_positions: Sequence[float], column_positions: Sequence[float], tile: int, halo: int
) -> list[Tile]:
    """All tiles of a 2-D upscale, row by row."""
    rows = plan_axis(in_size[0], row_positions, tile, halo)
    columns = plan_axis(in_size[1], column_positions, tile, halo)
    return [Tile(row, column) for row in rows for column in columns]
