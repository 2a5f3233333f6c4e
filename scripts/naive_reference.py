"""LINF-LP as the original LINF and LP code computes it: the benchmark's naive reference paths.

Written from the upstream code's structure, sharing only the weights (the layers' modules) with
flowsr, so the speed-up flowsr reports is against an independent, straightforward implementation:

* the whole image at once: encoder, coef and freq convolutions over the full LR, whole-image tensors;
* queries in fixed batches of 30,000 (upstream ``batched_predict``), each fetching its 4 neighbouring
  latents with ``grid_sample`` (nearest) from the full coef/freq maps and the LR coordinate map;
* the flow forward with its log-determinant, and the inverse through ``torch.inverse`` of every
  linear layer on every batch;
* the LR encoded and every query's conditioning computed once for the prior's forward pass (z_init)
  and again for the inverse (the output);
* the latent module layer by layer: dense blocks concatenating all earlier outputs for every conv,
  BatchNorm as its own layer, PyTorch's default memory layout; its output times the model's fade gain
  beyond the prior's training range (flowsr's own addition, not upstream's).

:func:`naive_hcflow_upscale` is the heat-0 output of an original-layout HCFlow network (the test suite's independent
re-implementation of the original code) by its own reverse pass over the whole image.

:func:`naive_original_upscale` runs an imported original checkpoint (``linf-lp-original``) the same way, with
the original's own latent inputs: plain-bilinear pseudo-residual, ``H // p + 1`` zero-padded block rows (blocks
whose centre pixel is padding queried at the image centre), the stride-3 LR branch stretched to the latent grid
by one bilinear resize, and the UNet upsampling with ``align_corners=True`` then padding to its skips.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from flowsr_cli.engine.resize import resize
from flowsr_cli.families.common.coords import fold_patches, unfold_patches
from flowsr_cli.families.common.latent import LR_STRIDE, DenseBlock, LatentModule, lr_positions
from flowsr_cli.families.common.linear_flow import ConditionalLinearFlow
from flowsr_cli.families.linf.network import LINF
from flowsr_cli.families.linf.original_prior import OriginalLatentModule, OriginalLINFLP
from flowsr_cli.families.linf.prior import LINFLP
from flowsr_cli.io.sizing import Size

QUERY_BATCH = 30_000
"""Queries per batch, as upstream's test script uses."""


def naive_upscale(model: LINFLP, lr: torch.Tensor, size: Size) -> torch.Tensor:
    """The output (1, 3, H, W) in [0, 1] for an LR image (1, 3, h, w) in [0, 1]."""
    flow = model.flow
    full = (size.height, size.width)
    with torch.inference_mode():
        lr_n = lr * 2 - 1
        queries = _query_points(full, flow.patch_size)
        cells = [math.ceil(side / flow.patch_size) for side in full]
        pseudo = unfold_patches(_pseudo_residual(lr_n, full, flow.patch_size), flow.patch_size)[0]
        conditions = _conditions(flow, lr_n, queries, full)
        z_init = torch.cat([_forward(flow.flow, x, c)[0] for x, c in zip(pseudo.split(QUERY_BATCH), conditions)])
        z_init = z_init.view(1, *cells, -1).permute(0, 3, 1, 2)
        rows = lr_positions(full[0], flow.patch_size, lr.shape[-2])
        columns = lr_positions(full[1], flow.patch_size, lr.shape[-1])
        z_hat = _latent(model.latent, z_init, lr_n, rows, columns).permute(0, 2, 3, 1).reshape(-1, flow.dim)
        z_hat = z_hat * model.latent_gain((lr.shape[-2], lr.shape[-1]), full)
        conditions = _conditions(flow, lr_n, queries, full)
        residual = torch.cat([_inverse(flow.flow, z, c) for z, c in zip(z_hat.split(QUERY_BATCH), conditions)])
        pixels = fold_patches(residual.unsqueeze(0), *cells, flow.patch_size)[..., : full[0], : full[1]]
        output = pixels + F.interpolate(lr_n, size=full, mode="bilinear", align_corners=False)
    return (output + 1) / 2


