"""SRFlow-LP: learned per-level priors on a frozen SRFlow (shapes, standardisation, init, freezing, files, training)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flowsr_cli.families.model_file import load_model, save_model
from flowsr_cli.families.registry import ModelSpecError, make
from flowsr_cli.families.srflow.network import SRFlow
from flowsr_cli.families.srflow.prior import SRFlowLP, standardise
from tests.conftest import REPO_ROOT, SHARED

TINY_FLOW = {
    "name": "srflow",
    "args": {"rrdb_blocks": 2, "rrdb_channels": 8, "growth": 4, "feature_blocks": [0, 1], "steps": 2, "hidden": 8},
}
TINY_LATENT = {"branch_channels": 8, "growth": 8, "widths": [8, 16]}


pytestmark = pytest.mark.usefixtures("one_thread")


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def nontrivial_flow(seed: int = 0) -> SRFlow:
    """A tiny SRFlow with initialised actnorms and random (not zero) output convs, in eval mode."""
    torch.manual_seed(seed)
    flow = make(TINY_FLOW)
    assert isinstance(flow, SRFlow)
    flow.train()
    with torch.no_grad():
        flow.log_prob(rand(2, 3, 32, 32, seed=seed + 1), flow.encode(rand(2, 3, 8, 8, seed=seed + 2)))
        for layer in flow.modules():
            if isinstance(layer, nn.Conv2d) and not layer.weight.any():
                layer.weight.normal_(0.0, 0.05)
    return flow.eval()


def tiny_srflow_lp(seed: int = 0) -> SRFlowLP:
    flow = nontrivial_flow(seed)
    model = make({"name": "srflow-lp", "args": {"flow": flow.spec, "latent": TINY_LATENT}})
    assert isinstance(model, SRFlowLP)
    model.flow.load_state_dict(flow.state_dict())
    return model.eval()


def randomise_heads(model: SRFlowLP) -> None:
    """Give the zero-initialised heads weights, as training would."""
    with torch.no_grad():
        for prior in model.priors:
            prior.head.weight.normal_(0.0, 0.1)


@pytest.mark.parametrize("lr_size", [(6, 8), (5, 7)])
def test_predicted_latents_and_outputs_have_the_flow_shapes(lr_size: tuple[int, int]) -> None:
    model = tiny_srflow_lp()
    randomise_heads(model)
    lr = rand(2, 3, *lr_size, seed=3)
    with torch.no_grad():
        features = model.encode(lr)
        z_hat = model.predict_latents(features, lr)
        output = model(lr)
    assert [tuple(z.shape[1:]) for z in z_hat] == model.flow.latent_shapes(features)
    assert [z.shape[0] for z in z_hat] == [2, 2]
    assert output.shape == (2, 3, 4 * lr_size[0], 4 * lr_size[1]) and torch.isfinite(output).all()


def test_an_untrained_prior_gives_the_flows_temperature_zero_output() -> None:
    model = tiny_srflow_lp()
    lr = rand(1, 3, 6, 6, seed=4)
    with torch.no_grad():
        features = model.encode(lr)
        assert all(not z.any() for z in model.predict_latents(features, lr))
        assert torch.equal(model(lr), model.flow.sample(features, temperature=0.0))


def test_initial_latents_are_the_standardised_latents_of_the_bilinear_upsampling() -> None:
    model = tiny_srflow_lp()
    lr = rand(2, 3, 6, 8, seed=5)
    with torch.no_grad():
        features = model.encode(lr)
        upsampled = F.interpolate(lr, size=(24, 32), mode="bilinear", align_corners=False)
        raw = model.flow.log_prob(upsampled, features).latents
        initial = model.initial_latents(features, lr)
    for z, z_raw in zip(initial, raw):
        assert torch.allclose(z.mean(dim=1), torch.zeros(()), atol=1e-5)
        assert torch.allclose(z.std(dim=1, unbiased=False), torch.ones(()), atol=1e-4)
        assert torch.allclose(z, standardise(z_raw))
    z = torch.randn(2, 6, 3, 4)
    scale, shift = torch.rand(2, 1, 3, 4) + 0.5, torch.randn(2, 1, 3, 4)
    assert torch.allclose(standardise(scale * z + shift), standardise(z), atol=1e-5)


def test_a_training_step_changes_only_the_priors_and_the_flow_stays_in_eval_mode() -> None:
    model = tiny_srflow_lp().train()
    assert model.training and not any(module.training for module in model.flow.modules())
    assert not any(parameter.requires_grad for parameter in model.flow.parameters())
    lr, target = rand(2, 3, 6, 6, seed=6), rand(2, 3, 24, 24, seed=7)
    frozen_before = {name: value.clone() for name, value in model.flow.state_dict().items()}
    priors_before = {name: value.clone() for name, value in model.priors.named_parameters()}
    optimiser = torch.optim.Adam([parameter for parameter in model.parameters() if parameter.requires_grad], lr=1e-2)
    for _ in range(2):
        loss = F.l1_loss(model(lr), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert all(parameter.grad is None for parameter in model.flow.parameters())
    for name, value in model.flow.state_dict().items():
        assert torch.equal(value, frozen_before[name]), name
    for name, value in model.priors.named_parameters():
        assert not torch.equal(value, priors_before[name]), name
    model.eval()
    assert not any(module.training for module in model.modules())


def test_save_then_load_gives_bit_identical_outputs(tmp_path: Path) -> None:
    model = tiny_srflow_lp().train()
    randomise_heads(model)
    lr = rand(2, 3, 5, 7, seed=8)
    with torch.no_grad():
        model(lr)  # moves the BatchNorm running statistics away from their initial values
    model.eval()
    save_model(model, tmp_path / "srflow-lp.safetensors")
    loaded = load_model(tmp_path / "srflow-lp.safetensors")
    assert isinstance(loaded, SRFlowLP) and loaded.spec == model.spec
    assert not any(parameter.requires_grad for parameter in loaded.flow.parameters())
    with torch.no_grad():
        assert torch.equal(model(lr), loaded(lr))


def test_prior_training_steps_lower_the_loss_on_a_fixed_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    from flowsr_cli.train.objectives import SRFlowPriorObjective
    from flowsr_cli.train.perceptual import VGGPerceptualLoss

    monkeypatch.setenv("FLOWSR_BACKBONE_DIR", str(SHARED / "weights"))
    model = tiny_srflow_lp().train()
    objective = SRFlowPriorObjective(model, VGGPerceptualLoss(torch.device("cpu")), latent_weight=0.1).train()
    optimiser = torch.optim.Adam([parameter for parameter in objective.parameters() if parameter.requires_grad], 3e-3)
    hr = rand(2, 3, 32, 32, seed=9) * 2 - 1
    lr = F.avg_pool2d(hr, 4)
    losses = []
    for step in range(12):
        result = objective(lr, hr, step, torch.Generator())
        optimiser.zero_grad()
        result["loss"].backward()
        optimiser.step()
        losses.append(result["loss"].item())
    assert set(result) == {"vgg", "perceptual", "l1", "latent", "loss"}
    assert result["loss"].item() == pytest.approx((result["vgg"] + 0.1 * result["latent"]).item())
    assert sum(losses[-3:]) / 3 < 0.9 * losses[0], losses


def test_bad_specs_are_rejected() -> None:
    with pytest.raises(ModelSpecError, match="'srflow' spec"):
        make({"name": "srflow-lp", "args": {"flow": {"name": "lp-latent", "args": {}}, "latent": {}}})
    with pytest.raises(ModelSpecError, match="depth"):
        make({"name": "srflow-lp", "args": {"flow": TINY_FLOW, "latent": {"depth": 3}}})


def test_paper_size_priors() -> None:
    torch.manual_seed(0)
    model = make({"name": "srflow-lp", "args": {"flow": {"name": "srflow", "args": {}}, "latent": {}}})
    assert isinstance(model, SRFlowLP) and len(model.priors) == 2
    assert sum(parameter.numel() for parameter in model.priors.parameters()) == pytest.approx(10.1e6, rel=0.05)


def test_tiles_start_on_the_unets_pooling_grid_of_every_level() -> None:
    model = tiny_srflow_lp()
    # latent levels 0 (2x LR) and 2 (LR/2) with UNets pooling by 2: LR offsets in multiples of 1 and 4.
    assert model.levels == [0, 2] and [prior.unet.multiple for prior in model.priors] == [2, 2]
    assert model.size_multiple == 4


def test_the_bundled_srflow_lp_tiles_like_its_whole_image() -> None:
    """With the auto halo and the prior's grid, tiles of the trained model match one untiled pass."""
    from PIL import Image as PILImage

    from flowsr_cli.families.srflow.engine import SRFlowUpscaler
    from flowsr_cli.io.sizing import Size
    from tests.families.srflow.test_srflow_engine import collect

    model = load_model(REPO_ROOT / "flowsr_cli/weights/srflow-lp.safetensors").float()
    photo = sorted((SHARED / "data/eval/B100").iterdir())[3]
    with PILImage.open(photo) as image:
        pixels = image.convert("RGB").resize((136, 32), PILImage.Resampling.BICUBIC).tobytes()
    lr = torch.frombuffer(bytearray(pixels), dtype=torch.uint8).view(32, 136, 3).permute(2, 0, 1)[None] / 255

    def upscale(tile: int) -> tuple[torch.Tensor, int]:
        upscaler = SRFlowUpscaler(model.flow, torch.device("cpu"), torch.float32, 0.0, "lp", tile, predictor=model)
        with torch.no_grad():
            (output,), report = collect(upscaler, lr, [0], Size(544, 128))
        return output, report.tiles

    (whole, one), (tiled, tiles) = upscale(0), upscale(32)
    assert one == 1 and tiles == 5
    assert (tiled - whole).abs().max() < 2e-4
