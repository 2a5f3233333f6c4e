"""LINF-LP: a frozen LINF whose latents come from a learned prior instead of a Gaussian (DESIGN §5).

For an LR image and an output size (H, W): the flow forward of a pseudo-residual made from the LR
alone gives an initial latent grid z_init; the latent module G refines it into z_hat; the flow
inverse of z_hat plus the bilinear base is the output. Everything is computed for the same (H, W)
from the same LR features, so LR features and latents stay aligned, and the LR features are encoded
once and shared by both flow directions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from flowsr_cli.engine.resize import contributions, resize_window
from flowsr_cli.engine.upscaler import ProgressCallback
from flowsr_cli.families.common.latent import LatentModule, lr_positions
from flowsr_cli.families.common.layout import channels_last
from flowsr_cli.families.linf.network import LINF, ConditionGrid, LRFeatures
from flowsr_cli.families.registry import make

CHUNK_QUERIES = 16384
INITIAL_PRIOR_SHARE = 0.55
"""The part of :meth:`LINFLP.predict_latent`'s time its initial prior (the flow forward) takes, the latent
module the rest, for its progress: measured on the bundled linf-lp and a paper-size model, the initial
prior took 12-26 % of a tile's time and the latent module about 20 %."""
"""Default bound on the queries the flow handles at once (the result does not depend on it)."""


@dataclass(frozen=True)
class LatentFade:
    """How much of the prior's latent is kept at a scale: all of it up to ``from_scale`` (the top of the
    prior's training range), beyond it a Gaussian fade of ``width`` in scale toward z = 0."""

    from_scale: float
    width: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.from_scale) and self.from_scale >= 1):
            raise TypeError(f"fade from_scale must be a finite number >= 1, got {self.from_scale!r}")
        if not (math.isfinite(self.width) and self.width > 0):
            raise TypeError(f"fade width must be a finite number > 0, got {self.width!r}")

    def gain(self, scale: float) -> float:
        """1 up to ``from_scale``, then ``exp(-((scale - from_scale) / width)^2)``."""
        if scale <= self.from_scale:
            return 1.0
        return math.exp(-(((scale - self.from_scale) / self.width) ** 2))


