"""LINF (Yao et al., CVPR 2023): local implicit normalizing flow for arbitrary-scale super-resolution.

An encoder turns the LR image into features; for each query (an HR pixel, or the centre of a p x p
HR patch) local Fourier features of the 4 nearest LR latents condition a small flow over the
residual ``HR - bilinear(LR)`` of that pixel or patch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from flowsr_cli.engine.sampling import LatentSource
from flowsr_cli.engine.upscaler import ProgressCallback
from flowsr_cli.families.common.coords import (
    bilinear_base,
    cell_size,
    grid,
    patch_centres,
    to_window,
    unfold_patches,
)
from flowsr_cli.families.common.layout import channels_last
from flowsr_cli.families.common.linear_flow import ConditionalLinearFlow
from flowsr_cli.families.linf.fourier import Kernel, Neighbours, fourier_terms, fourier_terms_into
from flowsr_cli.families.registry import Bound, make

QUERY_GEOMETRIES = ("flowsr", "original")
"""How queries are placed. ``flowsr``: a patch cell whose centre pixel lies past the image's bottom or right
edge is queried at its own centre, extrapolated on the patch grid. ``original``: as the original code
(kept to reproduce imported original models): such a cell is queried at the image centre (0, 0), where
its zero-padded coordinates put it, and coordinates follow the original's float32 arithmetic (its
``make_coord``), which decides the neighbour weights of queries on an LR pixel centre of the last row or
column (their four areas are all about zero)."""
_SHIFT_EPS = 1e-6


@dataclass
class LRFeatures:
    """What LINF computes once per LR image (or LR tile) and reuses for every query, in both directions.

    A tile is a crop of the full LR image: ``origin`` is its top-left corner and ``full_size`` the
    full image's size, so that coordinates stay those of the whole image.
    """

    lr: torch.Tensor
    """The LR image or crop, (B, 3, h, w) in [-1, 1] (for the bilinear base)."""
    encoded: torch.Tensor
    """Encoder features of the crop, (B, C, h, w). The much wider Fourier amplitudes and frequencies
    are derived from them per band of queries, so memory follows the query chunk, not the tile."""
    origin: tuple[int, int] = (0, 0)
    full_size: tuple[int, int] | None = None
    fourier_rows: tuple[range, torch.Tensor] | None = None
    """The last rows of coef and freq computed (see ``LINF._fourier``): bands of queries move down the
    image and overlap, so each band computes only the rows the previous one did not."""
    whole_unit: torch.Tensor | None = None
    """The whole LR image in [0, 1] (any device) when ``lr`` is a crop; read only by a LINF whose edge
    cells take the image centre's conditioning (``query_geometry="original"``), of which it encodes the
    centre alone."""
    centre_affines: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    """The flow's affines at the image centre (B, C, 1) for each output size asked, once computed."""

    @property
    def size(self) -> tuple[int, int]:
        """The full LR image's (height, width)."""
        return self.full_size or (int(self.lr.shape[-2]), int(self.lr.shape[-1]))


@dataclass
class ConditionGrid:
    """The flow's affines (see :meth:`ConditionalLinearFlow.prepare`) of a window of latent cells, feature-major:
    (B, condition_size, len(rows), len(columns))."""

    values: torch.Tensor
    rows: range
    columns: range

    def covers(self, rows: range, columns: range) -> bool:
        """Whether every cell of rows x columns lies inside the window."""
        return _within(rows, self.rows) and _within(columns, self.columns)

    def read(self, rows: range, columns: range) -> torch.Tensor:
        """The affines (B, condition_size, len(rows) * len(columns)) of cells inside the window, row-major."""
        top, left = rows.start - self.rows.start, columns.start - self.columns.start
        return self.values[:, :, top : top + len(rows), left : left + len(columns)].flatten(2)


