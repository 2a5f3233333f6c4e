"""HCFlow through the upscale engine and the CLI: heat, seeds, halo tiles and their tolerance, the guard, x4 (or x8)
only unless resampled, and `flowsr eval` with its inf rate and diversity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flowsr_cli.engine import blended
from flowsr_cli.engine.blended import gaussian_latents, plan_blend_axis
from flowsr_cli.engine.memory import choose_tile
from flowsr_cli.engine.resize import resize
from flowsr_cli.engine.upscaler import UpscaleReport, fixed_scale
from flowsr_cli.errors import UsageError
from flowsr_cli.families.hcflow.engine import DEFAULT_HALO, HCFlowUpscaler
from flowsr_cli.families.hcflow.network import HCFlowSR
from flowsr_cli.families.importing import convert_original
from flowsr_cli.families.upscalers import UpscalerRequest, create_upscaler
from flowsr_cli.io.sizing import Size
from tests.conftest import SHARED, CliInvoker
from tests.families.hcflow.original_hcflow import tamed_original
from tests.families.hcflow.test_hcflow import TINY, tiny_model
from tests.families.hcflow.test_import_hcflow import X4, X8
from tests.families.srflow.test_srflow_engine import photo_pair

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
TILED_TOLERANCE = 1e-4
"""Largest |tiled - untiled| allowed with the default halo (16) and 16-pixel tiles on the tiny models (LR 40x56).
Measured: 1.3e-6 at heat 0 and 8.8e-6 at heat 0.8 (tiny), 1.0e-6 and 2.4e-6 (the imported tamed original), 6e-7
and 1.9e-6 (its x8); without a halo 0.3 to 1.1."""


@pytest.fixture(scope="module")
def model() -> HCFlowSR:
    return tiny_model(TINY)


@pytest.fixture(scope="module")
def lr() -> torch.Tensor:
    return photo_pair()[1]  # 40 x 56


def upscaler(model: HCFlowSR, temperature: float, **options: object) -> HCFlowUpscaler:
    return HCFlowUpscaler(model, CPU, torch.float32, temperature, "tiny", **options)  # type: ignore[arg-type]


def collect(
    up: HCFlowUpscaler, lr: torch.Tensor, seeds: list[int], size: Size | None = None
) -> tuple[list, UpscaleReport]:
    """Every seed's output, checking that each output pixel reaches the sink exactly once."""
    scale = up.fixed_scale
    size = size or Size(scale * lr.shape[-1], scale * lr.shape[-2])
    images = [torch.full((1, 3, size.height, size.width), float("nan")) for _ in seeds]
    visits = torch.zeros(len(seeds), size.height, size.width, dtype=torch.int32)

    def sink(sample: int, rows: range, columns: range, tile: torch.Tensor) -> None:
        images[sample][..., rows.start : rows.stop, columns.start : columns.stop] = tile
        visits[sample, rows.start : rows.stop, columns.start : columns.stop] += 1

    report = up.upscale(lr, size, sink, seeds)
    assert bool((visits == 1).all())
    return images, report


def test_untiled_output_is_the_models_sample_at_heat_temperature(model: HCFlowSR, lr: torch.Tensor) -> None:
    (first, second), report = collect(upscaler(model, 0.8, tile=0), lr, [1, 2])
    assert report.tiles == 1 and report.tile_size == 0 and report.guarded_tiles == 0
    with torch.no_grad():
        features = model.encode(lr)
        shapes = model.latent_shapes(features)
        assert shapes == [(21, 40, 56), (6, 80, 112)]
        latents = gaussian_latents(shapes, (40, 56), 1, (0, 0), (40, 56))
        assert torch.equal(first, model.sample(features, 0.8, latents=latents))
        (mode_a, mode_b), _ = collect(upscaler(model, 0.0, tile=0), lr, [1, 2])
        assert torch.equal(mode_a, mode_b) and torch.equal(mode_a, model.sample(features, 0.0))
    assert torch.equal(collect(upscaler(model, 0.8, tile=0), lr, [2])[0][0], second)
    assert (first - second).abs().max() > 0.05
    up = upscaler(model, 0.8)
    assert up.stochastic and up.gaussian and not upscaler(model, 0.0).stochastic
    assert up.fixed_scale == 4 and up.grid_period == 2 and up.halo == DEFAULT_HALO == 16


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_tiled_output_matches_untiled_within_tolerance(model: HCFlowSR, lr: torch.Tensor, temperature: float) -> None:
    whole = collect(upscaler(model, temperature, tile=0), lr, [3])[0][0]
    (tiled,), report = collect(upscaler(model, temperature, tile=16), lr, [3])
    assert report.tiles == 3 * 4 and report.tile_size == 16
    difference = (tiled - whole).abs()
    assert difference.max() < TILED_TOLERANCE and difference.mean() < TILED_TOLERANCE / 100
    (with_crops,), _ = collect(upscaler(model, temperature, tile=16, tile_pad=0), lr, [3])
    assert (with_crops - whole).abs().max() > 1000 * TILED_TOLERANCE, "the halo is what keeps tiles close"


