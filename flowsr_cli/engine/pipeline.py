"""One image through an upscaler: pixel formats in and out, greyscale, and alpha handled around the model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from flowsr_cli.engine.bicubic import BicubicUpscaler
from flowsr_cli.engine.upscaler import ProgressCallback, Upscaler, UpscaleReport
from flowsr_cli.io.image import Image
from flowsr_cli.io.sizing import Size


def pixels_to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, C) uint8/uint16 pixels as a (1, C, H, W) float32 tensor in [0, 1]."""
    scale = float(np.iinfo(pixels.dtype).max)
    as_float = torch.from_numpy(pixels.astype(np.float32, copy=True))
    return as_float.div_(scale).permute(2, 0, 1).unsqueeze(0).contiguous()


def rgb_tensor(image: Image) -> torch.Tensor:
    """An image's colour as a (1, 3, H, W) float32 tensor in [0, 1]: greyscale replicated, alpha dropped."""
    colour = pixels_to_tensor(image.pixels)[:, : 3 if image.channels >= 3 else 1]
    return colour.expand(-1, 3, -1, -1).contiguous()


def tensor_to_pixels(tensor: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """A (1, C, H, W) float tensor as (H, W, C) pixels of ``dtype``: clamped to [0, 1], rounded."""
    scale = float(np.iinfo(dtype).max)
    values = torch.nan_to_num(tensor[0].float(), nan=0.0, posinf=1.0, neginf=0.0).clamp_(0.0, 1.0)
    values = values.mul_(scale).round_().permute(1, 2, 0).to(torch.int32)
    return np.ascontiguousarray(values.numpy().astype(dtype))


def bleed_transparent_colour(colour: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Give fully transparent pixels the colour of their visible surroundings (push-pull fill).

    The colour under alpha 0 is arbitrary (often black); interpolating across an edge would pull it
    into visible pixels as a dark fringe. ``colour`` is (1, C, H, W), ``alpha`` (1, 1, H, W) in [0, 1].
    """
    visible = alpha > 0
    if not bool(visible.any()) or bool(visible.all()):
        return colour
    levels = [(colour * alpha, alpha)]
    while max(levels[-1][1].shape[-2:]) > 1:
        weighted, weight = levels[-1]
        levels.append((F.avg_pool2d(weighted, 2, ceil_mode=True), F.avg_pool2d(weight, 2, ceil_mode=True)))
    weighted, weight = levels[-1]
    filled = weighted / weight.clamp_min(1e-12)
    for weighted, weight in reversed(levels[:-1]):
        coarse = F.interpolate(filled, size=weighted.shape[-2:], mode="bilinear", align_corners=False)
        filled = torch.where(weight > 0, weighted / weight.clamp_min(1e-12), coarse)
    return torch.where(visible, colour, filled)


def upscale_image(
    image: Image,
    size: Size,
    upscaler: Upscaler,
    seeds: Sequence[int] = (0,),
    progress: ProgressCallback | None = None,
) -> tuple[list[Image], UpscaleReport]:
    """Upscale ``image`` to ``size`` once per seed, keeping its channels, bit depth and metadata.

    Finished tiles go straight into output canvases of the final dtype. Models see RGB: greyscale is
    replicated and averaged back. Alpha is not shown to the model; it is resized with the bicubic
    resize, after transparent colours were bled in from their neighbours.
    """
    tensor = pixels_to_tensor(image.pixels)
    colour_channels = 3 if image.channels >= 3 else 1
    colour = tensor[:, :colour_channels]
    alpha = tensor[:, colour_channels:] if image.has_alpha else None
    if alpha is not None:
        colour = bleed_transparent_colour(colour, alpha)
    dtype = image.pixels.dtype
    canvases = [np.empty((size.height, size.width, image.channels), dtype=dtype) for _ in seeds]

    def write_colour(sample: int, rows: range, columns: range, tile: torch.Tensor) -> None:
        if colour_channels == 1:
            tile = tile.mean(dim=1, keepdim=True)
        canvases[sample][rows.start : rows.stop, columns.start : columns.stop, :colour_channels] = tensor_to_pixels(
            tile, dtype
        )

    def write_alpha(sample: int, rows: range, columns: range, tile: torch.Tensor) -> None:
        pixels = tensor_to_pixels(tile, dtype)
        for canvas in canvases:
            canvas[rows.start : rows.stop, columns.start : columns.stop, colour_channels:] = pixels

    rgb = colour.expand(-1, 3, -1, -1).contiguous() if colour_channels == 1 else colour
    report = upscaler.upscale(rgb, size, write_colour, seeds, progress)
    if alpha is not None:
        BicubicUpscaler(torch.device("cpu")).upscale(alpha, size, write_alpha)
    images = [Image(canvas, image.format, image.metadata, list(image.warnings)) for canvas in canvases]
    return images, report
