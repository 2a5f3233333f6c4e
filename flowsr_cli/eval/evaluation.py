"""`flowsr eval`: models x settings x datasets x scales through the upscale engine, scored by the
literature's protocol (DESIGN §7)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from flowsr_cli.console import printable
from flowsr_cli.engine.consistent import ConsistentUpscaler, patch_period
from flowsr_cli.engine.pipeline import rgb_tensor, tensor_to_pixels
from flowsr_cli.engine.upscaler import Upscaler, fixed_scale
from flowsr_cli.errors import FlowsrError, ImageError, UsageError
from flowsr_cli.eval import metrics
from flowsr_cli.io.image import Image
from flowsr_cli.io.inputs import walk_images
from flowsr_cli.io.reading import read_image
from flowsr_cli.io.sizing import Size, format_scale, round_half_up
from flowsr_cli.io.writing import write_image

PROTOCOL = {
    "lr": "HR cropped to round(floor(h/s)*s); MATLAB imresize bicubic (antialiased, kernel scale 1/s); 8-bit",
    "psnr_y": "BT.601 Y, ceil(scale) pixels shaved, SR clamped to [0, 1]",
    "psnr_rgb": "RGB, same shave",
    "ssim": "Y, Gaussian window 11, sigma 1.5, valid filtering (MATLAB ssim_index), same shave",
    "lpips": "lpips package, alex, v0.1, whole image",
    "lr_psnr": "SR downscaled with the same bicubic, PSNR against the LR input (RGB)",
    "consistency": (
        "true where the output was made consistent with its input (--consistency): clamped to [0, 1]; for patch"
        " models (LINF) its local pattern of the patch period removed (each of the p x p phases averaged over"
        " 9 x 9 patches, less the mean over phases); then x <- x + up(lr - down(x)), repeated (models:"
        " projection_iterations), clamped; down: the LR's MATLAB bicubic (antialiased, kernel scale = LR size /"
        " SR size per axis, as lr_psnr); up: the MATLAB bicubic enlargement to the SR size"
    ),
    "grid": (
        "patch-grid measure, share(SR) / share(HR), mean over images x runs; 1.0: as much as the photo."
        " detail = Y(image) - Y(clamped bicubic enlargement of the LR), same shave, cropped (bottom, right) to"
        " multiples of the period p (models: grid_period), mean removed, periodic 2-D Hann window;"
        " share = power of its 2-D FFT on the columns k*W/p + d and rows k*H/p + d with |d| <= 1 / the same"
        " with |d| <= 6 (k = 1..p-1, each bin once): about 3/13 for a spectrum smooth around the grid"
        " frequencies, towards 1 for a p-periodic pattern; 0 for an output without detail (RMS < 1e-4)"
    ),
    "colour_shift": (
        "levels of 255: per image, the largest over R, G, B of |mean(SR - HR)| (clamped SR, same shave);"
        " mean over images x runs"
    ),
    "inf_rate": (
        "share of outputs (images x runs) with any non-finite value before clamping (after the projection"
        " where consistency is on: a non-finite model output stays non-finite through it)"
    ),
    "diversity": "mean per-pixel standard deviation across runs (stochastic settings, runs >= 2)",
    "skipped": "unreadable images, and at each scale the images whose crop is too small to score",
}


@dataclass(frozen=True)
class Setting:
    """One column group of the comparison: a model and how its latent is chosen."""

    model: str
    prior: str
    temperature: float | None = None
    consistency: bool = False
    """The output is back-projected onto the input (set by :class:`Evaluation` from the upscaler)."""

    @property
    def stochastic(self) -> bool:
        """Seeds matter (Gaussian prior at a positive temperature)."""
        return self.prior == "gaussian" and bool(self.temperature)

    @property
    def label(self) -> str:
        """How the setting is named in tables; ``projected`` marks consistency on."""
        if self.prior == "bicubic":
            return "bicubic (projected)" if self.consistency else "bicubic"
        name = self.model
        if name.endswith(".safetensors"):
            path = Path(name)
            name = path.parent.name if path.stem == "model" and path.parent.name else path.stem
        if self.prior == "gaussian":
            label = f"{name} τ={format_scale(self.temperature or 0.0)}"
            return f"{label} (projected)" if self.consistency else label
        return f"{name} ({self.prior}, projected)" if self.consistency else f"{name} ({self.prior})"


@dataclass
class Result:
    """The mean scores of one setting on one dataset at one scale (the JSON/CSV/Markdown row)."""

    dataset: str
    scale: float
    model: str
    prior: str
    temperature: float | None
    consistency: bool
    """The outputs were back-projected onto the input."""
    runs: int
    images: int
    """Images scored."""
    skipped: int
    """Files of the dataset not scored at this scale (unreadable or too small)."""
    psnr_y: float
    psnr_rgb: float
    ssim: float
    lpips: float | None
    lr_psnr: float
    grid: float | None
    """Patch-grid measure (:func:`metrics.grid_ratio`) at the model's :func:`grid_period`; None if no image
    is large enough for it."""
    colour_shift: float
    inf_rate: float
    diversity: float | None
    seconds: float

    def as_dict(self) -> dict[str, object]:
        """The row as plain values."""
        return asdict(self)


class HRImage(NamedTuple):
    """One readable file of a dataset: its name (stem), its pixels as float RGB ``(1, 3, H, W)`` in [0, 1]
    and its path."""

    name: str
    pixels: torch.Tensor
    path: Path

    @property
    def smaller_side(self) -> int:
        """The height or the width, whichever is smaller."""
        return min(self.pixels.shape[-2:])


@dataclass(frozen=True)
class Skip:
    """A file of a dataset left out: unreadable (at every scale) or too small (at ``scales``)."""

    dataset: str
    path: Path
    reason: str
    scales: tuple[float, ...] = ()
    """The scales it is left out at; empty for all of them."""

    def as_dict(self) -> dict[str, object]:
        """The skip as plain values (``scales`` None: every scale)."""
        scales = list(self.scales) or None
        return {"dataset": self.dataset, "file": printable(self.path), "reason": self.reason, "scales": scales}


@dataclass(frozen=True)
class Dataset:
    """A folder of HR images: the readable ones, and the unreadable ones with their reasons."""

    folder: Path
    images: list[HRImage]
    unreadable: list[Skip]

    @property
    def name(self) -> str:
        """How the dataset is named in tables (the folder's name)."""
        return self.folder.name

    @property
    def files(self) -> int:
        """Image files taken from the folder, readable or not."""
        return len(self.images) + len(self.unreadable)


def load_dataset(folder: Path, max_images: int | None, max_pixels: int) -> Dataset:
    """Every image file of ``folder`` (sorted by name, at most ``max_images``); unreadable ones are kept as skips."""
    paths = sorted(walk_images(folder, recursive=False))[:max_images]
    if not paths:
        raise UsageError(f"{folder}: no images to evaluate on")
    images, unreadable = [], []
    for path in paths:
        try:
            images.append(HRImage(path.stem, rgb_tensor(read_image(path, max_pixels=max_pixels)), path))
        except ImageError as exc:
            unreadable.append(Skip(folder.name, path, str(exc)))
    return Dataset(folder, images, unreadable)


def smallest_side(scale: float, lpips: bool) -> int:
    """The smallest HR side the protocol scores at ``scale``: after the crop to a multiple of ``scale``
    (``metrics.crop_to_scale``) it must keep the shaved border on both sides, the SSIM window and, with
    ``lpips``, what LPIPS needs."""
    needed = 2 * math.ceil(scale) + metrics.SSIM_WINDOW
    if lpips:
        needed = max(needed, metrics.LPIPS_MIN_SIDE)
    side = needed
    while round_half_up(math.floor(side / scale) * scale) < needed:
        side += 1
    return side


def supports(upscaler: Upscaler, scale: float) -> bool:
    """Whether ``upscaler`` can produce ``scale`` (a fixed-scale model only its own)."""
    native = fixed_scale(upscaler)
    return native is None or scale == native


DEFAULT_GRID_PERIOD = 3
"""The period the grid measure uses for upscalers without a patch grid of their own (bicubic): the bundled
LINF models' patch size, so their rows compare."""


def grid_period(upscaler: Upscaler) -> int:
    """The period of ``upscaler``'s latent grid in output pixels (:func:`patch_period`: SRFlow 2, LINF its patch
    size), else :data:`DEFAULT_GRID_PERIOD`."""
    return patch_period(upscaler) or DEFAULT_GRID_PERIOD


def projected(upscaler: Upscaler) -> bool:
    """Whether ``upscaler`` back-projects its outputs onto the input (``--consistency on``)."""
    return isinstance(upscaler, ConsistentUpscaler)


def super_resolve(upscaler: Upscaler, lr: torch.Tensor, size: Size, seed: int) -> torch.Tensor:
    """The raw float output of the engine (not clamped, non-finite values kept)."""
    output = torch.empty(1, 3, size.height, size.width)

    def sink(sample: int, rows: range, columns: range, tile: torch.Tensor) -> None:
        output[..., rows.start : rows.stop, columns.start : columns.stop] = tile

    upscaler.upscale(lr, size, sink, [seed])
    return output


@dataclass
class Evaluation:
    """What to run: settings (each with its upscaler), scales, runs, seed, and where to save images.

    Each setting's ``consistency`` is set from its upscaler (:func:`projected`), so rows say what ran."""

    settings: list[tuple[Setting, Upscaler]]
    scales: list[float]
    runs: int
    seed: int
    lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    """None leaves LPIPS out (e.g. validation during training without the AlexNet backbone)."""
    save_images: Path | None = None

    def __post_init__(self) -> None:
        self.settings = [
            (replace(setting, consistency=projected(upscaler)), upscaler) for setting, upscaler in self.settings
        ]

    def models(self) -> dict[str, dict[str, object]]:
        """Per model (as named in the rows): whether its outputs are projected, with how many iterations, and
        the period its grid measure uses (for the report's protocol)."""
        return {
            setting.model: {
                "consistency": setting.consistency,
                "projection_iterations": getattr(upscaler, "iterations", None) if setting.consistency else None,
                "grid_period": grid_period(upscaler),
            }
            for setting, upscaler in self.settings
        }

    def steps(self, datasets: Sequence[Dataset]) -> int:
        """Upscales the whole evaluation performs (for a progress bar)."""
        return sum(
            self._runs(setting) * len(self._scorable(dataset, scale))
            for dataset in datasets
            for scale in self.scales
            for setting, upscaler in self.settings
            if supports(upscaler, scale)
        )

    def _runs(self, setting: Setting) -> int:
        return self.runs if setting.stochastic else 1

    def _scales(self) -> list[float]:
        """The scales some setting is scored at."""
        return [scale for scale in self.scales if any(supports(upscaler, scale) for _, upscaler in self.settings)]

    def _scorable(self, dataset: Dataset, scale: float) -> list[HRImage]:
        """The readable images of ``dataset`` large enough to score at ``scale``."""
        side = smallest_side(scale, self.lpips is not None)
        return [image for image in dataset.images if image.smaller_side >= side]

    def too_small(self, dataset: Dataset) -> list[Skip]:
        """The readable images of ``dataset`` too small to score at some scales: one skip each, naming them."""
        sides = {scale: smallest_side(scale, self.lpips is not None) for scale in self._scales()}
        needs = "the border shave, SSIM and LPIPS" if self.lpips is not None else "the border shave and SSIM"
        skips = []
        for image in dataset.images:
            small = {scale: side for scale, side in sides.items() if image.smaller_side < side}
            if small:
                height, width = image.pixels.shape[-2:]
                at = " and ".join(
                    f"×{format_scale(scale)} (needs {side}×{side} or more)" for scale, side in small.items()
                )
                reason = f"{width}×{height} is too small for {needs}: skipped at {at}"
                skips.append(Skip(dataset.name, image.path, reason, tuple(small)))
        return skips

    def check(self, datasets: Sequence[Dataset]) -> None:
        """FlowsrError naming the first dataset that has no image to score at some scale."""
        for dataset in datasets:
            empty = [f"×{format_scale(scale)}" for scale in self._scales() if not self._scorable(dataset, scale)]
            if empty:
                unreadable, readable = len(dataset.unreadable), len(dataset.images)
                raise FlowsrError(
                    f"{dataset.folder}: no image can be scored at {', '.join(empty)} "
                    f"({unreadable} unreadable, {readable} too small)"
                )

    def run(self, datasets: Sequence[Dataset], advance: Callable[[], None]) -> list[tuple[Setting, Result]]:
        """Score every setting on every dataset and scale it supports; ``advance`` is called once per upscale.

        Images too small for a scale are left out there; a dataset with nothing to score at a scale is a
        FlowsrError before any work."""
        self.check(datasets)
        results = []
        for dataset in datasets:
            for scale in self._scales():
                pairs = [
                    (image.name, *metrics.make_lr(image.pixels, scale)) for image in self._scorable(dataset, scale)
                ]
                for setting, upscaler in self.settings:
                    if supports(upscaler, scale):
                        results.append((setting, self._score(dataset, scale, pairs, setting, upscaler, advance)))
        return results

    def _score(
        self,
        dataset: Dataset,
        scale: float,
        pairs: list[tuple[str, torch.Tensor, torch.Tensor]],
        setting: Setting,
        upscaler: Upscaler,
        advance: Callable[[], None],
    ) -> Result:
        started = time.perf_counter()
        runs = self._runs(setting)
        period = grid_period(upscaler)
        keys = ("psnr_y", "psnr_rgb", "ssim", "lpips", "lr_psnr", "grid", "colour_shift")
        scores: dict[str, list[float]] = {key: [] for key in keys}
        finite: list[bool] = []
        diversities: list[float] = []
        for name, hr, lr in pairs:
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
                grid = metrics.grid_ratio(sr, hr, lr, scale, period).item()
                if not math.isnan(grid):
                    scores["grid"].append(grid)
                scores["colour_shift"].append(metrics.colour_shift(sr, hr, scale).item())
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
            consistency=setting.consistency,
            runs=runs,
            images=len(pairs),
            skipped=dataset.files - len(pairs),
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
