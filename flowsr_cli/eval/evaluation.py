"""`flowsr eval`: models x settings x datasets x scales through the upscale engine, scored by the
literature's protocol (DESIGN §7)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from flowsr_cli.engine.pipeline import rgb_tensor, tensor_to_pixels
from flowsr_cli.engine.upscaler import Upscaler, fixed_scale
from flowsr_cli.errors import UsageError
from flowsr_cli.eval import metrics
from flowsr_cli.io.image import Image
from flowsr_cli.io.inputs import walk_images
from flowsr_cli.io.reading import read_image
from flowsr_cli.io.sizing import Size, format_scale
from flowsr_cli.io.writing import write_image

PROTOCOL = {
    "lr": "HR cropped to round(floor(h/s)*s); MATLAB imresize bicubic (antialiased, kernel scale 1/s); 8-bit",
    "psnr_y": "BT.601 Y, ceil(scale) pixels shaved, SR clamped to [0, 1]",
    "psnr_rgb": "RGB, same shave",
    "ssim": "Y, Gaussian window 11, sigma 1.5, valid filtering (MATLAB ssim_index), same shave",
    "lpips": "lpips package, alex, v0.1, whole image",
    "lr_psnr": "SR downscaled with the same bicubic, PSNR against the LR input (RGB)",
    "inf_rate": "share of outputs (images x runs) with any non-finite value before clamping",
    "diversity": "mean per-pixel standard deviation across runs (stochastic settings, runs >= 2)",
}


@dataclass(frozen=True)
class Setting:
    """One column group of the comparison: a model and how its latent is chosen."""

    model: str
    prior: str
    temperature: float | None = None

    @property
    def stochastic(self) -> bool:
        """Seeds matter (Gaussian prior at a positive temperature)."""
        return self.prior == "gaussian" and bool(self.temperature)

    @property
    def label(self) -> str:
        """How the setting is named in tables."""
        if self.prior == "bicubic":
            return "bicubic"
        name = self.model
        if name.endswith(".safetensors"):
            path = Path(name)
            name = path.parent.name if path.stem == "model" and path.parent.name else path.stem
        if self.prior == "gaussian":
            return f"{name} τ={format_scale(self.temperature or 0.0)}"
        return f"{name} ({self.prior})"


@dataclass
class Result:
    """The mean scores of one setting on one dataset at one scale (the JSON/CSV/Markdown row)."""

    dataset: str
    scale: float
    model: str
    prior: str
    temperature: float | None
    runs: int
    images: int
    psnr_y: float
    psnr_rgb: float
    ssim: float
    lpips: float | None
    lr_psnr: float
    inf_rate: float
    diversity: float | None
    seconds: float

    def as_dict(self) -> dict[str, object]:
        """The row as plain values."""
        return asdict(self)


@dataclass(frozen=True)
class Dataset:
    """A named folder of HR images, loaded as (name, float RGB tensor) pairs."""

    name: str
    images: list[tuple[str, torch.Tensor]]


def load_dataset(folder: Path, max_images: int | None, max_pixels: int) -> Dataset:
    """Every image of ``folder`` (sorted by name, at most ``max_images``), as RGB in [0, 1]."""
    paths = sorted(walk_images(folder, recursive=False))[:max_images]
    if not paths:
        raise UsageError(f"{folder}: no images to evaluate on")
    images = []
    for path in paths:
        image = read_image(path, max_pixels=max_pixels)
        images.append((path.stem, rgb_tensor(image)))
    return Dataset(folder.name, images)


def supports(upscaler: Upscaler, scale: float) -> bool:
    """Whether ``upscaler`` can produce ``scale`` (a fixed-scale model only its own)."""
    native = fixed_scale(upscaler)
    return native is None or scale == native


def super_resolve(upscaler: Upscaler, lr: torch.Tensor, size: Size, seed: int) -> torch.Tensor:
    """The raw float output of the engine (not clamped, non-finite values kept)."""
    output = torch.empty(1, 3, size.height, size.width)

    def sink(sample: int, rows: range, columns: range, tile: torch.Tensor) -> None:
        output[..., rows.start : rows.stop, columns.start : columns.stop] = tile

    upscaler.upscale(lr, size, sink, [seed])
    return output


@dataclass
class Evaluation:
    """What to run: settings (each with its upscaler), scales, runs, seed, and where to save images."""

    settings: list[tuple[Setting, Upscaler]]
    scales: list[float]
    runs: int
    seed: int
    lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    """None leaves LPIPS out (e.g. validation during training without the AlexNet backbone)."""
    save_images: Path | None = None

    def steps(self, datasets: Sequence[Dataset]) -> int:
        """Upscales the whole evaluation performs (for a progress bar)."""
        per_dataset = sum(
            self._runs(setting)
            for setting, upscaler in self.settings
            for scale in self.scales
            if supports(upscaler, scale)
        )
        return per_dataset * sum(len(dataset.images) for dataset in datasets)

    def _runs(self, setting: Setting) -> int:
        return self.runs if setting.stochastic else 1

    def run(self, datasets: Sequence[Dataset], advance: Callable[[], None]) -> list[tuple[Setting, Result]]:
        """Score every setting on every dataset and scale it supports; ``advance`` is called once per upscale."""
        results = []
        for dataset in datasets:
            for scale in self.scales:
                pairs = [metrics.make_lr(hr, scale) for _, hr in dataset.images]
                for setting, upscaler in self.settings:
                    if supports(upscaler, scale):
                        results.append((setting, self._score(dataset, scale, pairs, setting, upscaler, advance)))
        return results

    def _score(
        self,
        dataset: Dataset,
        scale: float,
        pairs: list[tuple[torch.Tensor, torch.Tensor]],
        setting: Setting,
        upscaler: Upscaler,
        advance: Callable[[], None],
    ) -> Result:
        started = time.perf_counter()
        runs = self._runs(setting)
        scores: dict[str, list[float]] = {key: [] for key in ("psnr_y", "psnr_rgb", "ssim", "lpips", "lr_psnr")}
        finite: list[bool] = []
        diversities: list[float] = []
        for (name, _), (hr, lr) in zip(dataset.images, pairs):
            size = Size(hr.shape[-1], hr.shape[-2])
            outputs = []
            for run in range(runs):
                sr = super_resolve(upscaler, lr, size, self.seed + run)
                finite.append(bool(metrics.is_finite(sr).all()))
                scores["psnr_y"].append(metrics.psnr_y(sr, hr, scale).item())
                scores["psnr_rgb"].append(metrics.psnr_rgb(sr, hr, scale).item())
                scores["ssim"].append(metrics.ssim_y(sr, hr, scale).item())
                if self.lpips is not None:
                    scores["lpips"].append(self.lpips(sr, hr).item())
                scores["lr_psnr"].append(metrics.lr_psnr(sr, lr, scale).item())
                outputs.append(sr)
                if self.save_images is not None:
                    self._save(self.save_images, sr, dataset.name, setting, scale, name, run if runs > 1 else None)
                advance()
            if runs > 1:
                diversities.append(metrics.sample_diversity(outputs))
        return Result(
            dataset=dataset.name,
            scale=float(scale),
            model=setting.model,
            prior=setting.prior,
            temperature=setting.temperature,
            runs=runs,
            images=len(pairs),
            **{key: float(np.mean(values)) if values else None for key, values in scores.items()},
            inf_rate=1.0 - float(np.mean(finite)),
            diversity=float(np.mean(diversities)) if diversities else None,
            seconds=round(time.perf_counter() - started, 3),
        )

    @staticmethod
    def _save(
        root: Path, sr: torch.Tensor, dataset: str, setting: Setting, scale: float, name: str, run: int | None
    ) -> None:
        folder = root / dataset / setting.label.replace(" ", "_") / f"x{format_scale(scale)}"
        folder.mkdir(parents=True, exist_ok=True)
        suffix = "" if run is None else f"_run{run}"
        write_image(Image(tensor_to_pixels(sr, np.dtype(np.uint8)), "png"), folder / f"{name}{suffix}.png", "png")
