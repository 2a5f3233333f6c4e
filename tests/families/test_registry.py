"""The family registry: a family added from outside (a network, its engine and its importer in one
registration) runs through the real CLI without any existing engine module knowing it."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from flowsr_cli.engine.projection import project
from flowsr_cli.engine.upscaler import ProgressCallback, TileSink, UpscaleReport
from flowsr_cli.families.model_file import load_model, save_model
from flowsr_cli.families.registry import (
    MAX_INTEGER,
    Bound,
    EngineOptions,
    Family,
    Importer,
    ModelSpecError,
    Network,
    make,
    register_family,
    registered_names,
    unregister_family,
)
from flowsr_cli.io.sizing import Size
from tests.conftest import CliInvoker
from tests.image_factory import marker_image


class ToyNetwork(nn.Module):
    """Multiplies colours by a learned gain."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(gain))


@dataclass
class ToyUpscaler:
    """Nearest-neighbour enlargement times the network's gain, in one tile."""

    model: ToyNetwork
    name: str
    notes: list[str] = field(default_factory=list)
    stochastic: bool = False

    def upscale(
        self,
        lr: torch.Tensor,
        size: Size,
        sink: TileSink,
        seeds: Sequence[int] = (0,),
        progress: ProgressCallback | None = None,
    ) -> UpscaleReport:
        with torch.inference_mode():
            output = F.interpolate(lr, size=(size.height, size.width), mode="nearest") * self.model.gain
        for sample in range(len(seeds)):
            sink(sample, range(size.height), range(size.width), output)
        return UpscaleReport(tiles=1)


def run_toy(model: nn.Module, options: EngineOptions) -> ToyUpscaler:
    assert isinstance(model, ToyNetwork)
    return ToyUpscaler(model, options.name, options.notes)


def import_toy(checkpoint: object, location: Path) -> nn.Module | None:
    if not isinstance(checkpoint, dict) or "toy_gain" not in checkpoint:
        return None
    return make({"name": "toy", "args": {"gain": float(checkpoint["toy_gain"])}})


TOY = Family("toy", {"toy": Network(ToyNetwork, engine=run_toy)}, Importer("a toy checkpoint (toy_gain)", import_toy))


@pytest.fixture
def toy_family() -> Iterator[Family]:
    register_family(TOY)
    yield TOY
    unregister_family(TOY.name)


def expected_output(pixels: np.ndarray, scale: int, gain: float) -> np.ndarray:
    enlarged = pixels.repeat(scale, axis=0).repeat(scale, axis=1).astype(np.float64)
    return np.clip(np.round(enlarged / 255 * np.float32(gain) * 255), 0, 255).astype(np.uint8)


def test_a_registered_family_runs_through_upscale(toy_family: Family, tmp_path: Path, run_cli: CliInvoker) -> None:
    """Its engine's own output with ``--consistency off``; by default (a model flowsr made) that output
    back-projected onto the input, as for every family."""
    pixels = marker_image(12, 16)
    Image.fromarray(pixels).save(tmp_path / "in.png")
    save_model(make({"name": "toy", "args": {"gain": 0.5}}), tmp_path / "toy.safetensors")
    model = ("--model", str(tmp_path / "toy.safetensors"), "-s", "2")
    result = run_cli("upscale", str(tmp_path / "in.png"), *model, "--consistency", "off")
    assert result.exit_code == 0, result.output
    written = np.asarray(Image.open(tmp_path / "in_x2_toy_consistency-off.png"))
    assert np.abs(written.astype(int) - expected_output(pixels, 2, 0.5)).max() <= 1
    assert run_cli("upscale", str(tmp_path / "in.png"), *model).exit_code == 0
    projected = project(to_tensor(expected_output(pixels, 2, 0.5)), to_tensor(pixels))
    written = np.asarray(Image.open(tmp_path / "in_x2_toy.png"))
    assert np.abs(written.astype(int) - np.round(projected[0].permute(1, 2, 0).numpy() * 255)).max() <= 1


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """8-bit RGB pixels as a (1, 3, H, W) tensor in [0, 1]."""
    return torch.from_numpy(pixels.astype(np.float32) / 255).permute(2, 0, 1).unsqueeze(0)