def test_an_x8_model_upscales_by_8(tmp_path: Path, lr: torch.Tensor) -> None:
    torch.save(tamed_original(**X8, seed=1).state_dict(), tmp_path / "SR_CelebA_X8_HCFlow.pth")
    model = convert_original(tmp_path / "SR_CelebA_X8_HCFlow.pth")
    assert isinstance(model, HCFlowSR)
    small = lr[..., :24, :32]
    (whole,), _ = collect(upscaler(model, 0.0, tile=0), small, [0])
    with torch.no_grad():
        assert torch.equal(whole, model.sample(model.encode(small), 0.0))
    (tiled,), report = collect(upscaler(model, 0.0, tile=16), small, [0])
    assert whole.shape == (1, 3, 192, 256) and report.tiles == 4
    assert (tiled - whole).abs().max() < TILED_TOLERANCE
    with pytest.raises(UsageError, match="tiny is a fixed ×8 model: use --scale 8"):
        collect(upscaler(model, 0.0), small, [0], Size(128, 96))


def fault_above(model: HCFlowSR, monkeypatch: pytest.MonkeyPatch, limit: float) -> None:
    """Make the coarsest conditional flow's inverse return inf when its heat-scaled latent exceeds ``limit``."""
    cond_flow = model.flow_levels[-1].cond_flow
    original = cond_flow.inverse

    def inverse(eps: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        output = original(eps, features)
        return output if eps.abs().max() <= limit else torch.full_like(output, float("inf"))

    monkeypatch.setattr(cond_flow, "inverse", inverse)


@pytest.mark.robustness
def test_guard_retries_exploding_tiles_then_falls_back_to_bicubic(
    model: HCFlowSR, lr: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    honest = collect(upscaler(model, 0.8, tile=24), lr, [5])[0][0]
    real_latents = blended.gaussian_latents

    def outlier_in_the_top_row(*args: object) -> list[torch.Tensor]:
        latents = real_latents(*args)  # type: ignore[arg-type]
        if args[3][0] == 0:  # type: ignore[index]
            latents[0][:, :, 0] = 10.0
        return latents

    monkeypatch.setattr(blended, "gaussian_latents", outlier_in_the_top_row)
    with monkeypatch.context() as patch:
        fault_above(model, patch, 6.0)  # heat 0.8 x 10 explodes, 0.4 x 10 does not
        (guarded,), report = collect(upscaler(model, 0.8, tile=24), lr, [5])
        (raw,), unguarded = collect(upscaler(model, 0.8, tile=24, guard=False), lr, [5])
    rows = plan_blend_axis(lr.shape[-2], 24, DEFAULT_HALO, 1, 4)
    assert [row.crop.start for row in rows] == [0, 8] and report.tiles == 2 * 3
    assert report.guarded_tiles == 3, "the top row of tiles"
    assert torch.isfinite(guarded).all() and not torch.allclose(guarded[..., :8, :], honest[..., :8, :])
    assert torch.equal(guarded[..., rows[0].span.stop :, :], honest[..., rows[0].span.stop :, :])
    assert unguarded.guarded_tiles == 0 and not torch.isfinite(raw[..., :8, :]).any()
    with monkeypatch.context() as patch:
        fault_above(model, patch, -1.0)  # every inverse explodes, even at heat 0
        (output,), report = collect(upscaler(model, 0.8, tile=16), lr, [0])
    assert report.guarded_tiles == report.tiles == 12
    assert torch.allclose(output, resize(lr, (160, 224)), atol=1e-5)


def test_bfloat16_features_stay_close(model: HCFlowSR, lr: torch.Tensor) -> None:
    exact = collect(upscaler(model, 0.0, tile=16), lr, [0])[0][0]
    (half,), _ = collect(HCFlowUpscaler(model, CPU, torch.bfloat16, 0.0, "tiny", tile=16), lr, [0])
    assert torch.isfinite(half).all() and (half - exact).abs().mean() < 0.02


def test_auto_tile_is_estimated_from_the_channel_counts(model: HCFlowSR, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blended, "available_memory", lambda device: 2 * 10**8)
    tiny = upscaler(model, 0.5)
    per_pixel = tiny._bytes_per_input_pixel()
    assert tiny._tile_size() == choose_tile(2 * 10**8, per_pixel, DEFAULT_HALO)
    with torch.device("meta"):
        paper = upscaler(HCFlowSR(), 0.5)
    assert 15_000 < paper._bytes_per_input_pixel() < 30_000, "measured: 21-26 kB per LR pixel at the paper size"
    assert paper._tile_size() < tiny._tile_size()


def import_tiny(run_cli: CliInvoker, folder: Path) -> str:
    """Import a tiny original-layout x4 HCFlow as ``hc`` and write a 48 x 40 photo crop ``x.png``; returns its path."""
    torch.save(tamed_original(**X4, seed=1).state_dict(), folder / "SR_DF2K_X4_HCFlow.pth")
    result = run_cli("models", "import", str(folder / "SR_DF2K_X4_HCFlow.pth"), "--name", "hc")
    assert result.exit_code == 0, result.output
    Image.open(SHARED / "data/eval/Set5/baby.png").crop((200, 200, 248, 240)).save(folder / "x.png")
    return str(folder / "x.png")


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


def test_cli_upscales_with_heat_seeds_samples_and_tiles(run_cli: CliInvoker, tmp_path: Path) -> None:
    image = import_tiny(run_cli, tmp_path)

    def upscale(name: str, *options: str) -> dict[str, object]:
        result = run_cli(
            "upscale", image, "--model", "hc", "--scale", "4", "-o", str(tmp_path / name), "--json", *options
        )
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout.splitlines()[-1])

    report = upscale("mode.png", "--temperature", "0", "--tile", "0")
    assert report["size_out"] == [192, 160] and report["tiles"] == 1 and report["guarded_tiles"] == 0
    upscale("mode_again.png", "--temperature", "0", "--tile", "0", "--seed", "9")
    assert np.array_equal(pixels(tmp_path / "mode.png"), pixels(tmp_path / "mode_again.png"))
    assert upscale("tiled.png", "--temperature", "0", "--tile", "16")["tiles"] == 3 * 3
    assert np.abs(pixels(tmp_path / "tiled.png") - pixels(tmp_path / "mode.png")).max() <= 1
    upscale("a.png", "--temperature", "0.9", "--seed", "3")
    upscale("b.png", "--temperature", "0.9", "--seed", "3")
    assert np.array_equal(pixels(tmp_path / "a.png"), pixels(tmp_path / "b.png"))
    assert not np.array_equal(pixels(tmp_path / "a.png"), pixels(tmp_path / "mode.png"))
    result = run_cli(
        "upscale", image, "--model", "hc", "--scale", "4", "-t", "0.9", "--samples", "2", "-o", str(tmp_path / "s.png")
    )
    assert result.exit_code == 0, result.output
    first, second = pixels(tmp_path / "s_s0.png"), pixels(tmp_path / "s_s1.png")
    assert first.shape == (160, 192, 3) and np.abs(first - second).mean() > 1


def test_cli_resamples_other_scales_only_when_allowed(run_cli: CliInvoker, tmp_path: Path) -> None:
    image = import_tiny(run_cli, tmp_path)
    refused = run_cli("upscale", image, "--model", "hc", "--scale", "3", "-o", str(tmp_path / "no.png"))
    assert refused.exit_code == 2 and not (tmp_path / "no.png").exists()
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "hc is a fixed ×4 model: use --scale 4" in lines[0], lines
    out = tmp_path / "resampled.png"
    result = run_cli("upscale", image, "--model", "hc", "--scale", "3.5", "--allow-resample", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (168, 140)
    path = run_cli("models", "path", "hc").stdout.strip()
    wired = create_upscaler(UpscalerRequest(path, device="cpu", temperature=0.7))
    assert isinstance(wired, HCFlowUpscaler), "an imported model is not back-projected under auto"
    assert wired.temperature == 0.7 and fixed_scale(wired) == 4 and wired.stochastic


def test_eval_scores_hcflow_per_heat_with_inf_rate_and_diversity(
    run_cli: CliInvoker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard is off in evaluation, so a model whose finest prior has an infinite log-std counts as exploding at
    every heat (at heat 0, exp(inf) x 0 is NaN, as in the original)."""
    monkeypatch.setenv("FLOWSR_BACKBONE_DIR", str(SHARED / "weights"))
    import_tiny(run_cli, tmp_path)
    state = tamed_original(**X4, seed=1).state_dict()
    state["flow.level0_condFlow.f.logs"][1] = float("inf")  # channel 1 is the log-std of the first split channel
    torch.save(state, tmp_path / "broken.pth")
    assert run_cli("models", "import", str(tmp_path / "broken.pth"), "--name", "broken").exit_code == 0
    folder = tmp_path / "Set5"  # crops of Set5's first two images, so that the test takes seconds
    folder.mkdir()
    for name in ("baby", "bird"):
        Image.open(SHARED / f"data/eval/Set5/{name}.png").crop((64, 64, 192, 160)).save(folder / f"{name}.png")
    out = tmp_path / "r.json"
    result = run_cli(
        "eval", str(folder), "--model", "hc", "--model", "broken", "--scales", "4",
        "--temperatures", "0,0.9", "--runs", "2", "--max-images", "1", "--baseline", "none", "--json", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    mode, sampled, broken_mode, broken_sampled = json.loads(out.read_text())["results"]
    assert (mode["prior"], mode["temperature"], mode["runs"], mode["diversity"]) == ("gaussian", 0.0, 1, None)
    assert (sampled["temperature"], sampled["runs"]) == (0.9, 2) and sampled["diversity"] > 0
    assert mode["inf_rate"] == sampled["inf_rate"] == 0.0 and mode["images"] == 1
    assert broken_mode["model"] == "broken" and broken_mode["inf_rate"] == broken_sampled["inf_rate"] == 1.0