def naive_original_upscale(model: OriginalLINFLP, lr: torch.Tensor, size: Size) -> torch.Tensor:
    """The output (1, 3, H, W) in [0, 1] of an original LINF-LP for an LR image (1, 3, h, w) in [0, 1]."""
    flow = model.flow
    patch = flow.patch_size
    full = (size.height, size.width)
    cells = [side // patch + 1 for side in full]
    with torch.inference_mode():
        lr_n = lr * 2 - 1
        upsampled = F.interpolate(lr_n, size=full, mode="bilinear", align_corners=False)
        shrunk = F.interpolate(upsampled, size=lr_n.shape[-2:], mode="bilinear", align_corners=False)
        residual = upsampled - F.interpolate(shrunk, size=full, mode="bilinear", align_corners=False)
        residual = F.pad(residual, (0, cells[1] * patch - full[1], 0, cells[0] * patch - full[0]))
        pseudo = unfold_patches(residual, patch)[0]
        queries = _original_query_points(full, patch)
        conditions = _conditions(flow, lr_n, queries, full)
        z_init = torch.cat([_forward(flow.flow, x, c)[0] for x, c in zip(pseudo.split(QUERY_BATCH), conditions)])
        z_init = z_init.view(1, *cells, -1).permute(0, 3, 1, 2)
        z_hat = _original_latent(model.latent, z_init, lr_n).permute(0, 2, 3, 1).reshape(-1, flow.dim)
        conditions = _conditions(flow, lr_n, queries, full)
        residual = torch.cat([_inverse(flow.flow, z, c) for z, c in zip(z_hat.split(QUERY_BATCH), conditions)])
        pixels = fold_patches(residual.unsqueeze(0), *cells, patch)[..., : full[0], : full[1]]
    return (pixels + upsampled + 1) / 2


def naive_hcflow_upscale(original: torch.nn.Module, lr: torch.Tensor) -> torch.Tensor:
    """The heat-0 output (1, 3, 4h, 4w), unclamped, of an original-layout HCFlow for an LR (1, 3, h, w) in [0, 1]."""
    with torch.inference_mode():
        return original.flow(z=lr, eps_std=0.0, reverse=True)


def _original_query_points(full: tuple[int, int], patch: int) -> torch.Tensor:
    """Each block's centre pixel (N, 2) as (y, x) in [-1, 1], row-major; (0, 0) where that pixel is padding."""
    axes = []
    for side in full:
        centre = torch.arange(side // patch + 1) * patch + patch // 2
        axes.append(torch.where(centre < side, -1 + (2 * centre + 1) / side, torch.nan))
    ys, xs = torch.meshgrid(*axes, indexing="ij")
    points = torch.stack([ys.flatten(), xs.flatten()], dim=-1).float()
    padding = points.isnan().any(dim=-1)
    points[padding] = 0.0
    return points


def _original_latent(latent: OriginalLatentModule, z_init: torch.Tensor, lr_n: torch.Tensor) -> torch.Tensor:
    """z_hat from z_init and the LR, as the original UNet's forward runs on the whole latent grid."""
    lr_features = F.interpolate(latent.lr_proj(lr_n), size=z_init.shape[-2:], mode="bilinear", align_corners=False)
    x = latent.inc(torch.cat([latent.input_proj(z_init), lr_features], dim=1))
    skips = [x]
    for down in latent.down_layers:
        x = down(x)
        skips.append(x)
    skips.pop()
    for up in latent.up_layers:
        skip = skips.pop()
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        x = F.pad(x, (0, skip.shape[-1] - x.shape[-1], 0, skip.shape[-2] - x.shape[-2]))
        x = up.conv(torch.cat([skip, x], dim=1))
    return latent.outc(x)


def _query_points(full: tuple[int, int], patch: int) -> torch.Tensor:
    """Patch centres (N, 2) as (y, x) in [-1, 1], row-major; the last patch may reach past the image."""
    axes = [-1 + patch * (2 * torch.arange(math.ceil(side / patch)) + 1) / side for side in full]
    ys, xs = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([ys.flatten(), xs.flatten()], dim=-1).float()


def _pseudo_residual(lr_n: torch.Tensor, full: tuple[int, int], patch: int) -> torch.Tensor:
    """``u - up(down(u))`` over the whole output, the last row and column repeated to whole patches."""
    upsampled = F.interpolate(lr_n, size=full, mode="bilinear", align_corners=False)
    shrunk = resize(upsampled, tuple(lr_n.shape[-2:]), kernel="linear")
    residual = upsampled - F.interpolate(shrunk, size=full, mode="bilinear", align_corners=False)
    pad_rows, pad_columns = (-full[0]) % patch, (-full[1]) % patch
    return F.pad(residual, (0, pad_columns, 0, pad_rows), mode="replicate")


def _conditions(flow: LINF, lr_n: torch.Tensor, queries: torch.Tensor, full: tuple[int, int]) -> list[torch.Tensor]:
    """The conditioning of every query, batch by batch, from a fresh encoding of the LR."""
    features = flow.encoder(lr_n)
    coef, freq = flow.coef(features), flow.freq(features)
    height, width = features.shape[-2:]
    feature_coords = torch.stack(
        torch.meshgrid(*[-1 + (2 * torch.arange(side) + 1) / side for side in (height, width)], indexing="ij")
    ).unsqueeze(0)
    phase = flow.phase(torch.tensor([2 / full[0] * height, 2 / full[1] * width]))
    return [
        _condition(flow, coef, freq, feature_coords, phase, queries[start : start + QUERY_BATCH])
        for start in range(0, len(queries), QUERY_BATCH)
    ]


def _condition(
    flow: LINF,
    coef: torch.Tensor,
    freq: torch.Tensor,
    feature_coords: torch.Tensor,
    phase: torch.Tensor,
    points: torch.Tensor,
) -> torch.Tensor:
    height, width = coef.shape[-2:]
    half = flow.hidden // 2
    terms, areas = [], []
    for shift_y in (-1, 1):
        for shift_x in (-1, 1):
            shifted = points.clone()
            shifted[:, 0] += shift_y / height + 1e-6
            shifted[:, 1] += shift_x / width + 1e-6
            shifted.clamp_(-1 + 1e-6, 1 - 1e-6)
            sample_at = shifted.flip(-1).view(1, 1, -1, 2)

            def fetch(table: torch.Tensor, at: torch.Tensor = sample_at) -> torch.Tensor:
                return F.grid_sample(table, at, mode="nearest", align_corners=False)[0, :, 0].T

            q_coef, q_freq, q_coord = fetch(coef), fetch(freq), fetch(feature_coords)
            relative = (points - q_coord) * torch.tensor([height, width])
            angle = q_freq[:, :half] * relative[:, :1] + q_freq[:, half:] * relative[:, 1:] + phase
            terms.append(q_coef * torch.cat([torch.cos(math.pi * angle), torch.sin(math.pi * angle)], dim=-1))
            areas.append((relative[:, 0] * relative[:, 1]).abs() + 1e-9)
    total = torch.stack(areas).sum(dim=0)
    weighted = [term * (areas[3 - index] / total).unsqueeze(-1) for index, term in enumerate(terms)]
    return flow.mlp(torch.cat(weighted, dim=-1))


def _affine(flow: ConditionalLinearFlow, condition: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    start = 2 * flow.features * layer
    scale = torch.sigmoid(condition[:, start : start + flow.features] + 2.0) + 1e-4
    return scale, condition[:, start + flow.features : start + 2 * flow.features]


def _forward(
    flow: ConditionalLinearFlow, x: torch.Tensor, condition: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The latents and the log-determinant, which upstream's flow always computes alongside."""
    log_det = x.new_zeros(x.shape[0])
    for layer, linear in enumerate(flow.linears):
        x = F.linear(x, linear.weight, linear.bias)
        scale, shift = _affine(flow, condition, layer)
        x = x * scale + shift
        log_det = log_det + torch.slogdet(linear.weight)[1] + torch.log(scale).sum(dim=1)
    log_det = log_det + torch.slogdet(flow.last.weight)[1]
    return F.linear(x, flow.last.weight, flow.last.bias), log_det


def _inverse(flow: ConditionalLinearFlow, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    x = (z - flow.last.bias) @ torch.inverse(flow.last.weight).T
    for layer in reversed(range(len(flow.linears))):
        scale, shift = _affine(flow, condition, layer)
        linear = flow.linears[layer]
        x = ((x - shift) / scale - linear.bias) @ torch.inverse(linear.weight).T
    return x


def _latent(
    latent: LatentModule, z_init: torch.Tensor, lr_n: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor
) -> torch.Tensor:
    """z_hat from z_init and the LR, as upstream's LP code runs its generator."""
    height, width = lr_n.shape[-2:]
    padded = F.pad(lr_n, (0, -width % LR_STRIDE, 0, -height % LR_STRIDE), mode="replicate")
    cells = _dense(latent.lr_branch, F.leaky_relu(latent.lr_stem(padded), 0.2))
    ys = (2.0 * (rows - 1.0) / LR_STRIDE + 1.0) / cells.shape[-2] - 1.0
    xs = (2.0 * (columns - 1.0) / LR_STRIDE + 1.0) / cells.shape[-1] - 1.0
    at = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).unsqueeze(0)
    lr_features = F.grid_sample(cells, at, mode="bilinear", padding_mode="border", align_corners=False)
    x = torch.cat([_dense(latent.latent_branch, z_init), lr_features], dim=1)
    grid_height, grid_width = z_init.shape[-2:]
    multiple = latent.unet.multiple
    x = F.pad(x, (0, -grid_width % multiple, 0, -grid_height % multiple))
    skips = []
    for level, block in enumerate(latent.unet.down):
        x = _layers(block, F.max_pool2d(x, 2) if level else x)
        skips.append(x)
    skips.pop()
    for block in latent.unet.up:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = _layers(block, torch.cat([skips.pop(), x], dim=1))
    return latent.head(x)[..., :grid_height, :grid_width]


def _dense(block: DenseBlock, x: torch.Tensor) -> torch.Tensor:
    features = [x]
    for conv in block.convs:
        features.append(F.leaky_relu(conv(torch.cat(features, dim=1)), 0.2))
    return block.fuse(torch.cat(features, dim=1))


def _layers(block: torch.nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    for layer in block:
        x = layer(x)
    return x
