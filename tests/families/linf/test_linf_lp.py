"""LINF-LP: the learned-prior latent module on a frozen LINF (shapes, invertibility, training, files)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from flowsr_cli.engine.resize import resize
from flowsr_cli.families.common.coords import cell_size, grid, patch_centres, unfold_patches
from flowsr_cli.families.common.latent import LatentModule, lr_positions
from flowsr_cli.families.linf.prior import LINFLP, LatentFade
from flowsr_cli.families.model_file import load_model, save_model
from flowsr_cli.families.registry import ModelSpecError, make
from flowsr_cli.io.sizing import Size, SizeRequest

TINY_FLOW = {
    "name": "linf",
    "args": {
        "encoder": {"name": "edsr-baseline", "args": {"channels": 8, "blocks": 1}},
        "patch_size": 3,
        "hidden": 16,
        "mlp_layers": 2,
        "flow_layers": 4,
    },
}
TINY_LATENT_ARGS = {"branch_channels": 8, "growth": 8, "widths": [16, 32, 32, 32]}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_linf_lp(patch_size: int = 3, seed: int = 0) -> LINFLP:
    torch.manual_seed(seed)
    flow = {"name": "linf", "args": {**TINY_FLOW["args"], "patch_size": patch_size}}
    latent = {"name": "lp-latent", "args": {"dim": 3 * patch_size**2, **TINY_LATENT_ARGS}}
    model = make({"name": "linf-lp", "args": {"flow": flow, "latent": latent}})
    assert isinstance(model, LINFLP)
    return model.eval()


def output_size(lr: torch.Tensor, scale: float) -> tuple[int, int]:
    size = SizeRequest(scale=scale).target(Size(lr.shape[-1], lr.shape[-2]))
    return size.height, size.width


def random_image(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def patch_conditions(model: LINFLP, features: object, size: tuple[int, int], batch: int) -> torch.Tensor:
    """The flow conditioning of every latent cell of an output of ``size``, flattened: (B * Hp * Wp, C)."""
    points = grid(patch_centres(size[0], model.patch_size), patch_centres(size[1], model.patch_size))
    condition = model.flow.condition(features, points.expand(batch, -1, -1), cell_size(*size))  # type: ignore[arg-type]
    return condition.flatten(0, 1)


def grid_vectors(latents: torch.Tensor) -> torch.Tensor:
    """(B, D, Hp, Wp) -> (B * Hp * Wp, D), row-major per image."""
    return latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])


@torch.no_grad()
@pytest.mark.parametrize(("patch_size", "lr_size"), [(3, (9, 13)), (3, (10, 7)), (1, (10, 7))])
def test_latent_grids_and_outputs_have_the_requested_sizes(patch_size: int, lr_size: tuple[int, int]) -> None:
    model = tiny_linf_lp(patch_size)
    lr = random_image(2, 3, *lr_size)
    features = model.encode(lr)
    for scale in (1.5, 2, 3.5, 4):
        size = output_size(lr, scale)
        assert size == (math.floor(lr_size[0] * scale + 0.5), math.floor(lr_size[1] * scale + 0.5))
        grid_shape = (2, model.dim, math.ceil(size[0] / patch_size), math.ceil(size[1] / patch_size))
        assert model.initial_prior(features, size).shape == grid_shape
        assert model.predict_latent(features, size).shape == grid_shape
        output = model.render(features, size)
        assert output.shape == (2, 3, *size)
        assert torch.isfinite(output).all()


@torch.no_grad()
@pytest.mark.parametrize("scale", [2, 3.5])
def test_initial_prior_is_the_flow_forward_of_the_pseudo_residual(scale: float) -> None:
    model = tiny_linf_lp(3)
    lr = random_image(2, 3, 9, 13)
    size = output_size(lr, scale)
    upsampled = F.interpolate(lr, size=size, mode="bilinear", align_corners=False)
    shrunk = resize(upsampled, (9, 13), kernel="linear")  # MATLAB imresize 'bilinear', antialiased
    pseudo_residual = upsampled - F.interpolate(shrunk, size=size, mode="bilinear", align_corners=False)
    rows, columns = model.latent_shape(size)
    padded = F.pad(pseudo_residual, (0, 3 * columns - size[1], 0, 3 * rows - size[0]), mode="replicate")
    expected = unfold_patches(padded, 3).flatten(0, 1)

    features = model.encode(lr)
    z_init = model.initial_prior(features, size)
    mapped_back = model.flow.sample(patch_conditions(model, features, size, 2), grid_vectors(z_init))
    assert torch.allclose(mapped_back, expected, atol=1e-4)
    assert torch.allclose(z_init, model.initial_prior(features, size, chunk_queries=7), atol=1e-5)


@torch.no_grad()
def test_latent_of_is_the_flow_forward_of_the_true_residual() -> None:
    model = tiny_linf_lp(3)
    lr, hr = random_image(2, 3, 8, 10, seed=1), random_image(2, 3, 24, 30, seed=2)
    features = model.encode(lr)
    z_hr = model.latent_of(features, hr)
    assert z_hr.shape == (2, 27, 8, 10)
    residual = hr - F.interpolate(lr, size=(24, 30), mode="bilinear", align_corners=False)
    mapped_back = model.flow.sample(patch_conditions(model, features, (24, 30), 2), grid_vectors(z_hr))
    assert torch.allclose(mapped_back, unfold_patches(residual, 3).flatten(0, 1), atol=1e-4)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model.latent_of(features, hr[..., :29])


def test_a_training_step_changes_only_the_latent_module() -> None:
    model = tiny_linf_lp(3).train()
    lr, target = random_image(2, 3, 10, 12, seed=3), random_image(2, 3, 20, 24, seed=4)
    frozen_before = {name: value.clone() for name, value in model.flow.state_dict().items()}
    latent_before = {name: value.clone() for name, value in model.latent.named_parameters()}
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)

    loss = F.l1_loss(model(lr, (20, 24)), target)
    loss.backward()
    optimiser.step()

    assert all(parameter.grad is None for parameter in model.flow.parameters())
    assert all(parameter.grad is not None for parameter in model.latent.parameters())
    for name, value in model.flow.state_dict().items():
        assert torch.equal(value, frozen_before[name]), name
    assert any(not torch.equal(value, latent_before[name]) for name, value in model.latent.named_parameters())


def test_train_mode_keeps_the_flow_in_eval_mode() -> None:
    model = tiny_linf_lp(3)
    model.train()
    assert model.training and model.latent.training
    assert not any(module.training for module in model.flow.modules())
    assert not any(parameter.requires_grad for parameter in model.flow.parameters())
    model.eval()
    assert not any(module.training for module in model.modules())


def test_the_encoder_runs_once_per_forward() -> None:
    model = tiny_linf_lp(3)
    calls: list[int] = []
    model.flow.encoder.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        model(random_image(1, 3, 9, 13), (32, 46))
    assert len(calls) == 1


@pytest.mark.parametrize("scale", [2.0, 3.7])
def test_sharing_the_conditioning_between_both_flow_passes_changes_nothing(scale: float) -> None:
    model = tiny_linf_lp(3)
    lr = random_image(2, 3, 11, 14, seed=3)
    size = output_size(lr, scale)
    with torch.no_grad():
        features = model.encode(lr)
        separate = model.render_latent(features, size, model.predict_latent(features, size, chunk_queries=40), 40)
        shared = model.render(features, size, chunk_queries=40)
        conditions = model.conditions(features, size, chunk_queries=40)
    torch.testing.assert_close(shared, separate, rtol=0, atol=1e-5)
    assert conditions.values.shape == (2, model.flow.flow.condition_size, *model.latent_shape(size))
    windowed = model.flow.condition_grid(features, size, range(2, 5), range(1, 4), chunk_queries=7)
    torch.testing.assert_close(windowed.read(range(3, 5), range(1, 3)), conditions.read(range(3, 5), range(1, 3)))


def test_save_then_load_gives_bit_identical_outputs(tmp_path: Path) -> None:
    model = tiny_linf_lp(3).train()
    lr = random_image(2, 3, 9, 13, seed=5)
    with torch.no_grad():
        model(lr, (18, 26))  # moves the BatchNorm running statistics away from their initial values
    model.eval()
    save_model(model, tmp_path / "linf-lp.safetensors")
    loaded = load_model(tmp_path / "linf-lp.safetensors")
    assert isinstance(loaded, LINFLP)
    assert loaded.spec == model.spec
    assert not any(parameter.requires_grad for parameter in loaded.flow.parameters())
    with torch.no_grad():
        assert torch.equal(model(lr, (32, 46)), loaded(lr, (32, 46)))


def test_fade_keeps_the_latent_in_range_and_shrinks_it_beyond() -> None:
    fade = LatentFade(from_scale=4.0, width=2.0)
    assert fade.gain(1.0) == fade.gain(3.5) == fade.gain(4.0) == 1.0
    assert fade.gain(6.0) == pytest.approx(math.exp(-1))
    assert fade.gain(8.0) == pytest.approx(math.exp(-4))
    assert 1.0 > fade.gain(4.5) > fade.gain(6.0) > fade.gain(12.0) > 0.0


@pytest.mark.parametrize("scale", [3.0, 4.0, 6.0, 7.5])
def test_a_faded_model_multiplies_the_prior_latent_by_the_gain_of_its_scale(scale: float) -> None:
    model = tiny_linf_lp(3)
    faded = model.with_fade(LatentFade(4.0, 2.0))
    assert faded.spec["args"]["fade"] == {"from_scale": 4.0, "width": 2.0} and not faded.training
    assert "fade" not in faded.with_fade(None).spec["args"]
    lr = random_image(1, 3, 7, 9, seed=2)
    size = output_size(lr, scale)
    gain = LatentFade(4.0, 2.0).gain(max(size[0] / 7, size[1] / 9))
    with torch.no_grad():
        plain = model.predict_latent(model.encode(lr), size)
        features = faded.encode(lr)
        shrunk = faded.predict_latent(features, size)
        output = faded.render(features, size)
        expected_output = model.render_latent(features, size, plain * gain)
    torch.testing.assert_close(shrunk, plain * gain)
    torch.testing.assert_close(output, expected_output)
    assert (gain == 1.0) == (scale <= 4.0)


def test_a_fade_survives_save_and_load(tmp_path: Path) -> None:
    faded = tiny_linf_lp(3).with_fade(LatentFade(4.0, 2.5))
    save_model(faded, tmp_path / "faded.safetensors")
    loaded = load_model(tmp_path / "faded.safetensors")
    assert isinstance(loaded, LINFLP)
    assert loaded.fade == LatentFade(4.0, 2.5)
    assert loaded.spec == faded.spec


@pytest.mark.parametrize(
    ("fade", "message"),
    [
        ({"from_scale": 4.0, "width": 0.0}, "fade width must be a finite number > 0"),
        ({"from_scale": 0.5, "width": 2.0}, "fade from_scale must be a finite number >= 1"),
        ({"from_scale": 4.0}, "width"),
    ],
)
def test_a_bad_fade_is_a_spec_error(fade: dict[str, float], message: str) -> None:
    with pytest.raises(ModelSpecError, match=message):
        make({"name": "linf-lp", "args": {**tiny_linf_lp(3).spec["args"], "fade": fade}})


def test_latent_size_must_match_the_flow() -> None:
    latent = {"name": "lp-latent", "args": {"dim": 3, **TINY_LATENT_ARGS}}
    with pytest.raises(ModelSpecError, match="does not match the flow's vector size 27"):
        make({"name": "linf-lp", "args": {"flow": TINY_FLOW, "latent": latent}})


def test_paper_size_latent_module() -> None:
    latent = make({"name": "lp-latent", "args": {}})
    assert sum(parameter.numel() for parameter in latent.parameters()) == pytest.approx(4.6e6, rel=0.15)


def monotone_latent_module() -> LatentModule:
    """A small float64 latent module with non-negative weights: every feature is non-decreasing in every
    input, so a raised input cell raises everything it can reach and wins every max-pool on its way
    (on a constant background), and measured reaches are the structural ones."""
    torch.manual_seed(0)
    module = make({"name": "lp-latent", "args": {"dim": 3, "branch_channels": 4, "growth": 4, "widths": [4, 4, 4, 4]}})
    assert isinstance(module, LatentModule)
    module.eval().double()
    for parameter in module.parameters():
        parameter.abs_()
    return module


def reaches(outputs: torch.Tensor, positions: torch.Tensor, raised: list[int]) -> list[float]:
    """How far (left, right) each raised input of ``outputs[1:]`` changed the output versus ``outputs[0]``."""
    found: list[float] = []
    for index, column in enumerate(raised):
        changed = positions[(outputs[index + 1] - outputs[0]).abs().flatten(0, 1).amax(dim=0) > 1e-9]
        found += [column - float(changed.min()), float(changed.max()) - column]
    return found


@torch.no_grad()
def test_receptive_field_is_the_exact_reach_of_one_latent_cell() -> None:
    module = monotone_latent_module()
    assert module.receptive_field == 63
    width = 300
    raised = list(range(144, 144 + module.unet.multiple))  # every alignment to the pooling grid
    z_init = torch.zeros(len(raised) + 1, 3, 8, width, dtype=torch.float64)
    for index, column in enumerate(raised):
        z_init[index + 1, :, :, column] = 1e4
    lr = torch.zeros(len(raised) + 1, 3, 8, width, dtype=torch.float64)
    outputs = module(z_init, lr, lr_positions(8, 1, 8), lr_positions(width, 1, width))
    found = reaches(outputs, torch.arange(width, dtype=torch.float64), raised)
    assert max(found) == module.receptive_field, found


@torch.no_grad()
def test_lr_reach_bounds_the_lr_pixels_an_lr_branch_value_reads() -> None:
    module = monotone_latent_module()
    assert module.lr_reach == 19
    width = 120
    raised = [60, 61, 62]  # every alignment to the stride-3 cells
    lr = torch.zeros(len(raised) + 1, 3, 3, width, dtype=torch.float64)
    for index, column in enumerate(raised):
        lr[index + 1, :, :, column] = 1e4
    positions = torch.arange(0, width, 0.125, dtype=torch.float64)
    outputs = module.encode_lr(lr, torch.ones(1, dtype=torch.float64), positions)
    found = reaches(outputs, positions, raised)
    assert module.lr_reach - 0.25 < max(found) < module.lr_reach, found


def test_lr_branch_reads_its_cells_at_their_physical_centres() -> None:
    # At scale 3 the 3x3 patch centres are the LR pixel centres; latent row r sits on LR pixel r.
    assert torch.allclose(lr_positions(27, 3, 9), torch.arange(9.0), atol=1e-6)
    module = make({"name": "lp-latent", "args": {"dim": 27, **TINY_LATENT_ARGS}})
    assert isinstance(module, LatentModule)
    lr = random_image(1, 3, 9, 12)
    centres = 3 * torch.arange(3.0) + 1, 3 * torch.arange(4.0) + 1
    cells = module.lr_branch(F.leaky_relu(module.lr_stem(lr), 0.2))
    assert torch.allclose(module.encode_lr(lr, *centres), cells, atol=1e-6)
    # An odd-sized LR is padded to whole cells, and positions past the border are clamped.
    odd = module.encode_lr(lr[..., :8, :11], torch.tensor([-5.0, 7.0, 20.0]), torch.tensor([10.0]))
    assert odd.shape == (1, 8, 3, 1)
    assert torch.isfinite(odd).all()


def test_inference_folds_batch_norm_into_the_convs_and_follows_its_statistics() -> None:
    """Without gradients an eval-mode latent module folds each BatchNorm into its conv; the output is
    the layer-by-layer one, and changed running statistics are picked up, not a stale fold."""
    torch.manual_seed(0)
    module = make({"name": "lp-latent", "args": {"dim": 27, **TINY_LATENT_ARGS}}).eval()
    norms = [layer for layer in module.modules() if isinstance(layer, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for norm in norms:
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.2, 0.2)
    z_init, lr = random_image(1, 27, 16, 20, seed=1), random_image(1, 3, 12, 15, seed=2)
    rows, columns = lr_positions(48, 3, 12), lr_positions(60, 3, 15)

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        layered = module(z_init, lr, rows, columns).detach()  # gradients enabled: BatchNorm as a layer
        with torch.no_grad():
            return layered, module(z_init, lr, rows, columns)

    layered, folded = both()
    assert torch.allclose(folded, layered, atol=1e-5)
    with torch.no_grad():
        norms[0].running_mean.add_(1.0)
    layered_after, folded_after = both()
    assert torch.allclose(folded_after, layered_after, atol=1e-5)
    assert not torch.allclose(folded_after, folded, atol=1e-3)
