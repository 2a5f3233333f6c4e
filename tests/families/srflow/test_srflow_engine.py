"""SRFlow through the upscale engine: seeds, halo tiles and their tolerance, the guard, a learned prior, x4 only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flowsr_cli.engine import blended
from flowsr_cli.engine.blended import gaussian_latents, plan_blend_axis
from flowsr_cli.engine.consistent import ConsistentUpscaler
from flowsr_cli.engine.memory import choose_tile
from flowsr_cli.engine.resize import resize
from flowsr_cli.engine.upscaler import ResampledUpscaler, UpscaleReport, fixed_scale
from flowsr_cli.errors import UsageError
from flowsr_cli.eval.evaluation import load_dataset
from flowsr_cli.eval.metrics import make_lr
from flowsr_cli.families.model_file import save_model
from flowsr_cli.families.registry import make
from flowsr_cli.families.srflow.engine import DEFAULT_HALO, SRFlowUpscaler
from flowsr_cli.families.srflow.network import SRFlow, SRFlowFeatures
from flowsr_cli.families.srflow.prior import SRFlowLP
from flowsr_cli.families.upscalers import UpscalerRequest, create_upscaler
from flowsr_cli.io.sizing import Size
from tests.conftest import SHARED
from tests.families.srflow.test_srflow import randomise_zero_convs
from tests.families.srflow.test_srflow_lp import tiny_srflow_lp

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
TINY = {"rrdb_blocks": 2, "rrdb_channels": 8, "growth": 4, "feature_blocks": [0, 1], "steps": 2,
        "unconditional_steps": 1, "hidden": 8}  # fmt: skip
TILED_TOLERANCE = 2e-3
"""Largest |tiled - untiled| allowed with the default halo (16) and 16-pixel tiles on the tiny model. Measured:
4e-4 at τ=0, 5e-4 at τ=0.8 (mean 6e-6); halo 8 gives 9e-2, halo 24 1e-6, no halo 0.7."""


def photo_pair(height: int = 160, width: int = 224) -> tuple[torch.Tensor, torch.Tensor]:
    """(HR, LR) from a crop of Set5's baby, the LR made with the evaluation protocol."""
    hr = load_dataset(SHARED / "data/eval/Set5", 1, 10**8).images[0][1][..., :height, :width]
    return make_lr(hr, 4)


def sensible_tiny_srflow(**overrides: object) -> SRFlow:
    """A tiny SRFlow that behaves like a flow: actnorms initialised on a real photo, small random output convs
    (outputs stay near [0, 1] and finite at τ = 0.8)."""
    hr, lr = photo_pair()
    torch.manual_seed(0)
    model = make({"name": "srflow", "args": {**TINY, **overrides}})
    assert isinstance(model, SRFlow)
    model.train()
    with torch.no_grad():
        model.log_prob(hr, model.encode(lr))
    randomise_zero_convs(model, std=0.02)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> SRFlow:
    return sensible_tiny_srflow()


@pytest.fixture(scope="module")
def lr() -> torch.Tensor:
    return photo_pair()[1]  # 40 x 56


def upscaler(model: SRFlow, temperature: float, **options: object) -> SRFlowUpscaler:
    return SRFlowUpscaler(model, CPU, torch.float32, temperature, "tiny", **options)  # type: ignore[arg-type]


def collect(up: object, lr: torch.Tensor, seeds: list[int], size: Size | None = None) -> tuple[list, UpscaleReport]:
    """Every seed's output, checking that each output pixel reaches the sink exactly once."""
    size = size or Size(4 * lr.shape[-1], 4 * lr.shape[-2])
    images = [torch.full((1, 3, size.height, size.width), float("nan")) for _ in seeds]
    visits = torch.zeros(len(seeds), size.height, size.width, dtype=torch.int32)

    def sink(sample: int, rows: range, columns: range, tile: torch.Tensor) -> None:
        images[sample][..., rows.start : rows.stop, columns.start : columns.stop] = tile
        visits[sample, rows.start : rows.stop, columns.start : columns.stop] += 1

    report = up.upscale(lr, size, sink, seeds)  # type: ignore[attr-defined]
    assert bool((visits == 1).all())
    return images, report


