"""The tiled engine: tiles reproduce the untiled image exactly, at any scale, for every seed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from flowsr_cli.engine import device as device_module
from flowsr_cli.engine.bicubic import BicubicUpscaler
from flowsr_cli.engine.memory import MAX_TILE, MAX_WINDOW_BYTES, MIN_TILE, choose_tile, choose_window
from flowsr_cli.engine.tiling import patch_positions, plan_axis
from flowsr_cli.families.linf import engine as flow_engine
from flowsr_cli.families.linf.engine import FlowUpscaler
from flowsr_cli.families.linf.network import LINF
from flowsr_cli.families.model_file import save_model
from flowsr_cli.families.registry import make
from flowsr_cli.io.sizing import Size, SizeRequest
from tests.conftest import CliInvoker
from tests.families.linf.test_linf import collect

CPU = torch.device("cpu")
LR_SIZE = Size(66, 50)


def linf(patch_size: int) -> LINF:
    torch.manual_seed(patch_size)
    spec = {
        "name": "linf",
        "args": {
            "encoder": {"name": "edsr-baseline", "args": {"channels": 8, "blocks": 2}},
            "patch_size": patch_size,
            "hidden": 16,
            "mlp_layers": 2,
            "flow_layers": 4,
        },
    }
    model = make(spec)
    assert isinstance(model, LINF)
    return model.eval()


@pytest.fixture(scope="module")
def lr() -> torch.Tensor:
    return torch.rand(1, 3, LR_SIZE.height, LR_SIZE.width, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("patch_size", [1, 3])
@pytest.mark.parametrize("scale", [2, 3.5, 4, 6.3])
def test_tiled_flow_equals_untiled_for_every_tile_size_and_temperature(
    lr: torch.Tensor, patch_size: int, scale: float
) -> None:
    model = linf(patch_size)
    size = SizeRequest(scale=scale).target(LR_SIZE)
    for temperature in (0.0, 0.8):
        whole = collect(FlowUpscaler(model, CPU, torch.float32, temperature, "t", tile=0), lr, size, [11, 12])
        for tile in (16, 32, 47, 64):
            upscaler = FlowUpscaler(model, CPU, torch.float32, temperature, "t", tile=tile)
            tiled = collect(upscaler, lr, size, [11, 12])
            for sample in range(2):
                assert torch.allclose(tiled[sample], whole[sample], atol=1e-4), (tile, temperature)
        if temperature:
            assert (whole[0] - whole[1]).abs().max() > 1e-3, "different seeds must give different samples"


@pytest.mark.parametrize("scale", [2, 3.5, 4, 6.3])
def test_tiled_bicubic_is_bit_identical(lr: torch.Tensor, scale: float) -> None:
    size = SizeRequest(scale=scale).target(LR_SIZE)
    whole = collect(BicubicUpscaler(CPU, tile=0), lr, size, [0])[0]
    for tile in (16, 32, 47, 64):
        assert torch.equal(collect(BicubicUpscaler(CPU, tile=tile), lr, size, [0])[0], whole)


@pytest.mark.parametrize(("in_size", "out_size", "patch"), [(50, 175, 3), (50, 315, 1), (37, 37, 3), (64, 129, 3)])
def test_axis_plan_covers_every_output_once_with_equal_crops(in_size: int, out_size: int, patch: int) -> None:
    positions = patch_positions(in_size, out_size, patch)
    for tile in (8, 16, 47):
        tiles = plan_axis(in_size, positions, tile, halo=5)
        owned = [index for part in tiles for index in part.out]
        assert owned == list(range(len(positions)))
        assert len({len(part.crop) for part in tiles}) == 1, "all tiles read the same size"
        for part in tiles:
            assert 0 <= part.crop.start and part.crop.stop <= in_size
            nearest = [min(max(int(np.floor(positions[i] + 0.5)), 0), in_size - 1) for i in part.out]
            assert min(nearest) - 5 >= part.crop.start or part.crop.start == 0
            assert max(nearest) + 5 < part.crop.stop or part.crop.stop == in_size


def test_patch_positions_follow_the_global_grid() -> None:
    # 10 output pixels from 4 input pixels in 3x3 patches: centres at output pixels 1, 4, 7, 10 (extrapolated).
    assert patch_positions(4, 10, 3) == pytest.approx([(c + 0.5) * 0.4 - 0.5 for c in (1, 4, 7, 10)])


def test_choose_tile_fits_the_budget() -> None:
    assert choose_tile(0, 1000.0, 10) == MIN_TILE
    assert choose_tile(10**15, 1000.0, 10) == MAX_TILE
    side = choose_tile(2 * 200 * 200 * 1000, 1000.0, 10)
    assert side == 180  # (180 + 2*10)^2 pixels * 1000 bytes = half of the free memory


def test_choose_window_fits_the_budget_and_the_cap() -> None:
    assert choose_window(0, 1000.0) == MIN_TILE
    assert choose_window(2 * 200 * 200 * 1000, 1000.0) == 200  # 200^2 pixels * 1000 bytes = half the free memory
    assert choose_window(10**15, 10**5) == math.floor(math.sqrt(MAX_WINDOW_BYTES / 10**5))  # the cap, not the RAM
    half = math.floor(math.sqrt(MAX_WINDOW_BYTES / 2 / 10**5))
    assert choose_window(10**15, 10**5, reserved=MAX_WINDOW_BYTES // 2) == half
    assert choose_window(10**15, 10**5, reserved=10 * MAX_WINDOW_BYTES) == half  # never less than half the budget


@pytest.mark.parametrize("scale", [2.0, 4.0, 8.0])
def test_auto_tiles_of_the_learned_prior_read_no_more_than_one_window(scale: float) -> None:
    """Auto tiling does a small image whole, and a large one in tiles whose windows (core + the latent
    module's reach) are no larger than the budget's window: the peak does not grow with the image."""
    from flowsr_cli.families.linf.prior_engine import LearnedPriorUpscaler, plan_prior_axis

    model = linf_lp([8, 16, 16])
    upscaler = LearnedPriorUpscaler(model, CPU, "t")
    for side in (64, 3000):
        lr = torch.zeros(1, 3, side, side)
        size = SizeRequest(scale=scale).target(Size(side, side))
        core = upscaler._core_cells(lr, size)
        plan = plan_prior_axis(model, size.height, side, core)
        window_cells = max(len(part.window) for part in plan)
        if side == 64:
            assert core == 0 and len(plan) == 1
        else:
            window = math.floor(upscaler.window_side(scale, size.width * size.height * 3) * scale / model.patch_size)
            assert len(plan) > 2 and window_cells <= window + 2 * model.latent.unet.multiple


def exploding_latent(original):  # type: ignore[no-untyped-def]
    """Latents far out of distribution in the first latent rows whenever temperature > 0.1."""

    def make_latent(seed: int, temperature: float, batch: int, dim: int, width: int):  # type: ignore[no-untyped-def]
        inner = original(seed, temperature, batch, dim, width)

        def latent(rows: range, columns: range) -> torch.Tensor:
            z = inner(rows, columns).contiguous()
            if temperature > 0.1 and rows.start < 2:
                z.view(batch, dim, len(rows), len(columns))[:, :, : 2 - rows.start] = 1e38
            return z

        return latent

    return make_latent


@pytest.mark.robustness
def test_exploding_inverse_guard_repairs_and_reports(lr: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    model = linf(3)
    size = Size(132, 100)
    honest = collect(FlowUpscaler(model, CPU, torch.float32, 0.8, "t", tile=32), lr, size, [5])[0]
    monkeypatch.setattr(flow_engine, "gaussian_latent", exploding_latent(flow_engine.gaussian_latent))
    upscaler = FlowUpscaler(model, CPU, torch.float32, 0.8, "t", tile=32)
    images = [torch.empty(1, 3, size.height, size.width)]
    reports = []

    def sink(sample: int, rows: range, columns: range, tile: torch.Tensor) -> None:
        images[sample][..., rows.start : rows.stop, columns.start : columns.stop] = tile

    reports.append(upscaler.upscale(lr, size, sink, [5]))
    guarded = images[0]
    row_tiles = plan_axis(LR_SIZE.height, patch_positions(LR_SIZE.height, size.height, 3), 32, model.receptive_radius)
    column_tiles = plan_axis(LR_SIZE.width, patch_positions(LR_SIZE.width, size.width, 3), 32, model.receptive_radius)
    assert len(row_tiles) == 2 and len(column_tiles) == 3
    assert torch.isfinite(guarded).all()
    assert reports[0].guarded_tiles == len(column_tiles), "only the tiles of the first latent rows exploded"
    assert not torch.allclose(guarded[..., :6, :], honest[..., :6, :])
    second_row = row_tiles[1].out.start * 3
    assert torch.allclose(guarded[..., second_row:, :], honest[..., second_row:, :], atol=1e-5)


@pytest.mark.robustness
def test_a_broken_model_falls_back_to_the_bilinear_base(lr: torch.Tensor) -> None:
    model = linf(3)
    with torch.no_grad():
        model.flow.last.bias.fill_(float("nan"))
    size = Size(99, 75)
    output = collect(FlowUpscaler(model, CPU, torch.float32, 0.8, "t", tile=0), lr, size, [0])[0]
    assert torch.isfinite(output).all()
    bilinear = torch.nn.functional.interpolate(lr, size=(75, 99), mode="bilinear", align_corners=False)
    assert torch.allclose(output, bilinear, atol=1e-5)


def test_cuda_out_of_memory_halves_the_tile_and_retries(lr: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    model = linf(3)
    size = Size(132, 100)
    expected = collect(FlowUpscaler(model, CPU, torch.float32, 0.8, "t", tile=0), lr, size, [1])[0]
    upscaler = FlowUpscaler(model, CPU, torch.float32, 0.8, "t", tile=64)
    real_encode = FlowUpscaler._encode
    failures = []

    def encode_at_the_device_boundary(self, lr_image, part, dtype):  # type: ignore[no-untyped-def]
        if not failures:
            failures.append(len(part.rows.crop))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_encode(self, lr_image, part, dtype)

    monkeypatch.setattr(FlowUpscaler, "_encode", encode_at_the_device_boundary)
    output = collect(upscaler, lr, size, [1])[0]
    assert failures == [50] and torch.allclose(output, expected, atol=1e-4)
    assert upscaler.notes == ["GPU out of memory: continuing with 32-pixel tiles"]


def test_auto_device_falls_back_to_cpu_when_cuda_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    choice = device_module.resolve_device("auto")
    assert choice.device.type == "cpu"
    assert choice.note is not None and "running on the CPU" in choice.note


def test_half_precision_encoder_keeps_output_close(lr: torch.Tensor) -> None:
    model = linf(3)
    size = Size(99, 75)
    exact = collect(FlowUpscaler(model, CPU, torch.float32, 0.0, "t", tile=32), lr, size, [0])[0]
    bf16 = collect(FlowUpscaler(model, CPU, torch.bfloat16, 0.0, "t", tile=32), lr, size, [0])[0]
    assert torch.isfinite(bf16).all()
    assert (bf16 - exact).abs().mean() < 0.02


def test_cli_tile_option_gives_the_same_file_and_reports_tiles(run_cli: CliInvoker, tmp_path: Path) -> None:
    save_model(linf(3), tmp_path / "m.safetensors")
    pixels = np.random.default_rng(3).integers(0, 256, (50, 66, 3), dtype=np.uint8)
    PILImage.fromarray(pixels).save(tmp_path / "x.png")
    common = ["upscale", str(tmp_path / "x.png"), "--model", str(tmp_path / "m.safetensors"), "-s", "3.5", "--json"]
    untiled = run_cli(*common, "--tile", "0", "-o", str(tmp_path / "a.png"))
    tiled = run_cli(*common, "--tile", "24", "-o", str(tmp_path / "b.png"))
    assert untiled.exit_code == 0 and tiled.exit_code == 0, tiled.output
    assert json.loads(untiled.stdout)["tiles"] == 1
    assert json.loads(tiled.stdout)["tiles"] == 9 and json.loads(tiled.stdout)["guarded_tiles"] == 0
    difference = np.abs(
        np.asarray(PILImage.open(tmp_path / "a.png"), dtype=np.int16)
        - np.asarray(PILImage.open(tmp_path / "b.png"), dtype=np.int16)
    )
    assert difference.max() <= 1, "tiles may only differ by float rounding at a quantisation boundary"
    assert (difference > 0).mean() < 1e-3


def linf_lp(widths: list[int]) -> torch.nn.Module:
    """A tiny LINF-LP with non-trivial BatchNorm statistics (eval mode)."""
    torch.manual_seed(7)
    flow = linf(3).spec
    latent = {"name": "lp-latent", "args": {"dim": 27, "branch_channels": 8, "growth": 8, "widths": widths}}
    model = make({"name": "linf-lp", "args": {"flow": flow, "latent": latent}}).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("scale", [2.0, 3.5])
def test_the_learned_priors_auto_tile_size_is_reported_in_input_pixels(scale: float) -> None:
    from flowsr_cli.families.linf.prior_engine import LearnedPriorUpscaler

    class SmallBudget(LearnedPriorUpscaler):
        def window_side(self, scale: float, reserved: int = 0) -> int:
            return 40

    model = linf_lp([8, 16])
    lr = torch.rand(1, 3, 48, 48)
    size = SizeRequest(scale=scale).target(Size(48, 48))
    cores: list[int] = []
    report = SmallBudget(model, CPU, "t").upscale(lr, size, lambda _s, _r, columns, _t: cores.append(len(columns)))
    assert report.tiles > 1
    assert abs(report.tile_size - max(cores) / scale) <= model.patch_size / scale


@pytest.mark.parametrize(("widths", "scale"), [([8, 16], 2), ([8, 16], 3.5), ([8, 16], 4), ([8, 16, 16], 4)])
def test_tiled_learned_prior_equals_untiled(lr: torch.Tensor, widths: list[int], scale: float) -> None:
    from flowsr_cli.families.linf.prior_engine import LearnedPriorUpscaler, plan_prior_axis

    model = linf_lp(widths)
    size = SizeRequest(scale=scale).target(LR_SIZE)
    whole = collect(LearnedPriorUpscaler(model, CPU, "t", tile=0), lr, size, [0])[0]
    for tile in (16, 32):
        plan = plan_prior_axis(model, size.height, LR_SIZE.height, int(tile * scale / 3))
        assert len(plan) > 1 and any(len(part.window) < plan[-1].window.stop for part in plan), "windows must be cut"
        tiled = collect(LearnedPriorUpscaler(model, CPU, "t", tile=tile), lr, size, [0])[0]
        assert torch.allclose(tiled, whole, atol=1e-4), (tile, (tiled - whole).abs().max())


def test_the_learned_prior_keeps_its_grid_memory_for_later_tiles_and_images(lr: torch.Tensor) -> None:
    """The conditioning grid's memory is allocated for the largest tile and serves every later tile and image; what
    a tile or image left in it never reaches another's output."""
    from flowsr_cli.families.linf.prior_engine import LearnedPriorUpscaler

    model = linf_lp([8, 16])
    size = SizeRequest(scale=4).target(LR_SIZE)
    fresh = collect(LearnedPriorUpscaler(model, CPU, "t", tile=16), lr, size, [0])[0]
    upscaler = LearnedPriorUpscaler(model, CPU, "t", tile=16)
    first = collect(upscaler, lr, size, [0])[0]
    kept = upscaler._grid_memory
    collect(upscaler, torch.rand(lr.shape, generator=torch.Generator().manual_seed(9)), size, [0])
    again = collect(upscaler, lr, size, [0])[0]
    assert upscaler._grid_memory is kept
    assert torch.equal(first, fresh) and torch.equal(again, fresh)


def test_the_kept_grid_memory_counts_as_free_in_the_tile_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a machine short of memory, what the engine keeps for the next grid is memory that grid reuses: the next
    tile's window is planned as if it were free."""
    from flowsr_cli.families.linf import prior_engine

    upscaler = prior_engine.LearnedPriorUpscaler(linf_lp([8, 16]), CPU, "t")
    monkeypatch.setattr(prior_engine, "available_memory", lambda _device: 300 << 20)
    roomy = upscaler.window_side(4.0)
    monkeypatch.setattr(prior_engine, "available_memory", lambda _device: 200 << 20)
    short = upscaler.window_side(4.0)
    upscaler._grid_memory = torch.empty(100 << 20, dtype=torch.uint8)
    assert upscaler.window_side(4.0) == roomy > short