class LINFLP(nn.Module):
    """A frozen LINF (``flow``, a ``linf`` spec) and a trainable latent module (``latent``, an
    ``lp-latent`` spec whose ``dim`` equals the flow's vector size); ``fade`` (``from_scale``,
    ``width``), if given, shrinks the latents beyond the prior's training range (:class:`LatentFade`).

    The flow's parameters never require gradients and the flow stays in eval mode whatever
    :meth:`train` is asked; gradients still pass through its inverse into the latent module. No
    method disables autograd: callers choose ``torch.no_grad``/``inference_mode`` for inference.
    ``chunk_queries`` bounds how many queries the flow handles at once (memory), not the result.
    Features may be those of an LR crop (tiles): every coordinate is the whole image's.
    """

    spec_parts: ClassVar[tuple[str, ...]] = ("flow", "latent")
    latent_type: ClassVar[type[nn.Module]] = LatentModule
    """The latent module's class (its spec's network)."""

    def __init__(self, flow: dict[str, Any], latent: dict[str, Any], fade: dict[str, float] | None = None) -> None:
        super().__init__()
        flow_model = make(flow)
        latent_model = make(latent)
        if not isinstance(flow_model, LINF):
            raise TypeError(f"flow must be a 'linf' spec, got {flow.get('name')!r}")
        if not isinstance(latent_model, self.latent_type):
            raise TypeError(f"latent must be a {self.latent_type.__name__} spec, got {latent.get('name')!r}")
        if latent_model.dim != flow_model.dim:
            raise TypeError(f"latent dim {latent_model.dim} does not match the flow's vector size {flow_model.dim}")
        self.flow = flow_model
        self.latent = latent_model
        self.fade = LatentFade(**fade) if fade is not None else None
        self.flow.requires_grad_(False)
        self.flow.eval()

    @property
    def patch_size(self) -> int:
        """The flow's patch side p (3 for the paper's model)."""
        return self.flow.patch_size

    @property
    def dim(self) -> int:
        """The size D = 3 p^2 of one latent vector."""
        return self.flow.dim

    def train(self, mode: bool = True) -> LINFLP:
        """Set the latent module's mode; the frozen flow always stays in eval mode."""
        super().train(mode)
        self.flow.eval()
        return self

    def latent_count(self, out_length: int) -> int:
        """Latent cells along an axis of ``out_length`` output pixels: ``ceil(out_length / p)``."""
        return math.ceil(out_length / self.patch_size)

    def latent_shape(self, size: tuple[int, int]) -> tuple[int, int]:
        """The latent grid (Hp, Wp) of an output of ``size`` (H, W)."""
        return self.latent_count(size[0]), self.latent_count(size[1])

    def encode(self, lr_n: torch.Tensor) -> LRFeatures:
        """The flow's features of whole LR images (B, 3, h, w) in [-1, 1], shared by every later step."""
        return self.flow.encode(lr_n)

    def _window(self, size: tuple[int, int], rows: range | None, columns: range | None) -> tuple[range, range]:
        """The latent rows and columns asked for, the whole grid by default."""
        latent_rows, latent_columns = self.latent_shape(size)
        return (
            range(latent_rows) if rows is None else rows,
            range(latent_columns) if columns is None else columns,
        )

    def initial_prior(
        self,
        features: LRFeatures,
        size: tuple[int, int],
        rows: range | None = None,
        columns: range | None = None,
        chunk_queries: int = CHUNK_QUERIES,
        conditions: ConditionGrid | None = None,
        progress: ProgressCallback | None = None,
    ) -> torch.Tensor:
        """z_init (B, D, len(rows), len(columns)) for the latent rows x columns given (default: all):
        the flow forward of the pseudo-residual ``u - up(down(u))``, u the bilinear upsampling of the
        LR to ``size``, down MATLAB's antialiased bilinear shrink to the LR size. Past the image's
        bottom/right the pseudo-residual repeats its last row/column (whole patches).

        ``features`` may be those of an LR crop holding every LR pixel the window needs; all
        coordinates are the whole image's, so any window of z_init equals that window of the whole.
        ``progress`` gets the finished fraction after each band of the flow forward."""
        rows, columns = self._window(size, rows, columns)
        patch = self.patch_size
        pixel_rows = range(rows.start * patch, rows.stop * patch)
        pixel_columns = range(columns.start * patch, columns.stop * patch)
        pseudo_residual = self._window_residual(features, size, pixel_rows, pixel_columns)
        return self._flow_forward(features, pseudo_residual, size, rows, columns, chunk_queries, conditions, progress)

    def _window_residual(
        self, features: LRFeatures, size: tuple[int, int], pixel_rows: range, pixel_columns: range
    ) -> torch.Tensor:
        """The pseudo-residual at output pixels rows x columns; past the image's bottom/right it repeats
        its last row/column (whole patches)."""
        return torch.cat(
            [
                torch.cat([self._pseudo_residual(features, size, row_part, column_part) for column_part in
                           _inside_and_beyond(pixel_columns, size[1])], dim=-1)
                for row_part in _inside_and_beyond(pixel_rows, size[0])
            ],
            dim=-2,
        )  # fmt: skip

    def _pseudo_residual(
        self, features: LRFeatures, size: tuple[int, int], rows: range, columns: range
    ) -> torch.Tensor:
        """``u - up(down(u))`` at output pixels rows x columns (each inside the image)."""
        full_height, full_width = features.size
        lr_rows = _lr_span(rows, size[0], full_height)
        lr_columns = _lr_span(columns, size[1], full_width)
        u_rows = _support(lr_rows, size[0], full_height)
        u_columns = _support(lr_columns, size[1], full_width)
        upsampled = LINF.bilinear_base(features, size, u_rows, u_columns)
        shrunk = resize_window(
            upsampled, size, (full_height, full_width), lr_rows, lr_columns, (u_rows.start, u_columns.start),
            kernel="linear",
        )  # fmt: skip
        window_features = LRFeatures(
            lr=shrunk, encoded=shrunk, origin=(lr_rows.start, lr_columns.start), full_size=(full_height, full_width)
        )
        base_of_shrunk = LINF.bilinear_base(window_features, size, rows, columns)
        top, left = rows.start - u_rows.start, columns.start - u_columns.start
        inside = upsampled[..., top : top + len(rows), left : left + len(columns)]
        return inside - base_of_shrunk

    def latent_of(self, features: LRFeatures, hr_n: torch.Tensor, chunk_queries: int = CHUNK_QUERIES) -> torch.Tensor:
        """z_HR (B, D, H/p, W/p): the flow forward of the true residual ``hr - bilinear(LR)`` of HR images
        (B, 3, H, W) in [-1, 1]. H and W must be multiples of the patch size (as for training crops)."""
        height, width = hr_n.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"HR size {height}x{width} is not a multiple of the patch size {self.patch_size}")
        base = LINF.bilinear_base(features, (height, width), range(height), range(width))
        rows, columns = self.latent_shape((height, width))
        return self._flow_forward(
            features, hr_n.float() - base, (height, width), range(rows), range(columns), chunk_queries
        )

    def predict_latent(
        self,
        features: LRFeatures,
        size: tuple[int, int],
        rows: range | None = None,
        columns: range | None = None,
        chunk_queries: int = CHUNK_QUERIES,
        conditions: ConditionGrid | None = None,
        progress: ProgressCallback | None = None,
    ) -> torch.Tensor:
        """z_hat = G(z_init, LR) on the latent rows x columns given (default: the whole grid) of an
        output of ``size``. For a window to equal that window of the whole image, it must start on a
        multiple of the UNet's pooling factor, reach :attr:`LatentModule.receptive_field` cells past
        the cells wanted, and end on such a multiple or at the grid's edge. ``conditions`` (the
        flow's conditioning of some or all of these cells) saves recomputing it where it reaches.
        ``progress`` gets the finished fraction: the initial prior's bands up to :data:`INITIAL_PRIOR_SHARE`,
        then 1 once the latent module has run."""
        rows, columns = self._window(size, rows, columns)

        def initial_progress(fraction: float) -> None:
            if progress is not None:
                progress(INITIAL_PRIOR_SHARE * fraction)

        z_init = self.initial_prior(features, size, rows, columns, chunk_queries, conditions, initial_progress)
        z_hat = self._refine(z_init, features, size, rows, columns)
        if progress is not None:
            progress(1.0)
        return z_hat

    def _refine(
        self, z_init: torch.Tensor, features: LRFeatures, size: tuple[int, int], rows: range, columns: range
    ) -> torch.Tensor:
        """The latent module's z_hat for z_init of the latent rows x columns, faded beyond its scales."""
        lr = features.lr
        full_height, full_width = features.size
        row_positions = lr_positions(size[0], self.patch_size, full_height, lr.device)[rows.start : rows.stop]
        column_positions = lr_positions(size[1], self.patch_size, full_width, lr.device)[columns.start : columns.stop]
        origin_y, origin_x = features.origin
        z_hat = self.latent(z_init, channels_last(lr), row_positions - origin_y, column_positions - origin_x)
        gain = self.latent_gain(features.size, size)
        return z_hat if gain == 1.0 else z_hat * gain

    def with_fade(self, fade: LatentFade | None) -> LINFLP:
        """A new model with these weights and ``fade`` (None: no fade) in its spec, on the same device."""
        args = {key: value for key, value in self.spec["args"].items() if key != "fade"}
        if fade is not None:
            args["fade"] = {"from_scale": fade.from_scale, "width": fade.width}
        model = make({"name": self.spec["name"], "args": args})
        model.load_state_dict(self.state_dict())
        return model.to(next(self.parameters()).device).train(self.training)

    def latent_gain(self, lr_size: tuple[int, int], size: tuple[int, int]) -> float:
        """The fade's gain for an LR of ``lr_size`` upscaled to ``size`` (the larger axis scale counts);
        1 without a fade."""
        if self.fade is None:
            return 1.0
        return self.fade.gain(max(size[0] / lr_size[0], size[1] / lr_size[1]))

    def conditions(
        self, features: LRFeatures, size: tuple[int, int], chunk_queries: int = CHUNK_QUERIES
    ) -> ConditionGrid:
        """The flow's conditioning of every latent cell of an output of ``size``, for
        :meth:`predict_latent` and :meth:`render_latent` to share instead of each computing it (no
        gradients: the flow is frozen)."""
        rows, columns = self._window(size, None, None)
        with torch.no_grad():
            return self.flow.condition_grid(features, size, rows, columns, chunk_queries)

    def render(self, features: LRFeatures, size: tuple[int, int], chunk_queries: int = CHUNK_QUERIES) -> torch.Tensor:
        """The output (B, 3, H, W) in [-1, 1]: flow inverse of z_hat plus the bilinear base."""
        conditions = self.conditions(features, size, chunk_queries)
        z_hat = self.predict_latent(features, size, chunk_queries=chunk_queries, conditions=conditions)
        return self.render_latent(features, size, z_hat, chunk_queries, conditions)

    def render_latent(
        self,
        features: LRFeatures,
        size: tuple[int, int],
        z_hat: torch.Tensor,
        chunk_queries: int = CHUNK_QUERIES,
        conditions: ConditionGrid | None = None,
    ) -> torch.Tensor:
        """The output for a given latent grid z_hat (B, D, Hp, Wp): flow inverse plus the bilinear base."""

        def read(rows: range, columns: range) -> torch.Tensor:
            return z_hat[:, :, rows.start : rows.stop, columns.start : columns.stop].flatten(2)

        return self.flow.render(features, size, latent=read, chunk_queries=chunk_queries, conditions=conditions)

    def forward(self, lr_n: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``render(encode(lr_n), size)``: LR (B, 3, h, w) in [-1, 1] -> output (B, 3, H, W) in [-1, 1]."""
        return self.render(self.encode(lr_n), size)

    def _flow_forward(
        self,
        features: LRFeatures,
        residual: torch.Tensor,
        size: tuple[int, int],
        rows: range,
        columns: range,
        chunk_queries: int,
        conditions: ConditionGrid | None = None,
        progress: ProgressCallback | None = None,
    ) -> torch.Tensor:
        """Latents (B, D, len(rows), len(columns)) of the residual (B, 3, len(rows) p, len(columns) p) of
        those latent cells of an output of ``size``, in bands of whole latent rows of at most
        ``chunk_queries`` queries, in float32 outside autocast; channels-last in memory, as the latent
        module's convolutions want them. ``progress`` gets the finished fraction after each band."""
        device = residual.device
        batch = residual.shape[0]
        patch = self.patch_size
        band = max(1, chunk_queries // len(columns))
        shape = (batch, self.dim, len(rows), len(columns))
        latents = torch.empty(shape, device=device, memory_format=torch.channels_last)  # as the latent module reads it
        for start in range(0, len(rows), band):
            end = min(len(rows), start + band)
            band_rows = range(rows.start + start, rows.start + end)
            affines = self.flow.cells_affines(features, size, band_rows, columns, conditions)
            vectors = F.pixel_unshuffle(residual[:, :, start * patch : end * patch], patch).flatten(2)
            with torch.autocast(device.type, enabled=False):
                z = self.flow.flow.latents_of_columns(vectors.float(), affines)
            latents[:, :, start:end] = z.view(batch, self.dim, end - start, len(columns))
            if progress is not None:
                progress(end / len(rows))
        return latents


def _inside_and_beyond(pixels: range, length: int) -> list[range]:
    """A window of output pixels split into the part inside the image and, past its end, copies of
    the last pixel (whole patches at the bottom/right edge)."""
    inside = range(pixels.start, min(pixels.stop, length))
    return [inside] + [range(length - 1, length)] * max(0, pixels.stop - length)


def _lr_span(pixels: range, out_length: int, lr_length: int) -> range:
    """The LR pixels that bilinear upsampling reads for these output pixels."""
    first = math.floor((pixels.start + 0.5) * lr_length / out_length - 0.5)
    last = math.floor((pixels.stop - 0.5) * lr_length / out_length - 0.5) + 1
    return range(max(first, 0), min(last + 1, lr_length))


def _support(lr_pixels: range, out_length: int, lr_length: int) -> range:
    """The output pixels MATLAB's antialiased bilinear shrink reads for these LR pixels."""
    indices, _ = contributions(out_length, lr_length, lr_length / out_length, kernel="linear")
    used = indices[lr_pixels.start : lr_pixels.stop]
    return range(int(used.min()), int(used.max()) + 1)
