"""HCFlow's rescaling engine: the forward's reach from the network's structure, its fixed blocks (the LR equals the
untiled forward and never depends on tiling or threads), the inverse's halo tiles and position-tied latents, and the
image-level padding, alpha, greyscale and crop around both."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flowsr_cli.engine.blended import gaussian_latents
from flowsr_cli.engine.rescale import padding_for, reflect_pad, rescale_down, rescale_up
from flowsr_cli.families.hcflow import rescale_engine
from flowsr_cli.families.hcflow.rescale_engine import (
    INVERSE_HALO,
    HCFlowRescaleEngine,
    conv_reach,
    forward_reach,
)
from flowsr_cli.families.hcflow.rescaling import CPU_CONFIGS, HCFlowRescaler
from flowsr_cli.families.registry import make
from flowsr_cli.io.image import Image
from flowsr_cli.io.rescale_mark import RescaleRecord
from flowsr_cli.io.sizing import Size
from tests.families.hcflow.test_rescaling import TINY, TINY_X2, tiny_rescaler
from tests.families.srflow.test_srflow_engine import photo_pair

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
INVERSE_TOLERANCE = 1e-4
"""Largest |tiled - untiled| of the inverse with the default halo and 16-pixel tiles (LR 40 x 56 of a photo).
Measured with halos 8 / 12 / 16 / 24 / 32 at heat 0 and 1, whose random-weight outputs reach -19 to 23:
tiny x4 6e-4 / 4e-6 / 3e-6 / 2e-6 / 1e-6, tiny x2 2e-4 / 1e-6 / 1e-6 / 1e-6 / 5e-7, the CPU config x4-small (tamed
random weights) 5e-3 / 5e-5 / 4e-6 / 3e-6 / 2e-6, an imported original-layout model with tamed random weights
8e-3 / 6e-4 / 2e-5 / 3e-6 / 2e-6; without a halo 1 to 11."""


@pytest.fixture(scope="module")
def model() -> HCFlowRescaler:
    return tiny_rescaler(dict(TINY))


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    return photo_pair()[0]  # 160 x 224


def engine(model: HCFlowRescaler, **options: object) -> HCFlowRescaleEngine:
    return HCFlowRescaleEngine(model, CPU, "tiny", **options)  # type: ignore[arg-type]


def inverse(up: HCFlowRescaleEngine, lr: torch.Tensor, seed: int, heat: float) -> torch.Tensor:
    """The engine's inverse, checking that every HR pixel reaches the sink exactly once and that the tile plan
    follows ``up.tile`` (0: one tile)."""
    scale = up.scale
    out = torch.full((1, 3, scale * lr.shape[-2], scale * lr.shape[-1]), float("nan"))
    visits = torch.zeros(out.shape[-2:], dtype=torch.int32)

    def sink(sample: int, rows: range, columns: range, tile: torch.Tensor) -> None:
        out[..., rows.start : rows.stop, columns.start : columns.stop] = tile
        visits[rows.start : rows.stop, columns.start : columns.stop] += 1

    report = up.upscale(lr, sink, seed, heat)
    assert bool((visits == 1).all())
    if isinstance(up.tile, int):
        assert report.tiles == (1 if up.tile == 0 else -(-lr.shape[-2] // up.tile) * -(-lr.shape[-1] // up.tile))
    return out


def eight_bit(lr: torch.Tensor) -> torch.Tensor:
    return lr.clamp(0, 1).mul(255).round().to(torch.uint8)


def test_the_forward_reach_follows_the_networks_structure() -> None:
    """Five 3x3 convolutions per coupling; level l's cells are 2^(l+1) HR pixels: the original x4 (8 steps per level)
    reaches (2 * 40 + 4 * 40) / 4 = 60 LR pixels, x2 2 * 40 / 2 = 40."""
    with torch.device("meta"):
        original = HCFlowRescaler()
        reaches = {name: forward_reach(HCFlowRescaler(**args)) for name, args in CPU_CONFIGS.items()}
        assert forward_reach(original) == 60 and forward_reach(HCFlowRescaler(levels=1)) == 40
    assert conv_reach(original.flow_levels[0].steps[0]) == 5
    assert reaches == {"x4-small": 45, "x2-small": 30}


def test_a_step_reaches_exactly_its_convolutions_radii(model: HCFlowRescaler) -> None:
    """The gradient of one output cell of an (LR -> others) step reaches its input exactly 5 cells away."""
    step = model.flow_levels[0].steps[0]
    x = torch.rand(1, 12, 21, 21, generator=torch.Generator().manual_seed(1), requires_grad=True)
    step(x)[0, 3:, 10, 10].sum().backward()
    assert x.grad is not None
    rows = x.grad.abs().sum(dim=(0, 1, 3)).nonzero().flatten()
    assert conv_reach(step) == 5 and (int(rows.min()), int(rows.max())) == (10 - 5, 10 + 5)


@pytest.mark.parametrize("args", [TINY, TINY_X2], ids=["x4", "x2"])
def test_the_footprint_of_an_lr_pixel_lies_within_the_forward_reach(args: dict[str, object]) -> None:
    """Measured by the gradient of one LR pixel: x4 reaches 60 HR pixels (the bound: 18 LR pixels, 72 HR), x2 20 (the
    bound: 15 LR pixels, 30 HR): a coupling changes one group of channels, so no path uses every step's reach."""
    model = tiny_rescaler(dict(args))
    scale, reach = model.scale, forward_reach(model)
    side = scale * (2 * reach + 9)
    hr = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(1), requires_grad=True)
    centre = reach + 4
    model.downscale(hr)[0, :, centre, centre].sum().backward()
    assert hr.grad is not None
    rows = hr.grad.abs().sum(dim=(0, 1, 3)).nonzero().flatten()
    before, after = scale * centre - int(rows.min()), int(rows.max()) - (scale * centre + scale - 1)
    assert before == after == {4: 60, 2: 20}[scale] <= scale * reach


