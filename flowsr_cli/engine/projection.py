"""Consistency projection: make an upscale agree with its input under the evaluation protocol's shrink.

An output ``x`` is consistent with its input ``y`` when ``down(x) = y``, ``down`` being the MATLAB
bicubic of :mod:`flowsr_cli.engine.resize` (antialiased, kernel scale = input size / output size per
axis, as LR-PSNR measures it). Iterative back-projection moves ``x`` towards that set::

    x <- x + up(y - down(x))          (from x clamped to the value range, K times, then clamped again)

with ``up`` the bicubic enlargement from the input size back to the output's. Since the residual obeys
``r <- r - down(up(r))``, the K steps are taken on the input grid, where ``down∘up`` is a small operator,
and the output is touched twice: ``x_K = x + up(r_0 + ... + r_{K-1})``, one shrink and one enlargement
whatever K is. All operators are separable, sparse and banded, so a window of output rows and columns can
be projected on its own: an error at a window's cut edges spreads by at most :func:`halo_rows` output rows
(or columns, with the columns' sizes), and pixels farther than that from a cut are the same as when
projecting the whole image. Everything here is differentiable (training uses it).
"""

from __future__ import annotations

import math

import torch

from flowsr_cli.engine.resize import contributions

DEFAULT_ITERATIONS = 10
"""Back-projection iterations of ``--consistency on``."""


def halo_rows(out_size: int, in_size: int, iterations: int) -> int:
    """Output rows (or columns) next to a window's cut edge that may differ from projecting the whole image.

    Per iteration an error travels at most half a ``down`` footprint (``ceil(4s) + 2`` output rows at
    scale ``s = out_size / in_size``) and half an ``up`` footprint (6 input rows, ``6 ceil(s)`` output rows)."""
    scale = out_size / in_size
    per_iteration = math.ceil(2 * scale) + 1 + 3 * math.ceil(scale)
    return iterations * per_iteration + 2 * math.ceil(scale)


Taps = tuple[torch.Tensor, torch.Tensor]
"""A sparse operator along one axis: ``(indices, weights)``, both (out, taps); out[i] = sum_t w[i, t] x[idx[i, t]]
(``contributions``' form)."""


BLOCK = 32
"""Outputs per dense block when an operator is applied as small matrix products."""

Blocks = list[tuple[slice, torch.Tensor]]
"""An operator as dense blocks of consecutive outputs: (the inputs a block reads, its float64 matrix)."""


def _blocks(taps: Taps) -> Blocks:
    """``taps`` as one dense matrix per :data:`BLOCK` outputs over the span of inputs they read (the
    operators are banded)."""
    indices, weights = taps
    blocks = []
    for start in range(0, indices.shape[0], BLOCK):
        block_indices, block_weights = indices[start : start + BLOCK], weights[start : start + BLOCK]
        used = block_indices[block_weights != 0]
        low, high = (int(used.min()), int(used.max()) + 1) if used.numel() else (0, 1)
        matrix = torch.zeros(block_indices.shape[0], high - low, dtype=torch.float64)
        rows = torch.arange(block_indices.shape[0])[:, None].expand_as(block_indices)
        matrix.index_put_((rows, (block_indices - low).clamp(0, high - low - 1)), block_weights, accumulate=True)
        blocks.append((slice(low, high), matrix))
    return blocks


def _apply(x: torch.Tensor, dim: int, blocks: Blocks) -> torch.Tensor:
    """The operator ``blocks`` along ``dim`` (-2 or -1) of ``x``, one matrix product per block."""
    parts = []
    for inputs, matrix in blocks:
        matrix = matrix.to(device=x.device, dtype=x.dtype)
        parts.append(matrix @ x[..., inputs, :] if dim == -2 else x[..., inputs] @ matrix.t())
    return torch.cat(parts, dim=dim)


