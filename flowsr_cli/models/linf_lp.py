"""LINF-LP: a frozen LINF whose latents come from a learned prior instead of a Gaussian (DESIGN §5).

For an LR image and an output size (H, W): the flow forward of a pseudo-residual made from the LR
alone gives an initial latent grid z_init; the latent module G refines it into z_hat; the flow
inverse of z_hat plus the bilinear base is the output. Everything is computed for the same (H, W)
from the same LR features, so LR features and latents stay aligned, and the LR features are encoded
once and shared by both flow directions.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from flowsr_cli.models.coords import bilinear_base, cell_size, grid, patch_centres, unfold_patches
from flowsr_cli.models.latent import LatentModule, lr_positions
from flowsr_cli.models.linf import LINF, LRFeatures
from flowsr_cli.models.registry import make, register

CHUNK_QUERIES = 16384
"""Default bound on the queries the flow handles at once (the result does not depend on it)."""


@register("linf-lp")
class LINFLP(nn.Module):
    """A frozen LINF (``flow``, a ``linf`` spec) and a trainable latent module (``latent``, an
    ``lp-latent`` spec whose ``dim`` equals the flow's vector size).

    The flow's parameters never require gradients and the flow stays in eval mode whatever
    :meth:`train` is asked; gradients still pass through its inverse into the latent module. No
    method disables autograd: callers choose ``torch.no_grad``/``inference_mode`` for inference.
    ``chunk_queries`` bounds how many queries the flow handles at once (memory), not the result.
    Works on whole images only (LR features of a crop are rejected).
    """

    def __init__(self, flow: dict[str, Any], latent: dict[str, Any]) -> None:
        super().__init__()
        flow_model = make(flow)
        latent_model = make(latent)
        if not isinstance(flow_model, LINF):
            raise TypeError(f"flow must be a 'linf' spec, got {flow.get('name')!r}")
        if not isinstance(latent_model, LatentModule):
            raise TypeError(f"latent must be an 'lp-latent' spec, got {latent.get('name')!r}")
        if latent_model.dim != flow_model.dim:
            raise TypeError(f"latent dim {latent_model.dim} does not match the flow's vector size {flow_model.dim}")
        self.flow = flow_model
        self.latent = latent_model
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

    def latent_shape(self, size: tuple[int, int]) -> tuple[int, int]:
        """The latent grid (Hp, Wp) = (ceil(H / p), ceil(W / p)) of an output of ``size`` (H, W)."""
        return math.ceil(size[0] / self.patch_size), math.ceil(size[1] / self.patch_size)

    def encode(self, lr_n: torch.Tensor) -> LRFeatures:
        """The flow's features of whole LR images (B, 3, h, w) in [-1, 1], shared by every later step."""
        return self.flow.encode(lr_n)

    def initial_prior(
        self, features: LRFeatures, size: tuple[int, int], chunk_queries: int = CHUNK_QUERIES
    ) -> torch.Tensor:
        """z_init (B, D, Hp, Wp): the flow forward of the pseudo-residual ``u - up(down(u))``, u the
        bilinear upsampling of the LR to ``size``; the pseudo-residual is replicate-padded at the
        bottom/right to whole patches."""
        _require_whole_image(features)
        lr = features.lr.float()
        height, width = size
        rows, columns = patch_centres(height, 1, lr.device), patch_centres(width, 1, lr.device)
        upsampled = bilinear_base(lr, rows, columns)
        shrunk = F.interpolate(upsampled, size=lr.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
        pseudo_residual = upsampled - bilinear_base(shrunk, rows, columns)
        latent_rows, latent_columns = self.latent_shape(size)
        patch = self.patch_size
        padded = F.pad(
            pseudo_residual, (0, latent_columns * patch - width, 0, latent_rows * patch - height), mode="replicate"
        )
        return self._flow_forward(features, padded, size, chunk_queries)

    def latent_of(self, features: LRFeatures, hr_n: torch.Tensor, chunk_queries: int = CHUNK_QUERIES) -> torch.Tensor:
        """z_HR (B, D, H/p, W/p): the flow forward of the true residual ``hr - bilinear(LR)`` of HR images
        (B, 3, H, W) in [-1, 1]. H and W must be multiples of the patch size (as for training crops)."""
        _require_whole_image(features)
        height, width = hr_n.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"HR size {height}x{width} is not a multiple of the patch size {self.patch_size}")
        base = LINF.bilinear_base(features, (height, width), range(height), range(width))
        return self._flow_forward(features, hr_n.float() - base, (height, width), chunk_queries)

    def predict_latent(
        self, features: LRFeatures, size: tuple[int, int], chunk_queries: int = CHUNK_QUERIES
    ) -> torch.Tensor:
        """z_hat (B, D, Hp, Wp) = G(z_init, LR) for an output of ``size`` (H, W)."""
        z_init = self.initial_prior(features, size, chunk_queries)
        lr = features.lr
        rows = lr_positions(size[0], self.patch_size, lr.shape[-2], lr.device)
        columns = lr_positions(size[1], self.patch_size, lr.shape[-1], lr.device)
        return self.latent(z_init, lr, rows, columns)

    def render(self, features: LRFeatures, size: tuple[int, int], chunk_queries: int = CHUNK_QUERIES) -> torch.Tensor:
        """The output (B, 3, H, W) in [-1, 1]: flow inverse of z_hat plus the bilinear base."""
        return self.render_latent(features, size, self.predict_latent(features, size, chunk_queries), chunk_queries)

    def render_latent(
        self, features: LRFeatures, size: tuple[int, int], z_hat: torch.Tensor, chunk_queries: int = CHUNK_QUERIES
    ) -> torch.Tensor:
        """The output for a given latent grid z_hat (B, D, Hp, Wp): flow inverse plus the bilinear base."""

        def read(rows: range, columns: range) -> torch.Tensor:
            window = z_hat[:, :, rows.start : rows.stop, columns.start : columns.stop]
            return window.permute(0, 2, 3, 1).reshape(z_hat.shape[0], -1, self.dim)

        return self.flow.render(features, size, latent=read, chunk_queries=chunk_queries)

    def forward(self, lr_n: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``render(encode(lr_n), size)``: LR (B, 3, h, w) in [-1, 1] -> output (B, 3, H, W) in [-1, 1]."""
        return self.render(self.encode(lr_n), size)

    def _flow_forward(
        self, features: LRFeatures, residual: torch.Tensor, size: tuple[int, int], chunk_queries: int
    ) -> torch.Tensor:
        """Latents (B, D, Hp, Wp) of residual images (B, 3, Hp p, Wp p) of an output of ``size``, in bands
        of whole latent rows of at most ``chunk_queries`` queries, in float32 outside autocast."""
        device = residual.device
        batch = residual.shape[0]
        patch = self.patch_size
        all_rows = patch_centres(size[0], patch, device)
        all_columns = patch_centres(size[1], patch, device)
        cell = cell_size(*size)
        band = max(1, chunk_queries // len(all_columns))
        bands: list[torch.Tensor] = []
        for start in range(0, len(all_rows), band):
            end = min(len(all_rows), start + band)
            points = grid(all_rows[start:end], all_columns).expand(batch, -1, -1)
            condition = self.flow.condition(features, points, cell)
            vectors = unfold_patches(residual[:, :, start * patch : end * patch], patch)
            with torch.autocast(device.type, enabled=False):
                _, z = self.flow.log_prob(vectors.flatten(0, 1).float(), condition.flatten(0, 1).float())
            bands.append(z.view(batch, end - start, len(all_columns), self.dim))
        return torch.cat(bands, dim=1).permute(0, 3, 1, 2).contiguous()


def _require_whole_image(features: LRFeatures) -> None:
    """Reject features of an LR crop: the pseudo-residual and the LR branch need the whole image."""
    if features.origin != (0, 0) or features.size != tuple(features.lr.shape[-2:]):
        raise ValueError("LINF-LP works on whole LR images; features of a crop are not supported yet")