def test_the_blocked_forward_is_the_untiled_forward_and_ignores_the_tile_setting(
    model: HCFlowRescaler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An HR of 3 x 2 blocks at level 0 with the real block size: the LR equals the whole image's within float
    rounding, its 8-bit bytes are the same, and tile settings (they are for the inverse) change nothing."""
    hr = torch.rand(1, 3, 1080, 560, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        whole = model.downscale(hr)
    lrs = [engine(model, tile=tile).downscale(hr) for tile in (64, 256, 0)]
    assert all(torch.equal(lr, lrs[0]) for lr in lrs)
    assert (lrs[0] - whole).abs().max() < 1e-5
    assert torch.equal(eight_bit(lrs[0]), eight_bit(whole))
    crop = hr[..., :200, :136]
    monkeypatch.setattr(rescale_engine, "FORWARD_BLOCK", 16)  # many small blocks: still the same LR
    with torch.no_grad():
        assert (engine(model).downscale(crop) - model.downscale(crop)).abs().max() < 1e-5


def test_the_lr_bytes_do_not_depend_on_threads(model: HCFlowRescaler) -> None:
    hr = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(3))
    one = engine(model).downscale(hr)
    torch.set_num_threads(2)
    try:
        two = engine(model).downscale(hr)
    finally:
        torch.set_num_threads(1)
    assert torch.equal(one, two)


def test_forward_progress_counts_every_block_of_every_step(model: HCFlowRescaler) -> None:
    fractions: list[float] = []
    engine(model).downscale(torch.rand(1, 3, 8, 12), fractions.append)
    assert len(fractions) == 3 + 2 and fractions == sorted(fractions) and fractions[-1] == 1.0


def test_the_forward_refuses_sizes_that_are_not_multiples_of_the_scale(model: HCFlowRescaler) -> None:
    with pytest.raises(ValueError, match="not a multiple of the scale 4"):
        engine(model).downscale(torch.rand(1, 3, 8, 10))


def test_the_untiled_inverse_is_the_models_with_latents_tied_to_positions(
    model: HCFlowRescaler, photo: torch.Tensor
) -> None:
    lr = eight_bit(engine(model).downscale(photo)).float() / 255
    restored = inverse(engine(model, tile=0), lr, 7, 0.8)
    shapes = model.latent_shapes(lr)
    latents = gaussian_latents(shapes, tuple(lr.shape[-2:]), 7, (0, 0), tuple(lr.shape[-2:]))
    with torch.no_grad():
        assert torch.equal(restored, model.upscale(lr, 0.8, latents=latents))
    assert (inverse(engine(model, tile=0), lr, 8, 0.8) - restored).abs().max() > 0.05


@pytest.mark.parametrize("heat", [0.0, 1.0])
def test_the_tiled_inverse_matches_the_untiled_within_tolerance(
    model: HCFlowRescaler, photo: torch.Tensor, heat: float
) -> None:
    lr = eight_bit(engine(model).downscale(photo)).float() / 255
    whole = inverse(engine(model, tile=0), lr, 3, heat)
    tiled = inverse(engine(model, tile=16), lr, 3, heat)  # the default halo
    assert (tiled - whole).abs().max() < INVERSE_TOLERANCE
    bare = inverse(engine(model, tile=16, tile_pad=0), lr, 3, heat)
    assert (bare - whole).abs().max() > 1000 * INVERSE_TOLERANCE, "the halo is what keeps tiles close"
    assert INVERSE_HALO == 24


def test_an_untrained_model_shrinks_to_the_box_mean_and_restores_the_nearest_upsampling(photo: torch.Tensor) -> None:
    torch.manual_seed(0)
    untrained = make({"name": "hcflow-rescale", "args": TINY}).eval()
    lr = engine(untrained).downscale(photo)
    assert (lr - F.avg_pool2d(photo, 4)).abs().max() < 1e-6
    restored = inverse(engine(untrained, tile=16), lr, 0, 0.0)
    assert (restored - F.interpolate(lr, scale_factor=4, mode="nearest")).abs().max() < 1e-6


def test_padding_mirrors_to_a_multiple_of_the_scale() -> None:
    assert padding_for(Size(50, 37), 4) == (2, 3) and padding_for(Size(8, 4), 4) == (0, 0)
    pixels = np.arange(3 * 2 * 1, dtype=np.uint8).reshape(3, 2, 1)  # narrower than its padding
    padded = reflect_pad(pixels, padding_for(Size(2, 3), 4))
    assert padded.shape == (4, 4, 1)
    assert padded[..., 0].tolist() == [[0, 1, 0, 1], [2, 3, 2, 3], [4, 5, 4, 5], [2, 3, 2, 3]]


def test_images_round_trip_with_their_channels_depth_alpha_and_size() -> None:
    """Grey + alpha at 16 bits, 13 x 10: the LR is 8-bit RGBA of the padded size, its alpha the block mean; the
    restored image is grey + alpha at 16 bits, cropped back."""
    torch.manual_seed(0)
    untrained = make({"name": "hcflow-rescale", "args": TINY}).eval()
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 65536, size=(10, 13, 2), dtype=np.uint16)
    down = rescale_down(Image(pixels, "png"), engine(untrained))
    assert down.image.pixels.shape == (3, 4, 4) and down.image.pixels.dtype == np.uint8
    assert down.size == Size(13, 10) and down.padding == (3, 2) and down.grey and down.bit_depth == 16
    assert any("16-bit image" in note for note in down.notes)
    colour = down.image.pixels[..., :3].astype(int)
    assert (colour.max(axis=2) - colour.min(axis=2)).max() == 0  # grey in, grey LR from the untrained model
    alpha = reflect_pad(pixels, (3, 2))[..., 1].astype(float) / 65535
    expected = np.round(alpha.reshape(3, 4, 4, 4).mean(axis=(1, 3)) * 255)
    assert np.abs(down.image.pixels[..., 3] - expected).max() <= 1
    record = RescaleRecord("m", None, 4, 0, 0.0, down.size, down.padding, True, 16)
    restored, report = rescale_up(down.image, down.image.pixels[..., :3], record, engine(untrained))
    assert restored.pixels.shape == (10, 13, 2) and restored.pixels.dtype == np.uint16 and report.tiles == 1
    nearest = np.repeat(np.repeat(down.image.pixels[..., 0].astype(int) * 257, 4, axis=0), 4, axis=1)[:10, :13]
    assert np.abs(restored.pixels[..., 0].astype(int) - nearest).max() <= 1