def test_a_registered_importer_converts_its_checkpoints(
    toy_family: Family, tmp_path: Path, run_cli: CliInvoker
) -> None:
    torch.save({"toy_gain": torch.tensor(0.25)}, tmp_path / "original.pth")
    result = run_cli("models", "import", str(tmp_path / "original.pth"), "--name", "mine")
    assert result.exit_code == 0, result.output
    Image.fromarray(marker_image(8, 8)).save(tmp_path / "in.png")
    upscaled = run_cli("upscale", str(tmp_path / "in.png"), "--model", "mine", "-s", "3")
    assert upscaled.exit_code == 0, upscaled.output
    written = np.asarray(Image.open(tmp_path / "in_x3_mine.png"))
    assert np.abs(written.astype(int) - expected_output(marker_image(8, 8), 3, 0.25)).max() <= 1


def test_a_family_without_a_learned_prior_refuses_one(toy_family: Family, tmp_path: Path, run_cli: CliInvoker) -> None:
    Image.fromarray(marker_image(8, 8)).save(tmp_path / "in.png")
    save_model(make({"name": "toy", "args": {"gain": 1.0}}), tmp_path / "toy.safetensors")
    result = run_cli(
        "upscale",
        str(tmp_path / "in.png"),
        "--model",
        str(tmp_path / "toy.safetensors"),
        "-s",
        "2",
        "--prior",
        "learned",
    )
    assert result.exit_code == 2
    assert "has no learned prior; use --prior gaussian" in result.output


def test_unregistered_families_are_gone(tmp_path: Path) -> None:
    register_family(TOY)
    save_model(make({"name": "toy", "args": {"gain": 1.0}}), tmp_path / "toy.safetensors")
    unregister_family(TOY.name)
    assert "toy" not in registered_names()
    with pytest.raises(ModelSpecError, match="unknown model architecture 'toy'"):
        load_model(tmp_path / "toy.safetensors")


def test_names_cannot_be_registered_twice(toy_family: Family) -> None:
    with pytest.raises(ValueError, match="registered twice"):
        register_family(TOY)
    with pytest.raises(ValueError, match=r"\['linf'\] of family 'copycat' are registered already"):
        register_family(Family("copycat", {"linf": Network(ToyNetwork)}))


class BoundedToy(nn.Module):
    """A network that bounds one argument and takes another network's spec as a part."""

    spec_bounds = {"copies": Bound(1, 4), "inner.taps": Bound(0, 3, items=2)}
    spec_parts = ("part",)

    def __init__(self, copies: int, inner: object = None, part: object = None, other: int = 0) -> None:
        super().__init__()
        self.gains = nn.Parameter(torch.ones(copies))


def test_a_family_declares_bounds_and_parts_that_make_checks_before_building(toy_family: Family) -> None:
    register_family(Family("bounded", {"bounded": Network(BoundedToy)}))
    try:
        assert make({"name": "bounded", "args": {"copies": 4, "inner": {"taps": [0, 3]}}}).gains.shape == (4,)
        refused = {
            "argument copies = 5 must be an integer from 1 to 4": {"copies": 5},
            "argument inner.taps = [0, 7] must be a list of at most 2 integers from 0 to 3": {
                "copies": 1,
                "inner": {"taps": [0, 7]},
            },
            "argument inner must be an object": {"copies": 1, "inner": [1]},
            "argument part: model 'toy': argument gain = inf is not a finite number": {
                "copies": 1,
                "part": {"name": "toy", "args": {"gain": float("inf")}},
            },
            f"argument other = {MAX_INTEGER + 1} is more than any size flowsr takes": {
                "copies": 1,
                "other": MAX_INTEGER + 1,
            },
        }
        for message, args in refused.items():
            with pytest.raises(ModelSpecError, match=re.escape(f"model 'bounded': {message}")):
                make({"name": "bounded", "args": args})
    finally:
        unregister_family("bounded")