class LINF(nn.Module):
    """LINF with a pixel (``patch_size=1``, D=3) or patch (``patch_size=3``, D=27) flow.

    Sizes are spec arguments: the paper's EDSR-baseline-LINF is ``hidden=256, mlp_layers=3,
    flow_layers=10`` on a 64 x 16 EDSR-baseline encoder.
    """

    spec_bounds: ClassVar[Mapping[str, Bound]] = {
        "patch_size": Bound(1, 15),
        "hidden": Bound(2, 8192),
        "mlp_layers": Bound(0, 64),
        "flow_layers": Bound(0, 256),
    }
    spec_parts: ClassVar[tuple[str, ...]] = ("encoder",)
    _centre_margin: ClassVar[int] = 3
    """LR pixels beyond the encoder's reach that the image-centre query reads (its 4 neighbours, their 3x3 conv)."""

    def __init__(
        self,
        encoder: dict[str, Any],
        patch_size: int = 3,
        hidden: int = 256,
        mlp_layers: int = 3,
        flow_layers: int = 10,
        query_geometry: str = "flowsr",
    ) -> None:
        super().__init__()
        if hidden % 2:
            raise TypeError("hidden must be even (frequencies are split into y and x halves)")
        if query_geometry not in QUERY_GEOMETRIES:
            raise TypeError(f"query_geometry must be one of {', '.join(QUERY_GEOMETRIES)}, got {query_geometry!r:.40}")
        self.query_geometry = query_geometry
        self.encoder = make(encoder)
        if not all(isinstance(getattr(self.encoder, size, None), int) for size in ("out_channels", "receptive_radius")):
            raise TypeError(f"encoder must be an LR encoder (edsr-baseline, rrdb), got {encoder['name']!r}")
        self.patch_size = patch_size
        self.hidden = hidden
        features = self.encoder.out_channels
        self.coef = nn.Conv2d(features, hidden, 3, padding=1)
        self.freq = nn.Conv2d(features, hidden, 3, padding=1)
        self.phase = nn.Linear(2, hidden // 2, bias=False)
        self.flow = ConditionalLinearFlow(3 * patch_size * patch_size, flow_layers)
        widths = [4 * hidden] + [hidden] * mlp_layers
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(width_in, width_out), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(widths[-1], self.flow.condition_size))
        self.mlp = nn.Sequential(*layers)
        self._compiled_fourier: Kernel | None = None

    def use_compiled(self, compile_function: Callable[[Kernel], Kernel]) -> None:
        """Run the Fourier features at inference as ``compile_function`` compiles :func:`fourier_terms` (e.g.
        ``torch.compile``: the gathers, angles, cosines, sines and products fused into one loop)."""
        self._compiled_fourier = compile_function(fourier_terms)

    @property
    def dim(self) -> int:
        """Size of one flow vector: 3 (pixel model) or 27 (3x3 patch model)."""
        return self.flow.features

    @property
    def receptive_radius(self) -> int:
        """LR pixels of context a tile needs on each side for exact features and queries: the
        encoder's, the coef/freq conv's and the reach of a query to its neighbouring latents."""
        return int(self.encoder.receptive_radius) + 2

    def encode(
        self,
        lr: torch.Tensor,
        origin: tuple[int, int] = (0, 0),
        full_size: tuple[int, int] | None = None,
        whole_unit: torch.Tensor | None = None,
    ) -> LRFeatures:
        """Features of an LR image (B, 3, h, w) in [-1, 1], or of a crop of one at ``origin`` (``whole_unit``:
        the whole image in [0, 1], see :class:`LRFeatures`); the encoder runs channels-last (see
        :func:`channels_last`), so its features are laid out that way."""
        encoded = self.encoder(channels_last(lr))
        return LRFeatures(lr=lr, encoded=encoded, origin=origin, full_size=full_size, whole_unit=whole_unit)

    def _fourier(self, features: LRFeatures, rows: range) -> torch.Tensor:
        """Amplitudes and frequencies (B, len(rows) * w, 2 * hidden), channels last (coef first), of the
        crop's LR rows ``rows``; rows the previous call computed are reused, the rest computed exactly."""
        cached = features.fourier_rows
        if cached is not None and cached[0].start <= rows.start < cached[0].stop:
            width = int(features.encoded.shape[-1])
            reused = range(rows.start, min(rows.stop, cached[0].stop))
            offset = reused.start - cached[0].start
            kept = cached[1][:, offset * width : (offset + len(reused)) * width]
            if reused.stop == rows.stop:
                return kept
            table = torch.cat([kept, self._fourier_rows(features.encoded, range(reused.stop, rows.stop))], dim=1)
        else:
            table = self._fourier_rows(features.encoded, rows)
        features.fourier_rows = (rows, table)
        return table

    def _fourier_rows(self, encoded: torch.Tensor, rows: range) -> torch.Tensor:
        """coef and freq of exactly ``rows`` in one convolution: the rows around them are read, zeros
        stand in past the image's top and bottom as the layers' own padding would."""
        height = encoded.shape[-2]
        first, last = max(rows.start - 1, 0), min(rows.stop + 1, height)
        window = F.pad(encoded[:, :, first:last].float(), (0, 0, first - (rows.start - 1), (rows.stop + 1) - last))
        weight = torch.cat([self.coef.weight, self.freq.weight])
        bias = torch.cat([self.coef.bias, self.freq.bias])
        return F.conv2d(window, weight, bias, padding=(0, 1)).flatten(2).transpose(1, 2).contiguous()

    def condition(self, features: LRFeatures, points: torch.Tensor, cell: tuple[float, float]) -> torch.Tensor:
        """Flow conditioning for query points (B, N, 2) as (y, x) in [-1, 1]: (B, N, condition_size), raw and
        row-major, as the likelihood (training) reads it; inference reads :meth:`affines`.

        The one feature-query function behind both directions (likelihood and sampling). Under autocast
        (``--precision bf16``/``fp16``) only the MLP's hidden layers run in the lower precision: the Fourier
        features need float32's precision for their angles, and the last layer makes the flow's affine
        parameters, which stay float32 as the flow does (in bfloat16 they cost 0.04 dB PSNR-Y on Set14 x4).
        """
        hidden = self._hidden(features, points, cell)
        with torch.autocast(points.device.type, enabled=False):
            return self.mlp[-1](hidden.float())

    def affines(
        self, features: LRFeatures, points: torch.Tensor, cell: tuple[float, float], out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The flow's affines (B, condition_size, N) (:meth:`ConditionalLinearFlow.prepare`) for query points
        (B, N, 2): :meth:`condition` laid out feature-major, as the flow's inference reads it, written into
        ``out`` if given, in ``out``'s dtype. The MLP's last layer writes that layout directly (one matrix product per
        image) and its affines are formed in float32 whatever ``out`` stores."""
        hidden = self._hidden(features, points, cell)
        last = self.mlp[-1]
        results = []
        with torch.autocast(points.device.type, enabled=False):
            for index, item in enumerate(hidden.float()):
                raw = torch.addmm(last.bias.unsqueeze(-1), last.weight, item.T)
                if out is None or out.dtype == raw.dtype:
                    results.append(self.flow.prepare(raw, None if out is None else out[index]))
                else:  # prepared in float32, then stored in ``out``'s lower precision
                    out[index].copy_(self.flow.prepare(raw))
        return torch.stack(results) if out is None else out

    def _hidden(self, features: LRFeatures, points: torch.Tensor, cell: tuple[float, float]) -> torch.Tensor:
        """The MLP's last hidden layer (B, N, hidden) for query points (B, N, 2) (autocast applies to its layers)."""
        with torch.autocast(points.device.type, enabled=False):
            hidden = self._fourier_features(features, points.float(), cell)
        for layer in self.mlp[:-1]:
            hidden = layer(hidden)
        return hidden

    def _fourier_features(self, features: LRFeatures, points: torch.Tensor, cell: tuple[float, float]) -> torch.Tensor:
        """The MLP's input (B, N, 4 * hidden) for query points (B, N, 2) (:mod:`.fourier`), in float32 whatever
        the encoder's dtype (elementwise work is no faster in bfloat16 on a CPU, and the angles need float32's
        precision); compiled where :meth:`use_compiled` asked for it."""
        height, width = features.size
        relative_cell = points.new_tensor([cell[0] * height, cell[1] * width])
        phase = self.phase(relative_cell)
        rows, neighbours = self._neighbours(features, points)
        table = self._fourier(features, rows)
        if torch.is_grad_enabled() and (table.requires_grad or phase.requires_grad):
            return fourier_terms(table, phase, *neighbours.tensors())
        if self._compiled_fourier is not None:
            return self._compiled_fourier(table, phase, *neighbours.tensors())
        out = points.new_empty(*points.shape[:-1], 2 * table.shape[-1])
        return fourier_terms_into(out, table, phase, *neighbours.tensors())

    def _neighbours(self, features: LRFeatures, points: torch.Tensor) -> tuple[range, Neighbours]:
        """The crop's LR rows the query points (B, N, 2) read and where each reads them: its 4 nearest latents
        (2 rows x 2 columns), its offsets from them and their weights."""
        height, width = features.size
        crop_width = int(features.lr.shape[-1])
        origin_y, origin_x = features.origin
        latent_rows = [self._nearest_latent(points[..., 0], offset, height) for offset in (-1.0, 1.0)]
        latent_columns = [self._nearest_latent(points[..., 1], offset, width) for offset in (-1.0, 1.0)]
        first_row = min(int(row.min()) for row in latent_rows) - origin_y
        last_row = max(int(row.max()) for row in latent_rows) - origin_y
        offsets_y = [(points[..., 0] - self._pixel_centres(row, height)) * height for row in latent_rows]
        offsets_x = [(points[..., 1] - self._pixel_centres(column, width)) * width for column in latent_columns]
        pairs = [(row, column) for row in (0, 1) for column in (0, 1)]  # offsets (-1, -1), (-1, 1), (1, -1), (1, 1)
        table_rows = [(row - origin_y - first_row) * crop_width for row in latent_rows]
        index = torch.stack([table_rows[row] + (latent_columns[column] - origin_x) for row, column in pairs])
        relative_y = torch.stack([offsets_y[row] for row, _ in pairs])
        relative_x = torch.stack([offsets_x[column] for _, column in pairs])
        areas = (relative_y * relative_x).abs_().add_(1e-9)
        weight = areas.flip(0).div_(areas.sum(dim=0))  # each neighbour's weight is the area opposite it
        return range(first_row, last_row + 1), Neighbours(index, relative_y, relative_x, weight)

    def condition_grid(
        self,
        features: LRFeatures,
        size: tuple[int, int],
        rows: range,
        columns: range,
        chunk_queries: int = 16384,
        progress: ProgressCallback | None = None,
        out: torch.Tensor | None = None,
    ) -> ConditionGrid:
        """The conditioning of every query of the latent rows x columns of an output of ``size``, in
        bands of whole rows of at most ``chunk_queries``: computed once, read by both flow directions.
        ``out`` (B, condition_size, len(rows), len(columns)), if given, is where the grid goes, in its dtype: the
        affines are formed in float32 and the flow reads them as float32, so a bfloat16 grid halves the largest
        tensor of an upscale at the cost of rounding them. ``progress`` gets the fraction of rows done after each
        band."""
        band = max(1, chunk_queries // len(columns))
        shape = (features.lr.shape[0], self.flow.condition_size, len(rows), len(columns))
        if out is not None and tuple(out.shape) != shape:
            raise ValueError(f"a conditioning grid of shape {shape} cannot go into one of shape {tuple(out.shape)}")
        values = torch.empty(shape, device=features.lr.device) if out is None else out
        for start in range(0, len(rows), band):
            end = min(len(rows), start + band)
            band_rows = range(rows.start + start, rows.start + end)
            self._compute_cells_affines(features, size, band_rows, columns, values[:, :, start:end].flatten(2))
            if progress is not None:
                progress(end / len(rows))
        return ConditionGrid(values, rows, columns)

    @staticmethod
    def _nearest_latent(coordinate: torch.Tensor, offset: float, size: int) -> torch.Tensor:
        shifted = (coordinate + offset / size + _SHIFT_EPS).clamp(-1 + 1e-6, 1 - 1e-6)
        return ((shifted + 1) * (size / 2)).floor().long().clamp(0, size - 1)

    def log_prob(self, residual: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact log-likelihood (nats) of residual vectors (M, D) given their conditioning; and their latents z."""
        z, log_p = self.flow(residual, condition)
        return log_p, z

    def latents(self, residual: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """The latents z (M, D) of residual vectors (M, D), as :meth:`log_prob` gives them, without the
        log-likelihood."""
        return self.flow.latents(residual, condition)

    def sample(self, condition: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Residual vectors (M, D) for latents ``z`` (M, D) under their conditioning."""
        return self.flow.inverse(z, condition)

    def nll(
        self, lr: torch.Tensor, hr: torch.Tensor, queries: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Mean negative log-likelihood in nats per query of HR crops (B, 3, H, W) given their LR, both in
        [-1, 1]; H and W must be multiples of the patch size. ``queries`` samples that many patches."""
        height, width = hr.shape[-2:]
        patch = self.patch_size
        if height % patch or width % patch:
            raise ValueError(f"HR size {height}x{width} is not a multiple of the patch size {patch}")
        features = self.encode(lr)
        base = bilinear_base(lr, patch_centres(height, 1, lr.device), patch_centres(width, 1, lr.device))
        residual = unfold_patches(hr - base, patch)
        points = grid(patch_centres(height, patch, lr.device), patch_centres(width, patch, lr.device))
        if queries is not None and queries < points.shape[0]:
            chosen = torch.randperm(points.shape[0], generator=generator)[:queries].to(lr.device)
            residual, points = residual[:, chosen], points[chosen]
        condition = self.condition(features, points.expand(hr.shape[0], -1, -1), cell_size(height, width))
        with torch.autocast(lr.device.type, enabled=False):
            log_p, _ = self.log_prob(residual.flatten(0, 1).float(), condition.flatten(0, 1).float())
        return -log_p.mean()

    def render(
        self,
        features: LRFeatures,
        size: tuple[int, int],
        latent: LatentSource,
        rows: range | None = None,
        columns: range | None = None,
        chunk_queries: int = 16384,
        progress: ProgressCallback | None = None,
        conditions: ConditionGrid | None = None,
    ) -> torch.Tensor:
        """HR pixels in [-1, 1] of the latent rows x columns given (default: all), i.e. output pixel rows
        ``[rows.start * p, min(rows.stop * p, H))`` and likewise columns, for latents from ``latent``.

        Queries run in bands of whole latent rows of at most ``chunk_queries`` (bounded memory; the
        same result for any chunk size). The flow inverse always runs in float32, outside autocast.
        ``conditions`` (covering these cells) saves recomputing the conditioning.
        """
        height, width = size
        patch = self.patch_size
        device = features.lr.device
        all_rows, all_columns = patch_centres(height, patch, device), patch_centres(width, patch, device)
        rows = rows if rows is not None else range(len(all_rows))
        columns = columns if columns is not None else range(len(all_columns))
        batch = features.lr.shape[0]
        band = max(1, chunk_queries // len(columns))
        canvas = torch.empty(batch, 3, len(rows) * patch, len(columns) * patch, device=device)
        for start in range(rows.start, rows.stop, band):
            end = min(rows.stop, start + band)
            affines = self.cells_affines(features, size, range(start, end), columns, conditions)
            z = latent(range(start, end), columns).to(device)
            with torch.autocast(device.type, enabled=False):
                residual = self.flow.inverse_of_columns(z.float(), affines)
            band_pixels = F.pixel_shuffle(residual.view(batch, self.dim, end - start, len(columns)), patch)
            canvas[:, :, (start - rows.start) * patch : (end - rows.start) * patch] = band_pixels
            if progress is not None:
                progress((end - rows.start) / len(rows))
        pixel_rows = range(rows.start * patch, min(rows.stop * patch, height))
        pixel_columns = range(columns.start * patch, min(columns.stop * patch, width))
        base = self.bilinear_base(features, size, pixel_rows, pixel_columns)
        return canvas[..., : len(pixel_rows), : len(pixel_columns)] + base

    def cells_affines(
        self,
        features: LRFeatures,
        size: tuple[int, int],
        rows: range,
        columns: range,
        conditions: ConditionGrid | None = None,
    ) -> torch.Tensor:
        """The flow's affines (B, C, len(rows) * len(columns)) of those latent cells of an output of ``size``,
        cells row-major: read from ``conditions`` where it covers them, computed elsewhere."""
        if conditions is None:
            return self._compute_cells_affines(features, size, rows, columns)
        if conditions.covers(rows, columns):
            return conditions.read(rows, columns)
        batch = features.lr.shape[0]

        def block(block_rows: range, block_columns: range) -> torch.Tensor:
            values = (
                conditions.read(block_rows, block_columns)
                if conditions.covers(block_rows, block_columns)
                else self._compute_cells_affines(features, size, block_rows, block_columns)
            )
            return values.view(batch, -1, len(block_rows), len(block_columns))

        row_parts = [
            torch.cat([block(row_part, column_part) for column_part in _split(columns, conditions.columns)], dim=3)
            for row_part in _split(rows, conditions.rows)
        ]
        return torch.cat(row_parts, dim=2).flatten(2)

    def _compute_cells_affines(
        self,
        features: LRFeatures,
        size: tuple[int, int],
        rows: range,
        columns: range,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The affines of the latent cells rows x columns, computed (into ``out`` if given)."""
        device = features.lr.device
        row_centres = self._cell_centres(rows, size[0], device)
        column_centres = self._cell_centres(columns, size[1], device)
        points = grid(row_centres, column_centres).expand(features.lr.shape[0], -1, -1)
        past = self._past_edge(size, rows, columns, device)
        if past is None:
            return self.affines(features, points, cell_size(*size), out)
        centre = self.centre_affines(features, size)
        if bool(past.all()):
            filled = centre.expand(-1, -1, points.shape[1])
            return filled.contiguous() if out is None else out.copy_(filled)
        # cells past the edge come after the first cell of the window, which is inside: query there, then replace
        affines = self.affines(features, torch.where(past[:, None], points[:, :1], points), cell_size(*size), out)
        affines[:, :, past] = centre.to(affines.dtype)
        return affines

    def _cell_centres(self, cells: range, length: int, device: torch.device) -> torch.Tensor:
        """Query coordinates of patch cells ``cells`` (any indices) on an axis of ``length`` pixels: their
        centres extrapolated on the patch grid, or the original code's coordinates of their centre pixels."""
        patch = self.patch_size
        index = torch.arange(cells.start, cells.stop, device=device)
        if self.query_geometry == "flowsr":
            return -1.0 + patch * (2.0 * index.float() + 1.0) / length
        return self._pixel_centres(index * patch + patch // 2, length)

    def _pixel_centres(self, index: torch.Tensor, length: int) -> torch.Tensor:
        """Coordinates of the centres of pixels ``index`` (any integers: past the ends they extrapolate) on an
        axis of ``length`` pixels, with the original code's arithmetic under ``query_geometry="original"``."""
        if self.query_geometry == "flowsr":
            return -1.0 + (2 * index + 1) / length
        radius = 1 / length
        return (-1 + radius) + (2 * radius) * index.float()

    def _past_edge(
        self, size: tuple[int, int], rows: range, columns: range, device: torch.device
    ) -> torch.Tensor | None:
        """For ``query_geometry="original"``: which cells of rows x columns (row-major) have their centre
        pixel past the image; None when none has or the edge cells are extrapolated."""
        if self.query_geometry == "flowsr":
            return None
        patch = self.patch_size
        past_rows = torch.arange(rows.start, rows.stop, device=device) * patch + patch // 2 >= size[0]
        past_columns = torch.arange(columns.start, columns.stop, device=device) * patch + patch // 2 >= size[1]
        past = (past_rows[:, None] | past_columns[None, :]).reshape(-1)
        return past if bool(past.any()) else None

    def centre_affines(self, features: LRFeatures, size: tuple[int, int]) -> torch.Tensor:
        """The flow's affines (B, C, 1) at the image centre (0, 0) for an output of ``size``: from the features
        when they cover the centre's reach, else from the centre of ``features.whole_unit`` encoded alone."""
        if size in features.centre_affines:
            return features.centre_affines[size]
        height, width = features.size
        reach = int(self.encoder.receptive_radius) + self._centre_margin
        rows = range(max(0, height // 2 - reach), min(height, height // 2 + reach + 1))
        columns = range(max(0, width // 2 - reach), min(width, width // 2 + reach + 1))
        crop_rows = range(features.origin[0], features.origin[0] + int(features.lr.shape[-2]))
        crop_columns = range(features.origin[1], features.origin[1] + int(features.lr.shape[-1]))
        source = features
        if not (_within(rows, crop_rows) and _within(columns, crop_columns)):
            if features.whole_unit is None:
                raise ValueError("the image centre lies outside these LR features and no whole image was given")
            window = features.whole_unit[..., rows.start : rows.stop, columns.start : columns.stop]
            source = self.encode(
                window.to(features.lr.device, features.lr.dtype) * 2 - 1, (rows.start, columns.start), (height, width)
            )
        centre = features.lr.new_zeros(features.lr.shape[0], 1, 2)
        affines = self.affines(source, centre, cell_size(*size))
        features.centre_affines[size] = affines
        return affines

    @staticmethod
    def bilinear_base(features: LRFeatures, size: tuple[int, int], rows: range, columns: range) -> torch.Tensor:
        """Bilinear upsampling of the full LR image at the given output pixels, read from the crop."""
        device = features.lr.device
        crop_height, crop_width = features.lr.shape[-2:]
        full_height, full_width = features.size
        centres_y = patch_centres(size[0], 1, device)[rows.start : rows.stop]
        centres_x = patch_centres(size[1], 1, device)[columns.start : columns.stop]
        local_y = to_window(centres_y, full_height, features.origin[0], crop_height)
        local_x = to_window(centres_x, full_width, features.origin[1], crop_width)
        return bilinear_base(features.lr.float(), local_y, local_x)


def _within(inner: range, outer: range) -> bool:
    return outer.start <= inner.start and inner.stop <= outer.stop


def _split(cells: range, covered: range) -> list[range]:
    """``cells`` cut at the edges of ``covered``: the non-empty parts before, inside and after it."""
    start, stop = max(cells.start, covered.start), min(cells.stop, covered.stop)
    if start >= stop:
        return [cells]
    parts = [range(cells.start, start), range(start, stop), range(stop, cells.stop)]
    return [part for part in parts if len(part)]