@pytest.mark.parametrize(("in_size", "tile", "halo"), [(40, 16, 16), (41, 16, 5), (57, 32, 16), (40, 13, 0)])
def test_blend_plan_covers_the_output_with_weights_summing_to_one(in_size: int, tile: int, halo: int) -> None:
    axes = plan_blend_axis(in_size, tile, halo, multiple=2, scale=4)
    total = torch.zeros(4 * in_size, dtype=torch.float64)
    for axis in axes:
        total[axis.span.start : axis.span.stop] += axis.weights.double()
        assert axis.crop.start % 2 == 0 and (axis.crop.stop % 2 == 0 or axis.crop.stop == in_size)
        assert axis.crop.start * 4 <= axis.span.start and axis.span.stop <= axis.crop.stop * 4
        assert bool((axis.weights > 0).all())
    assert torch.allclose(total, torch.ones_like(total), atol=1e-6)
    assert len(axes) == -(-in_size // (tile // 2 * 2))
    if halo == 0:
        assert sum(len(axis.span) for axis in axes) == 4 * in_size  # no halo: plain crops, no overlap
    assert plan_blend_axis(in_size, 0, halo, 2, 4)[0].crop == range(in_size)


@pytest.mark.parametrize(("origin", "size"), [((8, 16), (16, 24)), ((0, 10), (12, 30)), ((6, 0), (17, 41))])
def test_gaussian_latents_of_a_crop_are_a_window_of_the_whole_images(
    model: SRFlow, origin: tuple[int, int], size: tuple[int, int]
) -> None:
    whole_lr = torch.rand(1, 3, origin[0] + size[0], origin[1] + size[1], generator=torch.Generator().manual_seed(1))
    crop_lr = whole_lr[..., origin[0] :, origin[1] :]
    with torch.no_grad():
        whole, crop = model.encode(whole_lr), model.encode(crop_lr)
    full = gaussian_latents(model.latent_shapes(whole), whole.padded_size, 7, (0, 0), whole.padded_size)
    part = gaussian_latents(model.latent_shapes(crop), crop.padded_size, 7, origin, whole.padded_size)
    for level, (big, small) in enumerate(zip(full, part)):
        top = origin[0] * big.shape[2] // whole.padded_size[0]
        left = origin[1] * big.shape[3] // whole.padded_size[1]
        window = big[..., top : top + small.shape[2], left : left + small.shape[3]]
        assert torch.equal(window, small), level
    assert not torch.equal(
        full[0], gaussian_latents(model.latent_shapes(whole), whole.padded_size, 8, (0, 0), whole.padded_size)[0]
    )


def test_untiled_output_is_the_models_sample_and_seeds_are_stable(model: SRFlow, lr: torch.Tensor) -> None:
    (first, second), report = collect(upscaler(model, 0.8, tile=0), lr, [1, 2])
    assert report.tiles == 1 and report.tile_size == 0 and report.guarded_tiles == 0
    with torch.no_grad():
        features = model.encode(lr)
        latents = [
            0.8 * z
            for z in gaussian_latents(
                model.latent_shapes(features), features.padded_size, 1, (0, 0), features.padded_size
            )
        ]
        assert torch.equal(first, model.sample(features, latents=latents))
    assert torch.equal(collect(upscaler(model, 0.8, tile=0), lr, [2])[0][0], second)
    assert (first - second).abs().max() > 0.05
    (mode_a, mode_b), _ = collect(upscaler(model, 0.0, tile=0), lr, [1, 2])
    assert torch.equal(mode_a, mode_b)
    with torch.no_grad():
        assert torch.equal(mode_a, model.sample(model.encode(lr), temperature=0.0))
    assert upscaler(model, 0.8).stochastic and not upscaler(model, 0.0).stochastic


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_tiled_output_matches_untiled_within_tolerance_and_without_seams(
    model: SRFlow, lr: torch.Tensor, temperature: float
) -> None:
    whole = collect(upscaler(model, temperature, tile=0), lr, [3])[0][0]
    tiled, report = collect(upscaler(model, temperature, tile=16), lr, [3])
    tiled = tiled[0]
    assert report.tiles == 3 * 4 and report.tile_size == 16 and DEFAULT_HALO == 16
    assert -1.5 < whole.min() and whole.max() < 2.5, "the tiny model is a sensible flow"
    difference = (tiled - whole).abs()
    assert difference.max() < TILED_TOLERANCE and difference.mean() < TILED_TOLERANCE / 100
    borders = torch.zeros(difference.shape[-2:], dtype=torch.bool)
    for boundary in range(64, 160, 64):
        borders[boundary - 4 : boundary + 4] = True
    for boundary in range(64, 224, 64):
        borders[:, boundary - 4 : boundary + 4] = True
    assert difference[..., borders].max() <= 2 * difference[..., ~borders].max(), "a seam along the tile borders"
    steps = (tiled[..., 1:] - tiled[..., :-1] - (whole[..., 1:] - whole[..., :-1])).abs()
    at_borders = torch.zeros(steps.shape[-1], dtype=torch.bool)
    at_borders[[63, 127, 191]] = True
    assert steps[..., at_borders].max() <= steps[..., ~at_borders].max(), "a jump across the tile borders"
    with_crops = collect(upscaler(model, temperature, tile=16, tile_pad=0), lr, [3])[0][0]
    assert (with_crops - whole).abs().max() > 10 * difference.max(), "the halo is what keeps tiles close"


def fault_above(model: SRFlow, monkeypatch: pytest.MonkeyPatch, limit: float) -> None:
    """Make the first inverse of sampling (the coarsest level) return inf when its latent exceeds ``limit``."""
    level = model.flow_levels[-1]
    original = level.inverse

    def inverse(
        x: torch.Tensor, cond: torch.Tensor, eps: torch.Tensor | None = None, after_step: object = None
    ) -> torch.Tensor:
        output = original(x, cond, eps, after_step)
        return output if x.abs().max() <= limit else torch.full_like(output, float("inf"))

    monkeypatch.setattr(level, "inverse", inverse)


@pytest.mark.robustness
def test_guard_retries_exploding_tiles_at_lower_temperature(
    model: SRFlow, lr: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    honest = collect(upscaler(model, 0.8, tile=24), lr, [5])[0][0]
    real_latents = blended.gaussian_latents

    def outlier_in_the_top_row(*args: object) -> list[torch.Tensor]:
        latents = real_latents(*args)  # type: ignore[arg-type]
        if args[3][0] == 0:  # type: ignore[index]
            latents[-1][:, :, 0] = 10.0
        return latents

    monkeypatch.setattr(blended, "gaussian_latents", outlier_in_the_top_row)
    fault_above(model, monkeypatch, 6.0)  # 0.8 * 10 explodes, 0.4 * 10 does not
    (guarded,), report = collect(upscaler(model, 0.8, tile=24), lr, [5])
    rows = plan_blend_axis(lr.shape[-2], 24, DEFAULT_HALO, 2, 4)
    assert [row.crop.start for row in rows] == [0, 8] and report.tiles == 2 * 3
    assert report.guarded_tiles == 3, "the top row of tiles"
    assert torch.isfinite(guarded).all()
    assert not torch.allclose(guarded[..., :8, :], honest[..., :8, :])
    below = rows[0].span.stop
    assert torch.equal(guarded[..., below:, :], honest[..., below:, :])
    (raw,), unguarded = collect(upscaler(model, 0.8, tile=24, guard=False), lr, [5])
    assert unguarded.guarded_tiles == 0 and not torch.isfinite(raw[..., :8, :]).any()


@pytest.mark.robustness
def test_guard_falls_back_to_bicubic_and_is_off_for_evaluation(
    model: SRFlow, lr: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault_above(model, monkeypatch, -1.0)  # every inverse explodes, even at temperature 0
    (output,), report = collect(upscaler(model, 0.8, tile=16), lr, [0])
    assert report.guarded_tiles == report.tiles == 12
    assert torch.allclose(output, resize(lr, (160, 224)), atol=1e-5)
    (raw,), _ = collect(upscaler(model, 0.8, tile=0, guard=False), lr, [0])
    assert not torch.isfinite(raw).any()


def test_bfloat16_encoder_stays_close(model: SRFlow, lr: torch.Tensor) -> None:
    exact = collect(upscaler(model, 0.0, tile=16), lr, [0])[0][0]
    bf16 = SRFlowUpscaler(model, CPU, torch.bfloat16, 0.0, "tiny", tile=16)
    (half,), _ = collect(bf16, lr, [0])
    assert torch.isfinite(half).all() and (half - exact).abs().mean() < 0.02


class FakeLP(torch.nn.Module):
    """Stands in for an SRFlow-LP model: a frozen SRFlow and a latent prediction from the features."""

    halo = 8

    def __init__(self, flow: SRFlow, size_multiple: int | None = None) -> None:
        super().__init__()
        self.flow = flow
        self.size_multiple = size_multiple or flow.size_multiple
        self.crops: list[tuple[tuple[int, int], tuple[int, int] | None, tuple[int, int]]] = []
        """(origin, whole, crop size) of each call."""

    def predict_latents(
        self,
        features: SRFlowFeatures,
        lr: torch.Tensor,
        origin: tuple[int, int] = (0, 0),
        whole: tuple[int, int] | None = None,
    ) -> list[torch.Tensor]:
        assert lr.shape[-2:] == features.lr_size
        self.crops.append((origin, whole, features.lr_size))
        return [torch.full((1, *shape), 0.3) for shape in self.flow.latent_shapes(features)]


def test_a_learned_prior_replaces_the_gaussian_latents(model: SRFlow, lr: torch.Tensor) -> None:
    predicted = SRFlowUpscaler(model, CPU, torch.float32, 0.8, "lp", tile=0, predictor=FakeLP(model))
    assert not predicted.stochastic
    (first, second), _ = collect(predicted, lr, [0, 1])
    with torch.no_grad():
        features = model.encode(lr)
        expected = model.sample(features, latents=FakeLP(model).predict_latents(features, lr))
    assert torch.equal(first, expected) and torch.equal(second, expected)


def test_a_learned_prior_is_told_where_each_crop_lies(model: SRFlow, lr: torch.Tensor) -> None:
    """Crops start on the prior's grid; with --tile-pad 0 they keep one step of it as context (here 8)."""
    for tile_pad, starts in ((16, [0, 16]), (0, [0, 8, 24])):
        predictor = FakeLP(model, size_multiple=8)
        upscaler = SRFlowUpscaler(model, CPU, torch.float32, 0.0, "lp", 16, tile_pad, predictor=predictor)
        collect(upscaler, lr, [0])
        assert {origin[0] for origin, _, _ in predictor.crops} == set(starts)
        assert all(whole == (40, 56) for _, whole, _ in predictor.crops)
        assert upscaler.halo == max(tile_pad, 1)


def test_create_upscaler_wires_srflow_and_its_learned_prior(model: SRFlow, tmp_path: Path) -> None:
    learned_file, plain_file = tmp_path / "lp.safetensors", tmp_path / "flow.safetensors"
    save_model(tiny_srflow_lp(), learned_file)
    save_model(model, plain_file)
    request = UpscalerRequest(str(learned_file), device="cpu", temperature=0.7, tile_pad=8)
    projected = create_upscaler(request)
    assert isinstance(projected, ConsistentUpscaler), "a model flowsr trained is projected under auto"
    learned = projected.inner
    assert isinstance(learned, SRFlowUpscaler) and isinstance(learned.predictor, SRFlowLP)
    assert learned.model is learned.predictor.flow and not projected.stochastic
    assert learned.halo == 8 and fixed_scale(projected) == 4
    gaussian = create_upscaler(UpscalerRequest(request.model, device="cpu", prior="gaussian", consistency="off"))
    assert isinstance(gaussian, SRFlowUpscaler) and gaussian.predictor is None
    plain = create_upscaler(UpscalerRequest(str(plain_file), device="cpu", temperature=0.7, consistency="off"))
    assert isinstance(plain, SRFlowUpscaler) and plain.predictor is None and plain.temperature == 0.7
    with pytest.raises(UsageError, match="has no learned prior"):
        create_upscaler(UpscalerRequest(str(plain_file), device="cpu", prior="learned"))


def test_only_x4_unless_resampled(model: SRFlow, lr: torch.Tensor) -> None:
    up = upscaler(model, 0.0, tile=0)
    with pytest.raises(UsageError, match="tiny is a fixed ×4 model: use --scale 4"):
        collect(up, lr, [0], Size(200, 140))
    native = collect(up, lr, [0])[0][0]
    (resampled,), _ = collect(ResampledUpscaler(up, 4), lr, [0], Size(196, 140))
    assert torch.equal(resampled, resize(native, (140, 196)))


def test_auto_tile_is_estimated_from_the_channel_counts(model: SRFlow, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blended, "available_memory", lambda device: 2 * 10**8)
    tiny = upscaler(model, 0.5)
    per_pixel = tiny._bytes_per_input_pixel()
    assert tiny._tile_size() == choose_tile(2 * 10**8, per_pixel, DEFAULT_HALO)
    wider = upscaler(sensible_tiny_srflow(rrdb_channels=32, hidden=32), 0.5)
    assert wider._bytes_per_input_pixel() > 2 * per_pixel
    assert wider._tile_size() < tiny._tile_size()


def test_cuda_out_of_memory_halves_the_tile_and_retries(
    model: SRFlow, lr: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = collect(upscaler(model, 0.8, tile=32), lr, [1])[0][0]
    real_encode = SRFlowUpscaler._encode
    failures = []

    def encode_at_the_device_boundary(self, lr_image, row, column, dtype):  # type: ignore[no-untyped-def]
        if not failures:
            failures.append(len(row.crop))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_encode(self, lr_image, row, column, dtype)

    monkeypatch.setattr(SRFlowUpscaler, "_encode", encode_at_the_device_boundary)
    retried = upscaler(model, 0.8, tile=64)
    assert torch.equal(collect(retried, lr, [1])[0][0], expected)
    assert failures == [40] and retried.notes == ["GPU out of memory: continuing with 32-pixel tiles"]
