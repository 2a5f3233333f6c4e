"""SRFlow and its invertible layers: exact inverses, log-determinants, shapes, sampling, training, files."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flowsr_cli.families.common.flow_layers import (
    ActNorm,
    ConditionalAffineCoupling,
    ConditionalAffineInjector,
    FlowStep,
    InvertibleConv1x1,
    Split,
    Squeeze,
    gaussian_log_density,
    squeeze2d,
    unsqueeze2d,
)
from flowsr_cli.families.model_file import load_model, save_model
from flowsr_cli.families.registry import ModelSpecError, make
from flowsr_cli.families.srflow.network import SRFlow

TINY_ARGS = {
    "rrdb_blocks": 2,
    "rrdb_channels": 8,
    "growth": 4,
    "feature_blocks": [0, 1],
    "steps": 2,
    "hidden": 8,
}
COND_CHANNELS = 3


pytestmark = pytest.mark.usefixtures("one_thread")


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def randomise_zero_convs(module: nn.Module, std: float = 0.1) -> None:
    """Give the zero-initialised output convs random weights, so the affine maps are not all alike."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Conv2d) and not layer.weight.any():
                layer.weight.normal_(0.0, std)
                layer.bias.normal_(0.0, std)


def perturb_invconvs(module: nn.Module, std: float = 0.1) -> None:
    """Move the 1x1 convs away from their orthogonal start, so they change volume."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, InvertibleConv1x1):
                layer.weight.add_(torch.randn_like(layer.weight), alpha=std)


def initialise_actnorms(module: nn.Module, x: torch.Tensor, cond: torch.Tensor | None) -> None:
    """One training-mode forward pass (ActNorm's data-dependent init), then eval mode."""
    module.train()
    with torch.no_grad():
        module(x, cond)
    module.eval()


LayerFactory = Callable[[int], nn.Module]
LAYERS: dict[str, LayerFactory] = {
    "actnorm": lambda channels: ActNorm(channels),
    "invconv": lambda channels: InvertibleConv1x1(channels),
    "squeeze": lambda channels: Squeeze(),
    "injector": lambda channels: ConditionalAffineInjector(channels, COND_CHANNELS, hidden=8),
    "coupling": lambda channels: ConditionalAffineCoupling(channels, COND_CHANNELS, hidden=8),
    "step": lambda channels: FlowStep(channels, COND_CHANNELS, hidden=8, conditional=True),
    "unconditional-step": lambda channels: FlowStep(channels, COND_CHANNELS, hidden=8, conditional=False),
}


def build_layer(name: str, channels: int, x: torch.Tensor, cond: torch.Tensor, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layer = LAYERS[name](channels).to(x.dtype)
    randomise_zero_convs(layer)
    perturb_invconvs(layer)
    initialise_actnorms(layer, x + 0.3 * randn(*x.shape, seed=seed + 7, dtype=x.dtype), cond)
    return layer


def jacobian_log_det(function: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """log|det J| of the flattened map, by autograd (x must hold one sample)."""
    jacobian = torch.autograd.functional.jacobian(lambda flat: function(flat.view_as(x)).flatten(), x.flatten())
    return torch.linalg.slogdet(jacobian)[1]


# ---- layers ---------------------------------------------------------------------------------------


def test_squeeze_is_a_2x2_space_to_depth_in_glow_order() -> None:
    x = torch.arange(2 * 2 * 4 * 6, dtype=torch.float32).view(2, 2, 4, 6)
    y = squeeze2d(x)
    assert y.shape == (2, 8, 2, 3)
    assert torch.equal(y[:, 4 * 1 + 2 * 1 + 0], x[:, 1, 1::2, 0::2])
    assert torch.equal(unsqueeze2d(y), x)
    with pytest.raises(ValueError, match="even"):
        squeeze2d(torch.zeros(1, 1, 3, 4))


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layers_invert_exactly_in_float32(name: str) -> None:
    x = randn(2, 4, 6, 4, seed=1)
    cond = randn(2, COND_CHANNELS, 6, 4, seed=2)
    layer = build_layer(name, 4, x, cond)
    y, logdet = layer(x, cond)
    assert logdet.shape == (2,)
    assert torch.allclose(layer.inverse(y, cond), x, atol=1e-5, rtol=0)
    assert name == "squeeze" or not torch.allclose(y, x)


@pytest.mark.parametrize("name", ["actnorm", "invconv"])
def test_actnorm_and_invconv_invert_to_1e_10_in_float64(name: str) -> None:
    x = randn(2, 6, 3, 5, seed=3, dtype=torch.float64)
    layer = build_layer(name, 6, x, randn(2, COND_CHANNELS, 3, 5, dtype=torch.float64))
    y, _ = layer(x)
    assert torch.allclose(layer.inverse(y), x, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", ["actnorm", "invconv", "injector", "coupling", "step"])
def test_log_det_matches_autograd_jacobian(name: str) -> None:
    x = randn(1, 4, 2, 2, seed=4, dtype=torch.float64)
    cond = randn(1, COND_CHANNELS, 2, 2, seed=5, dtype=torch.float64)
    layer = build_layer(name, 4, randn(3, 4, 2, 2, seed=6, dtype=torch.float64), cond.expand(3, -1, -1, -1))
    _, logdet = layer(x, cond)
    expected = jacobian_log_det(lambda v: layer(v, cond)[0], x)
    assert abs(expected.item()) > 0.1
    assert torch.allclose(logdet, expected.view(1), atol=1e-9, rtol=0)


def test_actnorm_initialises_from_the_first_training_batch_once_and_the_flag_is_saved() -> None:
    x = 3.0 + 2.5 * randn(8, 5, 4, 4, seed=7)
    layer = ActNorm(5)
    layer.eval()
    assert torch.equal(layer(x)[0], x)
    assert not layer.initialized
    layer.train()
    y, _ = layer(x)
    assert layer.initialized
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(5), atol=1e-5)
    assert torch.allclose(y.std(dim=(0, 2, 3), unbiased=False), torch.ones(5), atol=1e-4)

    restored = ActNorm(5)
    restored.load_state_dict(layer.state_dict())
    restored.train()
    assert torch.equal(restored(randn(8, 5, 4, 4, seed=8))[0], layer(randn(8, 5, 4, 4, seed=8))[0])
    assert torch.equal(restored.bias, layer.bias)


def test_invconv_starts_orthogonal_and_volume_preserving() -> None:
    torch.manual_seed(0)
    layer = InvertibleConv1x1(6)
    matrix = layer.weight.double()
    assert torch.allclose(matrix @ matrix.T, torch.eye(6, dtype=torch.float64), atol=1e-5)
    assert abs(layer(randn(1, 6, 2, 3))[1].item()) < 1e-5


def test_split_round_trip_and_prior_log_likelihood() -> None:
    x = randn(2, 12, 4, 6, seed=9)
    split = Split(12)
    kept, log_likelihood, eps = split(x)
    # A zero-initialised prior is N(0, I): the latent is the split-off half itself.
    assert kept.shape == eps.shape == (2, 6, 4, 6)
    assert torch.equal(kept, x[:, :6]) and torch.equal(eps, x[:, 6:])
    assert torch.allclose(log_likelihood, gaussian_log_density(x[:, 6:]))
    assert torch.equal(split.inverse(kept, eps), x)

    randomise_zero_convs(split, std=0.2)
    kept, log_likelihood, eps = split(x)
    mean, log_std = split.prior(kept)
    expected = torch.distributions.Normal(mean, log_std.exp()).log_prob(x[:, 6:]).flatten(1).sum(dim=1)
    assert torch.allclose(log_likelihood, expected, atol=1e-4, rtol=1e-6)
    assert torch.allclose(split.inverse(kept, eps), x, atol=1e-5, rtol=0)
    assert torch.allclose(split.inverse(kept, temperature=0.0), torch.cat([kept, mean], dim=1))
    first = split.inverse(kept, temperature=0.8, generator=torch.Generator().manual_seed(1))
    again = split.inverse(kept, temperature=0.8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, again) and not torch.allclose(first[:, 6:], mean)


def test_split_can_condition_its_prior() -> None:
    x = randn(1, 8, 4, 4, seed=10)
    cond = randn(1, COND_CHANNELS, 4, 4, seed=11)
    split = Split(8, cond_channels=COND_CHANNELS)
    randomise_zero_convs(split)
    kept, _, eps = split(x, cond)
    assert not torch.allclose(eps, x[:, 4:])
    assert torch.allclose(split.inverse(kept, eps, cond), x, atol=1e-5, rtol=0)


# ---- SRFlow ---------------------------------------------------------------------------------------


def tiny_srflow(seed: int = 0, **overrides: object) -> SRFlow:
    torch.manual_seed(seed)
    model = make({"name": "srflow", "args": {**TINY_ARGS, **overrides}})
    assert isinstance(model, SRFlow)
    return model


def trained_tiny_srflow(lr: torch.Tensor, hr: torch.Tensor) -> SRFlow:
    """A tiny SRFlow whose actnorms are initialised and whose zero convs are random (a non-trivial flow)."""
    model = tiny_srflow()
    model.train()
    with torch.no_grad():
        model.log_prob(hr, model.encode(lr))
    randomise_zero_convs(model, std=0.05)
    return model.eval()


@pytest.mark.parametrize(("lr_size", "padded"), [((6, 8), (6, 8)), ((5, 7), (6, 8))])
def test_srflow_latent_shapes_and_exact_inverse(lr_size: tuple[int, int], padded: tuple[int, int]) -> None:
    lr = rand(2, 3, *lr_size, seed=12)
    hr = rand(2, 3, 4 * lr_size[0], 4 * lr_size[1], seed=13)
    model = trained_tiny_srflow(lr, hr)
    with torch.no_grad():
        features = model.encode(lr)
        log_p, latents = model.log_prob(hr, features)
        height, width = padded
        assert [tuple(z.shape) for z in latents] == [(2, 6, 2 * height, 2 * width), (2, 96, height // 2, width // 2)]
        assert model.latent_shapes(features) == [tuple(z.shape[1:]) for z in latents]
        assert log_p.shape == (2,) and torch.isfinite(log_p).all()
        restored = model.sample(features, latents=latents)
    assert restored.shape == hr.shape
    assert torch.allclose(restored, hr, atol=1e-4, rtol=0)


def test_srflow_conditions_have_the_documented_sizes() -> None:
    model = tiny_srflow()
    features = model.encode(rand(1, 3, 6, 8))
    channels = 8 * (1 + 2)
    assert [tuple(c.shape) for c in features.conditions] == [
        (1, channels, 12, 16),
        (1, channels, 6, 8),
        (1, channels, 3, 4),
    ]
    fine, lr_level, coarse = features.conditions
    trunk, stacked = lr_level[:, :8], lr_level[:, 8:]
    assert torch.allclose(coarse[:, :8], F.avg_pool2d(trunk, 2), atol=1e-6)
    assert torch.equal(coarse[:, 8:], stacked[..., ::2, ::2])
    assert torch.equal(fine[:, 8:], stacked.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1))


def test_srflow_log_prob_is_the_change_of_variables() -> None:
    lr = rand(1, 3, 2, 2, seed=14).double()
    hr = rand(1, 3, 8, 8, seed=15).double()
    model = trained_tiny_srflow(lr.float(), hr.float()).double()
    with torch.no_grad():
        features = model.encode(lr)
    log_p, latents = model.log_prob(hr, features)

    def to_latents(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([z.flatten() for z in model.log_prob(x, features).latents])

    log_det = jacobian_log_det(to_latents, hr)
    expected = sum(gaussian_log_density(z) for z in latents) + log_det
    assert abs(log_det.item()) > 1.0
    assert torch.allclose(log_p, expected, atol=1e-8, rtol=0)


def test_srflow_nll_in_bits_per_pixel_with_dequantisation() -> None:
    lr = rand(1, 3, 4, 4, seed=16)
    hr = rand(1, 3, 16, 16, seed=17)
    model = trained_tiny_srflow(lr, hr)
    pixels = 16 * 16
    with torch.no_grad():
        continuous = model.nll_bits_per_pixel(hr, lr, dequantise=False)
        log_p = model.log_prob(hr, model.encode(lr)).log_prob
        assert torch.allclose(continuous, -log_p / (pixels * math.log(2)))

        dequantised = model.nll_bits_per_pixel(hr, lr, generator=torch.Generator().manual_seed(3))
        noise = (torch.rand(hr.shape, generator=torch.Generator().manual_seed(3)) - 0.5) / 32
        assert noise.abs().max() <= 1 / 64
        noisy_log_p = model.log_prob(hr + noise, model.encode(lr)).log_prob
        expected = -(noisy_log_p - 3 * pixels * math.log(32)) / (pixels * math.log(2))
    assert torch.allclose(dequantised, expected, atol=1e-5, rtol=0)


def test_srflow_nll_decreases_when_training_on_one_image() -> None:
    lr = rand(1, 3, 4, 4, seed=18)
    hr = rand(1, 3, 16, 16, seed=19)
    model = tiny_srflow()
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(30):
        loss = model.nll_bits_per_pixel(hr, lr, generator=generator)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-5:]) / 5 < losses[0] - 1.0


def test_srflow_sampling_temperature_and_seeds() -> None:
    lr = rand(1, 3, 4, 6, seed=20)
    model = trained_tiny_srflow(lr, rand(1, 3, 16, 24, seed=21))
    with torch.no_grad():
        features = model.encode(lr)
        mode = model.sample(features, temperature=0.0, generator=torch.Generator().manual_seed(1))
        assert mode.shape == (1, 3, 16, 24) and torch.isfinite(mode).all()
        assert torch.equal(mode, model.sample(features, temperature=0.0, generator=torch.Generator().manual_seed(2)))
        assert torch.equal(mode, model(lr, temperature=0.0))
        first = model.sample(features, 0.8, generator=torch.Generator().manual_seed(1))
        again = model.sample(features, 0.8, generator=torch.Generator().manual_seed(1))
        other = model.sample(features, 0.8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(first, again)
    assert (first - other).abs().max() > 1e-3


def test_srflow_file_round_trip_samples_bit_identically(tmp_path: Path) -> None:
    lr = rand(1, 3, 4, 4, seed=22)
    model = trained_tiny_srflow(lr, rand(1, 3, 16, 16, seed=23))
    path = tmp_path / "srflow.safetensors"
    save_model(model, path)
    loaded = load_model(path)
    assert isinstance(loaded, SRFlow)
    assert all(bool(module.initialized) for module in loaded.modules() if isinstance(module, ActNorm))
    with torch.no_grad():
        features = model.encode(lr)
        latents = model.random_latents(features, 0.8, torch.Generator().manual_seed(5))
        expected = model.sample(features, latents=latents)
        actual = loaded.sample(loaded.encode(lr), latents=latents)
    assert torch.equal(actual, expected)


@pytest.mark.parametrize(
    "overrides",
    [{"split_levels": [3]}, {"split_levels": [0]}, {"feature_blocks": [2]}, {"feature_blocks": [1, 1]}, {"levels": 0}],
)
def test_srflow_rejects_bad_specs(overrides: dict[str, object]) -> None:
    with pytest.raises(ModelSpecError):
        make({"name": "srflow", "args": {**TINY_ARGS, **overrides}})


def test_srflow_with_other_levels_and_splits_still_inverts() -> None:
    lr = rand(1, 3, 5, 6, seed=24)
    hr = rand(1, 3, 20, 24, seed=25)
    model = tiny_srflow(levels=4, split_levels=[1, 2], steps=1)
    model.eval()
    randomise_zero_convs(model, std=0.05)
    with torch.no_grad():
        features = model.encode(lr)
        assert features.padded_size == (8, 8)
        latents = model.log_prob(hr, features).latents
        assert [tuple(z.shape[1:]) for z in latents] == [(6, 16, 16), (12, 8, 8), (192, 2, 2)]
        assert torch.allclose(model.sample(features, latents=latents), hr, atol=1e-4, rtol=0)


def test_paper_srflow_has_about_39_5_million_parameters() -> None:
    torch.manual_seed(0)
    model = make({"name": "srflow", "args": {}})
    parameters = sum(parameter.numel() for parameter in model.parameters())
    assert abs(parameters - 39.5e6) < 0.15 * 39.5e6
    assert model.conditioner.out_channels == 320
