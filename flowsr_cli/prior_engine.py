"""LINF-LP as an upscaler: the latent module predicts z, the frozen flow inverts it (deterministic)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from flowsr_cli.engine import ProgressCallback, TileSink, UpscaleReport
from flowsr_cli.models.linf_lp import LINFLP
from flowsr_cli.sizing import Size


@dataclass
class LearnedPriorUpscaler:
    """The learned prior on the whole image at once (its latent module is not tiled yet)."""

    model: LINFLP
    device: torch.device
    name: str
    chunk_queries: int = 16384
    notes: list[str] = field(default_factory=list)

    @property
    def stochastic(self) -> bool:
        """The learned prior ignores seeds."""
        return False

    def upscale(
        self,
        lr: torch.Tensor,
        size: Size,
        sink: TileSink,
        seeds: Sequence[int] = (0,),
        progress: ProgressCallback | None = None,
    ) -> UpscaleReport:
        """One deterministic output, sent to the sink for every seed; non-finite pixels take the bilinear base."""
        report = UpscaleReport(tiles=1)
        with torch.inference_mode():
            features = self.model.encode(lr.to(self.device) * 2 - 1)
            output = self.model.render(features, (size.height, size.width), self.chunk_queries)
            if not bool(torch.isfinite(output).all()):
                report.guarded_tiles = 1
                rows, columns = range(size.height), range(size.width)
                base = self.model.flow.bilinear_base(features, (size.height, size.width), rows, columns)
                output = torch.where(torch.isfinite(output), output, base)
        result = ((output + 1) / 2).to("cpu", torch.float32)
        for sample in range(len(seeds)):
            sink(sample, range(size.height), range(size.width), result)
        if progress is not None:
            progress(1.0)
        return report
