"""`flowsr rescale eval`: image rescaling (a model makes the LR from the HR, then restores the HR from that exact
LR) and the bicubic-down baselines, per dataset and scale, scored by the protocol below (DESIGN §10)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from flowsr_cli.config import BICUBIC
from flowsr_cli.engine.pipeline import pixels_to_tensor, tensor_to_pixels
from flowsr_cli.engine.rescale import Rescaler
from flowsr_cli.engine.upscaler import Upscaler, fixed_scale
from flowsr_cli.errors import FlowsrError
from flowsr_cli.eval import metrics
from flowsr_cli.eval.evaluation import Dataset, HRImage, Skip, smallest_side, super_resolve
from flowsr_cli.io.sizing import Size

PROTOCOL = {
    "task": "image rescaling: each method makes an LR from the HR (down), then restores the HR from that LR (up)",
    "hr": "HR cropped (top-left) to multiples of the scale s",
    "rescaling": (
        "down: the model's forward (the `rescale down` engine), clamped and rounded to 8 bits as its PNG; up: the"
        " model's inverse of that LR (the `rescale up` engine) at its default heat, latents drawn from the seed"
    ),
    "bicubic": "down: MATLAB imresize bicubic (antialiased, kernel scale 1/s), 8-bit; up: the MATLAB bicubic",
    "sr": "down: the same bicubic LR; up: the SR model as `flowsr upscale` runs it (sr_model)",
    "restored": "clamped to [0, 1] and rounded to 8 bits, as the written PNG",
    "psnr_y": "BT.601 Y, s pixels shaved",
    "ssim": "Y, Gaussian window 11, sigma 1.5, valid filtering (MATLAB ssim_index), s pixels shaved",
    "lpips": "lpips package, alex, v0.1, whole image",
    "lr_vs_bicubic_psnr": (
        "PSNR (RGB, whole image) of the method's 8-bit LR against the bicubic LR of the same HR;"
        " null for the bicubic-down baselines (their LR is that one)"
    ),
    "skipped": "unreadable images, and at each scale the images whose crop is too small to score",
}


def short_name(model: str) -> str:
    """How a model is named in tables: a file by its stem (``model.safetensors`` by its folder), a name as is."""
    if not model.endswith(".safetensors"):
        return model
    path = Path(model)
    return path.parent.name if path.stem == "model" and path.parent.name else path.stem


@dataclass
class RescaleResult:
    """The mean scores of one method on one dataset at one scale (the JSON/CSV/Markdown row)."""

    dataset: str
    scale: int
    down: str
    """What made the LR: the rescaling model, or bicubic."""
    up: str
    """What restored the HR: the rescaling model, bicubic, or the SR model."""
    images: int
    skipped: int
    """Files of the dataset not scored at this scale (unreadable or too small)."""
    psnr_y: float
    ssim: float
    lpips: float | None
    lr_vs_bicubic_psnr: float | None
    """None for the bicubic-down baselines."""
    seconds: float

    @property
    def label(self) -> str:
        """The method as tables name it: the model for rescaling, ``bicubic & UP`` for the baselines."""
        return f"{BICUBIC} & {short_name(self.up)}" if self.down == BICUBIC else short_name(self.down)

    def as_dict(self) -> dict[str, object]:
        """The row as plain values."""
        return asdict(self)


COLUMNS = tuple(field.name for field in fields(RescaleResult))
"""The CSV columns: the result's fields."""


