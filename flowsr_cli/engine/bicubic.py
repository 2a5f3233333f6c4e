"""The bicubic baseline as a tiled upscaler (MATLAB imresize semantics, exact across tiles)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from flowsr_cli.config import BICUBIC
from flowsr_cli.engine.memory import available_memory, choose_tile
from flowsr_cli.engine.resize import resize_window
from flowsr_cli.engine.tiling import patch_positions, plan_tiles
from flowsr_cli.engine.upscaler import ProgressCallback, TileSink, UpscaleReport
from flowsr_cli.io.sizing import Size

HALO = 3
"""Input pixels of context: the cubic kernel reaches two pixels past the nearest one."""


@dataclass
class BicubicUpscaler:
    """Bicubic interpolation, tile by tile; any number of channels."""

    device: torch.device
    tile: str | int = "auto"
    notes: list[str] = field(default_factory=list)
    name: str = BICUBIC

    @property
    def stochastic(self) -> bool:
        """Bicubic ignores seeds."""
        return False

    def _tile_size(self, lr: torch.Tensor, size: Size) -> int:
        if self.tile != "auto":
            return int(self.tile)
        scale = size.height / lr.shape[-2]
        bytes_per_pixel = lr.shape[1] * 4 * (2 + 3 * scale * scale)
        return choose_tile(available_memory(self.device), bytes_per_pixel, HALO)

    def upscale(
        self,
        lr: torch.Tensor,
        size: Size,
        sink: TileSink,
        seeds: Sequence[int] = (0,),
        progress: ProgressCallback | None = None,
    ) -> UpscaleReport:
        """Bicubic interpolation to ``size``; every seed gets the same image."""
        height, width = lr.shape[-2:]
        tile = self._tile_size(lr, size)
        tiles = plan_tiles(
            (height, width),
            patch_positions(height, size.height, 1),
            patch_positions(width, size.width, 1),
            tile,
            HALO,
        )
        with torch.inference_mode():
            for index, part in enumerate(tiles):
                crop = lr[
                    :, :, part.rows.crop.start : part.rows.crop.stop, part.columns.crop.start : part.columns.crop.stop
                ]
                output = resize_window(
                    crop.to(self.device),
                    (height, width),
                    (size.height, size.width),
                    part.rows.out,
                    part.columns.out,
                    (part.rows.crop.start, part.columns.crop.start),
                ).cpu()
                for sample in range(len(seeds)):
                    sink(sample, part.rows.out, part.columns.out, output)
                if progress is not None:
                    progress((index + 1) / len(tiles))
        return UpscaleReport(tiles=len(tiles), tile_size=tile if len(tiles) > 1 else 0)
