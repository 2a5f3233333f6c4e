"""Every engine reports an image's progress many times, within a single tile too, up to exactly 1."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

from flowsr_cli.engine.consistent import ConsistentUpscaler
from flowsr_cli.engine.pipeline import rgb_tensor
from flowsr_cli.engine.upscaler import ResampledUpscaler, Upscaler
from flowsr_cli.families.upscalers import UpscalerRequest, create_upscaler
from flowsr_cli.io.reading import read_image
from flowsr_cli.io.sizing import Size
from tests.conftest import SHARED

pytestmark = pytest.mark.usefixtures("one_thread")

WEIGHTS = Path(__file__).resolve().parents[2] / "flowsr_cli" / "weights"
MIN_STEPS = 8
"""More than a handful of distinct fractions per image."""


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    """Set5's butterfly as the engines receive it, (1, 3, 256, 256) in [0, 1]."""
    return rgb_tensor(read_image(SHARED / "data/eval/Set5/butterfly.png"))


def model(name: str, **request: str | int | float) -> Upscaler:
    """``bicubic``, or a bundled model file run by its family's engine, on the CPU."""
    path = name if name == "bicubic" else str(WEIGHTS / f"{name}.safetensors")
    return create_upscaler(UpscalerRequest(model=path, device="cpu", **request))  # type: ignore[arg-type]


def small_chunks(upscaler: Upscaler) -> Upscaler:
    """LINF's query chunk (a speed setting) made small, so that one tile renders in many bands (in the engine
    that the consistency projection wraps)."""
    engine = upscaler.inner if isinstance(upscaler, ConsistentUpscaler) else upscaler
    engine.chunk_queries = 256  # type: ignore[attr-defined]
    return upscaler


def progress_of(
    upscaler: Upscaler, lr: torch.Tensor, scale: int, seeds: Sequence[int] = (0,)
) -> tuple[list[float], int]:
    """The fractions ``upscaler`` reports while upscaling ``lr`` by ``scale``, and the tiles it used."""
    fractions: list[float] = []
    size = Size(scale * lr.shape[-1], scale * lr.shape[-2])
    report = upscaler.upscale(lr, size, lambda *tile: None, seeds, fractions.append)
    return fractions, report.tiles


CASES: dict[str, Callable[[torch.Tensor], tuple[list[float], int]]] = {
    "bicubic tiles": lambda photo: progress_of(model("bicubic", tile=32), photo, 2),
    "linf one tile": lambda photo: progress_of(small_chunks(model("linf")), photo[..., :96, :96], 2),
    "linf tiles, two seeds": lambda photo: progress_of(
        small_chunks(model("linf", tile=32, temperature=0.8)), photo[..., :64, :96], 2, seeds=(0, 1)
    ),
    "learned prior one tile": lambda photo: progress_of(small_chunks(model("linf-lp")), photo[..., :96, :96], 2),
    "learned prior tiles": lambda photo: progress_of(model("linf-lp", tile=48), photo[..., :96, :96], 2),
    "srflow one tile": lambda photo: progress_of(model("srflow", tile=0), photo[..., :24, :32], 4),
    "srflow tiles": lambda photo: progress_of(model("srflow", tile=8, tile_pad=4), photo[..., :24, :32], 4),
    "srflow resampled": lambda photo: progress_of(
        ResampledUpscaler(model("srflow", tile=8, tile_pad=4), 4), photo[..., :24, :32], 3
    ),
}
"""Each engine on a crop of the photo that needs several tiles, or one tile rendered in several bands."""


@pytest.mark.parametrize("case", list(CASES))
def test_every_engine_reports_progress_that_moves_up_to_one(photo: torch.Tensor, case: str) -> None:
    fractions, tiles = CASES[case](photo)
    assert (tiles == 1) == ("one tile" in case)
    assert len(fractions) >= MIN_STEPS, fractions
    assert all(earlier < later for earlier, later in zip(fractions, fractions[1:])), fractions
    assert 0 < fractions[0] and fractions[-1] == 1.0, fractions


def test_an_untiled_learned_prior_image_moves_in_its_first_half(photo: torch.Tensor) -> None:
    """The default model on an image it does in one tile: the bar must not wait for the render's bands."""
    fractions, _ = CASES["learned prior one tile"](photo)
    assert len([fraction for fraction in fractions if fraction < 0.5]) >= MIN_STEPS // 2, fractions


def test_an_untiled_learned_prior_image_moves_while_its_latents_are_predicted(photo: torch.Tensor) -> None:
    """Between the flow's conditioning and the render (TILE_PHASES), the initial prior reports its bands."""
    from flowsr_cli.families.linf.prior_engine import TILE_PHASES

    _, conditioned, predicted = TILE_PHASES
    fractions, _ = CASES["learned prior one tile"](photo)
    assert len([fraction for fraction in fractions if conditioned < fraction < predicted]) >= 2, fractions
