"""One image through a rescaling model (it makes the LR itself, and restores the HR from that exact LR): the pixel
formats around the model's engine, for `flowsr rescale down` and `flowsr rescale up`.

* Down: the HR is padded on the right and bottom to a multiple of the scale by reflection (the padding is recorded,
  and cropped on the way back); its colour becomes the model's LR, clamped and rounded to 8 bits (the LR the
  inverse is made for, whatever the HR's depth). Greyscale goes through the model as RGB (the LR stays RGB: its
  exact pixels matter) and comes back greyscale. Alpha is handled apart from the model: averaged over each
  scale x scale block on the way down, bicubic on the way up (so it does not come back exactly).
* Up: the LR's colour is inverted (at the recorded seed and heat), alpha is enlarged with the bicubic, and the
  result is cropped to the original size, at the original's bit depth and channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from flowsr_cli.engine.bicubic import BicubicUpscaler
from flowsr_cli.engine.pipeline import pixels_to_tensor, tensor_to_pixels
from flowsr_cli.engine.upscaler import ProgressCallback, TileSink, UpscaleReport
from flowsr_cli.io.image import Image
from flowsr_cli.io.rescale_mark import RescaleRecord
from flowsr_cli.io.sizing import Size

LR_FORMAT = "png"
"""The format the LR Image is tagged with (the writer chooses the file's)."""


class Rescaler(Protocol):
    """What a family's rescaling engine offers (built by its registered ``rescaler``)."""

    name: str
    notes: list[str]
    """Things to tell the user once per run; the engine keeps adding to it."""

    @property
    def scale(self) -> int:
        """The one factor it shrinks and enlarges by."""
        ...

    @property
    def default_temperature(self) -> float:
        """The heat its inverse samples at unless told (recorded in each LR)."""
        ...

    def downscale(self, hr: torch.Tensor, progress: ProgressCallback | None = None) -> torch.Tensor:
        """HR (1, 3, H, W) float in [0, 1] on the CPU, H and W multiples of :attr:`scale` -> the model's LR (1, 3,
        H / scale, W / scale) on the CPU, neither clamped nor rounded; the same values whatever the tiling."""
        ...

    def upscale(
        self,
        lr: torch.Tensor,
        sink: TileSink,
        seed: int,
        temperature: float,
        progress: ProgressCallback | None = None,
    ) -> UpscaleReport:
        """The inverse of LR (1, 3, h, w) float in [0, 1] on the CPU: every pixel of the (scale h) x (scale w)
        HR reaches ``sink`` once (sample 0), from latents drawn from ``seed`` at heat ``temperature``."""
        ...


@dataclass(frozen=True)
class Downscaled:
    """What `rescale down` made of one image: the LR and what its chunk records about the original."""

    image: Image
    """The 8-bit LR: RGB (greyscale inputs too), with the input's alpha averaged down; the input's metadata."""
    size: Size
    """The original's size."""
    padding: tuple[int, int]
    """Columns added on the right and rows added at the bottom (reflected) to reach a multiple of the scale."""
    grey: bool
    bit_depth: int
    notes: list[str]


def padding_for(size: Size, scale: int) -> tuple[int, int]:
    """(right, bottom) padding that brings ``size`` to a multiple of ``scale``."""
    return -size.width % scale, -size.height % scale


def reflect_pad(pixels: np.ndarray, padding: tuple[int, int]) -> np.ndarray:
    """(H, W, C) pixels with ``padding`` (right, bottom) columns and rows mirrored in (the edge pixel itself not
    repeated; an image narrower than its padding is mirrored back and forth)."""
    right, bottom = padding
    return np.pad(pixels, ((0, bottom), (0, right), (0, 0)), mode="reflect")


def rescale_down(image: Image, rescaler: Rescaler, progress: ProgressCallback | None = None) -> Downscaled:
    """The model's 8-bit LR of ``image`` (see the module docstring)."""
    size = Size(image.width, image.height)
    padding = padding_for(size, rescaler.scale)
    tensor = pixels_to_tensor(reflect_pad(image.pixels, padding))
    colour_channels = 3 if image.channels >= 3 else 1
    colour = tensor[:, :colour_channels].expand(-1, 3, -1, -1).contiguous()
    lr = tensor_to_pixels(rescaler.downscale(colour, progress), np.dtype(np.uint8))
    if image.has_alpha:
        alpha = F.avg_pool2d(tensor[:, colour_channels:], rescaler.scale)
        lr = np.concatenate([lr, tensor_to_pixels(alpha, np.dtype(np.uint8))], axis=2)
    notes = []
    if image.bit_depth == 16:
        notes.append("16-bit image: its LR is 8-bit, as the model makes it; `rescale up` writes 16 bits again")
    lr_image = Image(lr, LR_FORMAT, image.metadata, list(image.warnings))
    return Downscaled(lr_image, size, padding, image.channels < 3, image.bit_depth, notes)


def lr_colour(image: Image) -> np.ndarray | None:
    """The LR's colour as `rescale down` wrote it, (h, w, 3) uint8; None when the image cannot be such an LR (not
    8-bit, or not RGB)."""
    if image.bit_depth != 8 or image.channels < 3:
        return None
    return np.ascontiguousarray(image.pixels[..., :3])


def forced_colour(image: Image) -> np.ndarray:
    """Any image's colour as 8-bit RGB (greyscale replicated, 16 bits rounded), for LRs inverted under --force."""
    colour = tensor_to_pixels(pixels_to_tensor(image.pixels)[:, : 3 if image.channels >= 3 else 1], np.dtype(np.uint8))
    return np.ascontiguousarray(np.repeat(colour, 3, axis=2) if colour.shape[2] == 1 else colour)


def rescale_up(
    image: Image,
    colour: np.ndarray,
    record: RescaleRecord,
    rescaler: Rescaler,
    progress: ProgressCallback | None = None,
) -> tuple[Image, UpscaleReport]:
    """The HR restored from the LR ``image`` whose 8-bit RGB is ``colour``, as ``record`` (its chunk) says: its
    seed and heat, cropped to its original size, greyscale and bit depth; the LR's alpha is enlarged with the
    bicubic. The LR's metadata is kept."""
    height, width = colour.shape[:2]
    scale = rescaler.scale
    dtype = np.dtype(np.uint16 if record.bit_depth == 16 else np.uint8)
    colour_channels = 1 if record.grey else 3
    channels = colour_channels + (1 if image.has_alpha else 0)
    canvas = np.empty((record.size.height, record.size.width, channels), dtype=dtype)

    def write(first: int, rows: range, columns: range, tile: torch.Tensor) -> None:
        kept_rows = range(rows.start, min(rows.stop, record.size.height))
        kept_columns = range(columns.start, min(columns.stop, record.size.width))
        if len(kept_rows) and len(kept_columns):
            part = tile[..., : len(kept_rows), : len(kept_columns)]
            canvas[
                kept_rows.start : kept_rows.stop, kept_columns.start : kept_columns.stop, first : first + tile.shape[1]
            ] = tensor_to_pixels(part, dtype)

    def write_colour(sample: int, rows: range, columns: range, tile: torch.Tensor) -> None:
        write(0, rows, columns, tile.mean(dim=1, keepdim=True) if record.grey else tile)

    lr = pixels_to_tensor(colour)
    report = rescaler.upscale(lr, write_colour, record.seed, record.temperature, progress)
    if image.has_alpha:
        alpha = pixels_to_tensor(image.pixels)[:, image.channels - 1 :]

        def write_alpha(sample: int, rows: range, columns: range, tile: torch.Tensor) -> None:
            write(colour_channels, rows, columns, tile)

        BicubicUpscaler(torch.device("cpu")).upscale(alpha, Size(scale * width, scale * height), write_alpha)
    return Image(canvas, image.format, image.metadata, list(image.warnings)), report