class Method(Protocol):
    """A way down and back up: what makes the LR, what restores the HR, and at which scale."""

    @property
    def down(self) -> str:
        """What makes the LR."""
        ...

    @property
    def up(self) -> str:
        """What restores the HR."""
        ...

    @property
    def scale(self) -> int | None:
        """The one scale it works at, or None."""
        ...

    def restore(self, hr: torch.Tensor, bicubic_lr: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(its own LR, None where it is ``bicubic_lr``; the HR restored from it, raw)."""
        ...


def as_8_bits(image: torch.Tensor) -> torch.Tensor:
    """``image`` clamped and rounded to 8 bits, as an 8-bit file of it would read back."""
    return pixels_to_tensor(tensor_to_pixels(image, np.dtype(np.uint8)))


@dataclass
class ModelRescaling:
    """A rescaling model: its own 8-bit LR (as `rescale down` writes it), restored by its inverse (as `rescale up`
    does) at its default heat from ``seed``."""

    rescaler: Rescaler
    down: str
    seed: int

    @property
    def up(self) -> str:
        """The same model."""
        return self.down

    @property
    def scale(self) -> int:
        """The model's scale."""
        return self.rescaler.scale

    def restore(self, hr: torch.Tensor, bicubic_lr: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(the model's 8-bit LR of ``hr``; its inverse of that LR)."""
        lr = as_8_bits(self.rescaler.downscale(hr))
        restored = torch.empty_like(hr)

        def sink(sample: int, rows: range, columns: range, tile: torch.Tensor) -> None:
            restored[..., rows.start : rows.stop, columns.start : columns.stop] = tile

        self.rescaler.upscale(lr, sink, self.seed, self.rescaler.default_temperature)
        return lr, restored


@dataclass
class BicubicDown:
    """A baseline: the bicubic LR, enlarged by ``upscaler`` (bicubic, or an SR model) from ``seed``."""

    upscaler: Upscaler
    up: str
    seed: int
    down: str = BICUBIC

    @property
    def scale(self) -> int | None:
        """The upscaler's fixed scale, if it has one."""
        native = fixed_scale(self.upscaler)
        return None if native is None else int(native)

    def restore(self, hr: torch.Tensor, bicubic_lr: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(None: the LR is the bicubic one; the upscaler's enlargement of it)."""
        return None, super_resolve(self.upscaler, bicubic_lr, Size(hr.shape[-1], hr.shape[-2]), self.seed)


@dataclass
class RescaleEvaluation:
    """The methods to score at each scale they work at, and LPIPS (None leaves it out)."""

    methods: list[Method]
    scales: list[int]
    lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None

    def _at(self, scale: int) -> list[Method]:
        return [method for method in self.methods if method.scale in (None, scale)]

    def _scales(self) -> list[int]:
        """The scales some method is scored at."""
        return [scale for scale in self.scales if self._at(scale)]

    def _scorable(self, dataset: Dataset, scale: int) -> list[HRImage]:
        side = smallest_side(scale, self.lpips is not None)
        return [image for image in dataset.images if image.smaller_side >= side]

    def steps(self, datasets: Sequence[Dataset]) -> int:
        """Images restored in the whole evaluation (for a progress bar)."""
        return sum(
            len(self._at(scale)) * len(self._scorable(dataset, scale))
            for dataset in datasets
            for scale in self._scales()
        )

    def too_small(self, dataset: Dataset) -> list[Skip]:
        """The readable images of ``dataset`` too small to score at some scales: one skip each, naming them."""
        sides = {scale: smallest_side(scale, self.lpips is not None) for scale in self._scales()}
        needs = "the border shave, SSIM and LPIPS" if self.lpips is not None else "the border shave and SSIM"
        skips = []
        for image in dataset.images:
            small = {scale: side for scale, side in sides.items() if image.smaller_side < side}
            if small:
                height, width = image.pixels.shape[-2:]
                at = " and ".join(f"×{scale} (needs {side}×{side} or more)" for scale, side in small.items())
                reason = f"{width}×{height} is too small for {needs}: skipped at {at}"
                skips.append(Skip(dataset.name, image.path, reason, tuple(float(scale) for scale in small)))
        return skips

    def run(self, datasets: Sequence[Dataset], advance: Callable[[], None]) -> list[RescaleResult]:
        """Score every method on every dataset at each scale it works at; ``advance`` is called per image
        restored. A dataset with nothing to score at a scale is a FlowsrError before any work."""
        for dataset in datasets:
            empty = [f"×{scale}" for scale in self._scales() if not self._scorable(dataset, scale)]
            if empty:
                raise FlowsrError(
                    f"{dataset.folder}: no image can be scored at {', '.join(empty)} "
                    f"({len(dataset.unreadable)} unreadable, {len(dataset.images)} too small)"
                )
        results = []
        for dataset in datasets:
            for scale in self._scales():
                pairs = [metrics.make_lr(image.pixels, scale) for image in self._scorable(dataset, scale)]
                for method in self._at(scale):
                    results.append(self._score(dataset, scale, pairs, method, advance))
        return results

    def _score(
        self,
        dataset: Dataset,
        scale: int,
        pairs: list[tuple[torch.Tensor, torch.Tensor]],
        method: Method,
        advance: Callable[[], None],
    ) -> RescaleResult:
        started = time.perf_counter()
        scores: dict[str, list[float]] = {key: [] for key in ("psnr_y", "ssim", "lpips", "lr_vs_bicubic_psnr")}
        for hr, bicubic_lr in pairs:
            lr, restored = method.restore(hr, bicubic_lr)
            restored = as_8_bits(restored)
            scores["psnr_y"].append(metrics.psnr_y(restored, hr, scale).item())
            scores["ssim"].append(metrics.ssim_y(restored, hr, scale).item())
            if self.lpips is not None:
                scores["lpips"].append(self.lpips(restored, hr).item())
            if lr is not None:
                scores["lr_vs_bicubic_psnr"].append(metrics.psnr(lr, bicubic_lr).item())
            advance()
        return RescaleResult(
            dataset=dataset.name,
            scale=scale,
            down=method.down,
            up=method.up,
            images=len(pairs),
            skipped=dataset.files - len(pairs),
            psnr_y=float(np.mean(scores["psnr_y"])),
            ssim=float(np.mean(scores["ssim"])),
            lpips=_mean(scores["lpips"]),
            lr_vs_bicubic_psnr=_mean(scores["lr_vs_bicubic_psnr"]),
            seconds=round(time.perf_counter() - started, 3),
        )


def _mean(values: list[float]) -> float | None:
    """The mean of ``values``; None for none (a score not computed)."""
    return float(np.mean(values)) if values else None
