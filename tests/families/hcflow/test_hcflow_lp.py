"""HCFlow-LP: learned per-level priors on a frozen HCFlow (the untrained prior's heat-0 output, latents predicted
inside the inverse, freezing, files), its tiled engine, and `upscale`/`eval` through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from flowsr_cli.engine.consistent import ConsistentUpscaler
from flowsr_cli.families.common.level_prior import standardise
from flowsr_cli.families.hcflow.engine import HCFlowUpscaler
from flowsr_cli.families.hcflow.prior import PREDICTOR_HALO, HCFlowLP
from flowsr_cli.families.hcflow.prior_engine import HCFlowLPUpscaler
from flowsr_cli.families.model_file import load_model, save_model
from flowsr_cli.families.registry import ModelSpecError, make
from flowsr_cli.families.upscalers import UpscalerRequest, create_upscaler
from tests.conftest import SHARED, CliInvoker
from tests.families.hcflow.test_hcflow import TINY, tiny_model
from tests.families.hcflow.test_hcflow_engine import collect
from tests.families.srflow.test_srflow_engine import photo_pair

TINY_LATENT = {"branch_channels": 8, "growth": 8, "widths": [8, 16]}
CPU = torch.device("cpu")
TILED_TOLERANCE = 1e-5
"""Largest |tiled - untiled| allowed with the default halo (32) and 16-pixel tiles (LR 40x56) on the tiny prior with
heads giving latents of std 0.5. Measured: 3.6e-7 (halo 16: 3.8e-4; halo 2: 0.19)."""

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_hcflow_lp(seed: int = 0) -> HCFlowLP:
    flow = tiny_model(TINY, seed)
    model = make({"name": "hcflow-lp", "args": {"flow": flow.spec, "latent": TINY_LATENT}})
    assert isinstance(model, HCFlowLP)
    model.flow.load_state_dict(flow.state_dict())
    return model.eval()


def randomise_heads(model: HCFlowLP, lr: torch.Tensor, std: float = 0.5) -> None:
    """Give the zero-initialised heads weights, as training would, scaled so that each level's latents on ``lr``
    have about the standard deviation ``std``."""
    torch.manual_seed(1)
    with torch.no_grad():
        for prior in model.priors:
            prior.head.weight.normal_(0.0, 1.0)
        latents = model.predict_latents(model.encode(lr), lr)
        for prior, latent in zip(model.priors, latents):
            prior.head.weight.mul_(std / latent.std())


@pytest.fixture(scope="module")
def lr() -> torch.Tensor:
    return photo_pair()[1]  # 40 x 56


@pytest.fixture(scope="module")
def trained(lr: torch.Tensor) -> HCFlowLP:
    """A tiny HCFlow-LP whose heads predict latents of std 0.5 on ``lr``."""
    model = tiny_hcflow_lp()
    randomise_heads(model, lr)
    return model


def test_an_untrained_prior_gives_the_flows_heat_zero_output(lr: torch.Tensor) -> None:
    model = tiny_hcflow_lp()
    with torch.no_grad():
        features = model.encode(lr)
        assert all(not latent.any() for latent in model.predict_latents(features, lr))
        assert torch.equal(model(lr), model.flow.sample(features, 0.0))


def test_predicted_latents_are_the_ones_the_output_is_rendered_from(trained: HCFlowLP, lr: torch.Tensor) -> None:
    with torch.no_grad():
        features = trained.encode(lr)
        latents, output = trained.predict_and_render(features, lr)
        heat_zero = trained.flow.sample(features, 0.0)
        assert [tuple(latent.shape[1:]) for latent in latents] == trained.flow.latent_shapes(features)
        assert all(0.4 < float(latent.std()) < 0.6 for latent in latents), "the finer level's condition moved too"
        assert torch.equal(trained.render_latents(features, latents), output)
        assert torch.equal(trained(lr), output)
    assert output.shape == (1, 3, 160, 224) and torch.isfinite(output).all()
    assert (output - heat_zero).abs().max() > 0.1, "the predicted latents move the output away from heat 0"


def test_initial_latents_are_the_standardised_latents_of_the_bilinear_upsampling(lr: torch.Tensor) -> None:
    model = tiny_hcflow_lp()
    small = lr[..., :6, :10]
    with torch.no_grad():
        upsampled = F.interpolate(small, size=(24, 40), mode="bilinear", align_corners=False)
        raw = model.flow.to_latents(upsampled).latents
        initial = model.initial_latents(small)
    assert [tuple(z.shape[1:]) for z in initial] == [(21, 6, 10), (6, 12, 20)]
    for z, z_raw in zip(initial, raw):
        assert torch.allclose(z, standardise(z_raw))
        assert torch.allclose(z.std(dim=1, unbiased=False), torch.ones(()), atol=1e-4)


def test_a_training_step_changes_only_the_priors_through_the_frozen_flow(lr: torch.Tensor) -> None:
    model = tiny_hcflow_lp().train()
    assert model.training and not any(module.training for module in model.flow.modules())
    assert not any(parameter.requires_grad for parameter in model.flow.parameters())
    crop = lr[..., :8, :8].expand(2, -1, -1, -1)
    target = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    frozen = {name: value.clone() for name, value in model.flow.state_dict().items()}
    heads = [prior.head.weight.clone() for prior in model.priors]
    optimiser = torch.optim.Adam([parameter for parameter in model.parameters() if parameter.requires_grad], lr=1e-2)
    loss = F.l1_loss(model(crop), target)
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    assert all(parameter.grad is None for parameter in model.flow.parameters())
    assert all(torch.equal(value, frozen[name]) for name, value in model.flow.state_dict().items())
    assert all(not torch.equal(prior.head.weight, head) for prior, head in zip(model.priors, heads))


def test_save_then_load_gives_bit_identical_outputs(trained: HCFlowLP, lr: torch.Tensor, tmp_path: Path) -> None:
    save_model(trained, tmp_path / "hcflow-lp.safetensors")
    loaded = load_model(tmp_path / "hcflow-lp.safetensors")
    assert isinstance(loaded, HCFlowLP) and loaded.spec == trained.spec
    assert not any(parameter.requires_grad for parameter in loaded.flow.parameters())
    with torch.no_grad():
        assert torch.equal(trained(lr[..., :8, :12]), loaded(lr[..., :8, :12]))


def test_bad_specs_are_rejected() -> None:
    with pytest.raises(ModelSpecError, match="'hcflow' spec"):
        make({"name": "hcflow-lp", "args": {"flow": {"name": "lp-latent", "args": {}}, "latent": {}}})
    with pytest.raises(ModelSpecError, match="depth"):
        make({"name": "hcflow-lp", "args": {"flow": {"name": "hcflow", "args": TINY}, "latent": {"depth": 3}}})


def test_tiles_start_on_the_unets_pooling_grid_of_every_level() -> None:
    """UNets pooling by 8 on the LR grid (coarsest level) and on 2x the LR (finest): LR offsets in multiples of 8."""
    model = make({"name": "hcflow-lp", "args": {"flow": {"name": "hcflow", "args": TINY}, "latent": {}}})
    assert isinstance(model, HCFlowLP) and [prior.unet.multiple for prior in model.priors] == [8, 8]
    assert model.size_multiple == 8 and model.scale == 4 and model.halo == PREDICTOR_HALO == 32


def lp_upscaler(model: HCFlowLP, **options: object) -> HCFlowLPUpscaler:
    return HCFlowLPUpscaler(model.flow, CPU, torch.float32, 0.9, "lp", predictor=model, **options)  # type: ignore[arg-type]


def test_the_engine_renders_the_predicted_latents_and_tiles_within_tolerance(
    trained: HCFlowLP, lr: torch.Tensor
) -> None:
    whole_upscaler = lp_upscaler(trained, tile=0)
    assert not whole_upscaler.stochastic and whole_upscaler.halo == PREDICTOR_HALO
    (whole,), report = collect(whole_upscaler, lr, [0])
    with torch.no_grad():
        assert report.tiles == 1 and torch.equal(whole, trained(lr)), "the temperature is not used"
    (tiled,), report = collect(lp_upscaler(trained, tile=16), lr, [0])
    assert report.tiles == 3 * 4
    difference = (tiled - whole).abs()
    assert difference.max() < TILED_TOLERANCE and difference.mean() < TILED_TOLERANCE / 100
    (short,), _ = collect(lp_upscaler(trained, tile=16, tile_pad=0), lr, [0])
    assert (short - whole).abs().max() > 1000 * TILED_TOLERANCE, "the halo is what keeps tiles close"


def test_the_guard_renders_the_latents_again_at_lower_heat(
    trained: HCFlowLP, lr: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the prediction's own inverse explodes, the guard's retries render the predicted latents at halved heats."""
    small = lr[..., :8, :8]
    real = trained.predict_and_render

    def exploding(features: object, crop: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        latents, output = real(features, crop)  # type: ignore[arg-type]
        return latents, torch.full_like(output, float("inf"))

    monkeypatch.setattr(trained, "predict_and_render", exploding)
    (output,), report = collect(lp_upscaler(trained, tile=0), small, [0])
    with torch.no_grad():
        features = trained.encode(small)
        latents = real(features, small)[0]
        expected = trained.flow.sample(features, 0.5, latents=latents)
    assert report.guarded_tiles == 1 and torch.equal(output, expected)


def test_create_upscaler_wires_the_prior_or_the_flow_alone(trained: HCFlowLP, tmp_path: Path) -> None:
    save_model(trained, tmp_path / "lp.safetensors")
    learned = create_upscaler(UpscalerRequest(str(tmp_path / "lp.safetensors"), device="cpu", consistency="off"))
    assert isinstance(learned, HCFlowLPUpscaler) and isinstance(learned.predictor, HCFlowLP)
    assert learned.model is learned.predictor.flow and not learned.stochastic
    projected = create_upscaler(UpscalerRequest(str(tmp_path / "lp.safetensors"), device="cpu"))
    assert isinstance(projected, ConsistentUpscaler), "a model flowsr trained is projected under auto"
    gaussian = create_upscaler(
        UpscalerRequest(str(tmp_path / "lp.safetensors"), device="cpu", prior="gaussian", temperature=0.7)
    )
    gaussian = gaussian.inner if isinstance(gaussian, ConsistentUpscaler) else gaussian
    assert type(gaussian) is HCFlowUpscaler and gaussian.predictor is None and gaussian.temperature == 0.7


def write_photo(folder: Path) -> Path:
    Image.open(SHARED / "data/eval/Set5/baby.png").crop((200, 200, 248, 240)).save(folder / "x.png")
    return folder / "x.png"


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


def test_cli_upscales_with_the_learned_prior_by_default_and_the_flow_under_prior_gaussian(
    run_cli: CliInvoker, trained: HCFlowLP, tmp_path: Path
) -> None:
    save_model(trained, tmp_path / "lp.safetensors")
    save_model(trained.flow, tmp_path / "flow.safetensors")
    image = str(write_photo(tmp_path))

    def upscale(model: str, name: str, *options: str) -> dict[str, object]:
        result = run_cli("upscale", image, "--model", str(tmp_path / model), "--scale", "4", "--consistency", "off",
                         "-o", str(tmp_path / name), "--json", *options)  # fmt: skip
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout.splitlines()[-1])

    report = upscale("lp.safetensors", "learned.png")
    assert report["size_out"] == [192, 160] and report["guarded_tiles"] == 0
    upscale("lp.safetensors", "tiled.png", "--tile", "8")
    upscale("lp.safetensors", "gaussian.png", "--prior", "gaussian", "--temperature", "0")
    upscale("flow.safetensors", "flow.png", "--temperature", "0")
    learned = pixels(tmp_path / "learned.png")
    assert np.abs(pixels(tmp_path / "tiled.png") - learned).max() <= 1
    assert np.array_equal(pixels(tmp_path / "gaussian.png"), pixels(tmp_path / "flow.png"))
    assert np.abs(learned - pixels(tmp_path / "flow.png")).mean() > 1, "the prior's latents change the image"


def test_eval_scores_the_learned_prior(
    run_cli: CliInvoker, trained: HCFlowLP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWSR_BACKBONE_DIR", str(SHARED / "weights"))
    save_model(trained, tmp_path / "lp.safetensors")
    folder = tmp_path / "Set5"
    folder.mkdir()
    Image.open(SHARED / "data/eval/Set5/baby.png").crop((64, 64, 192, 160)).save(folder / "baby.png")
    out = tmp_path / "r.json"
    result = run_cli("eval", str(folder), "--model", str(tmp_path / "lp.safetensors"), "--scales", "4",
                     "--baseline", "none", "--json", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    (scored,) = json.loads(out.read_text())["results"]
    assert scored["prior"] == "learned" and scored["images"] == 1 and scored["inf_rate"] == 0.0
    assert 5 < scored["psnr_y"] < 60