def _compose(outer: Taps, inner: Taps) -> Taps:
    """The operator ``outer ∘ inner`` (``inner`` maps to the samples ``outer`` reads) as taps; an input
    may appear in several taps of one output (:func:`_apply` sums them)."""
    outer_indices, outer_weights = outer
    inner_indices, inner_weights = inner[0][outer_indices], inner[1][outer_indices]
    return inner_indices.flatten(1), (outer_weights[..., None] * inner_weights).flatten(1)


class _AxisOperators:
    """One axis's ``down`` and ``up`` restricted to output cells ``cells`` of an axis ``out_size`` long.

    ``down`` keeps the input cells whose every tap lies in the window (exact ones); ``up`` drops taps on
    input cells outside that set, which only affects cells within the halo of a cut edge. For the whole
    axis nothing is dropped (the taps are mirrored into range)."""

    def __init__(self, out_size: int, in_size: int, cells: range) -> None:
        down_indices, down_weights = contributions(out_size, in_size, in_size / out_size)
        inside = ((down_indices >= cells.start) & (down_indices < cells.stop)).all(dim=1)
        self.input_cells = torch.nonzero(inside).flatten()
        down = (down_indices[self.input_cells] - cells.start, down_weights[self.input_cells])
        up_indices, up_weights = contributions(in_size, out_size, out_size / in_size, antialias=False)
        up_indices, up_weights = up_indices[cells.start : cells.stop], up_weights[cells.start : cells.stop]
        position = torch.full((in_size,), -1, dtype=torch.int64)
        position[self.input_cells] = torch.arange(len(self.input_cells))
        mapped = position[up_indices]
        up = (mapped.clamp_min(0), torch.where(mapped >= 0, up_weights, torch.zeros_like(up_weights)))
        self.down, self.up, self.down_up = _blocks(down), _blocks(up), _blocks(_compose(down, up))


def project_window(
    window: torch.Tensor,
    lr: torch.Tensor,
    out_size: tuple[int, int],
    rows: range,
    columns: range,
    iterations: int = DEFAULT_ITERATIONS,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """Back-project ``window`` (B, C, len(rows), len(columns)), output rows ``rows`` and columns ``columns`` of an
    upscale of ``out_size`` (height, width) of ``lr`` (B, C, h, w, the whole input), clamped to ``value_range``,
    ``iterations`` times towards ``down(x) = lr``, then clamped again. Pixels within :func:`halo_rows` of a cut
    edge (one that is not the image's border) are approximate; all others match :func:`project`."""
    if tuple(window.shape[-2:]) != (len(rows), len(columns)):
        raise ValueError(f"window is {window.shape[-2]}x{window.shape[-1]} pixels, expected {len(rows)}x{len(columns)}")
    if iterations == 0:
        return window.clamp(*value_range)
    row_operators = _AxisOperators(out_size[0], lr.shape[-2], rows)
    column_operators = _AxisOperators(out_size[1], lr.shape[-1], columns)
    target = lr.index_select(-2, row_operators.input_cells.to(lr.device))
    target = target.index_select(-1, column_operators.input_cells.to(lr.device))
    window = window.clamp(*value_range)
    residual = target - _apply(_apply(window, -2, row_operators.down), -1, column_operators.down)
    total = residual
    for _ in range(iterations - 1):
        residual = residual - _apply(_apply(residual, -2, row_operators.down_up), -1, column_operators.down_up)
        total = total + residual
    correction = _apply(_apply(total, -1, column_operators.up), -2, row_operators.up)
    return (window + correction).clamp(*value_range)


def project(
    sr: torch.Tensor,
    lr: torch.Tensor,
    iterations: int = DEFAULT_ITERATIONS,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """``sr`` (B, C, H, W) back-projected ``iterations`` times towards ``down(sr) = lr`` (B, C, h, w), then
    clamped to ``value_range``."""
    height, width = sr.shape[-2:]
    return project_window(sr, lr, (height, width), range(height), range(width), iterations, value_range)
