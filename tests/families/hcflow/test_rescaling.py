"""flowsr's HCFlow rescaling network: sizes, the box-mean start, an exact bijection, heats and refused specs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flowsr_cli.families.hcflow.rescaling import CPU_CONFIGS, DenseCouplingNet, HCFlowRescaler, haar_squeeze
from flowsr_cli.families.hcflow.rescaling_importer import haar_filters
from flowsr_cli.families.registry import ModelSpecError, make, network

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "steps": [3, 2],
    "cond_steps": [1, 2],
    "hidden": 4,
    "cond_hidden": 6,
    "rrdb_blocks": [1, 0],
    "rrdb_channels": 8,
    "growth": 4,
}
TINY_X2 = {**TINY, "levels": 1, "steps": [3], "cond_steps": [2]}
CONFIGS = {"x4": TINY, "x2": TINY_X2}


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _parameters(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def tiny_rescaler(args: dict[str, object], seed: int = 0) -> HCFlowRescaler:
    """A tiny rescaler with every weight away from its start: actnorms, the dense blocks' zero last convs and the
    zero prior convs get small random values, so every coupling and prior acts."""
    torch.manual_seed(seed)
    model = make({"name": "hcflow-rescale", "args": args})
    assert isinstance(model, HCFlowRescaler)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("actnorm.bias", "actnorm.log_scale", "prior.weight", "prior.bias", "prior.logs")):
                parameter.normal_(0.0, 0.05)
        for module in model.modules():
            if isinstance(module, DenseCouplingNet):
                module.convs[-1].weight.normal_(0.0, 0.02)
    return model.eval()


def test_parameter_counts_of_the_original_and_cpu_configs() -> None:
    """DESIGN section 10: the original x4 (L 2, K 14 with 6 after each split, dense growth 32, RRDB [2, 1] nf 64 gc
    16) has 4.40 M parameters (the original also counts its 144 fixed Haar weights)."""
    with torch.device("meta"):
        original = HCFlowRescaler()
        counts = {name: _parameters(HCFlowRescaler(**args)) for name, args in CPU_CONFIGS.items()}
        x2 = HCFlowRescaler(levels=1)
    assert _parameters(original) == 4_396_206 and round(_parameters(original) / 1e6, 2) == 4.40
    assert counts == {"x4-small": 1_545_256, "x2-small": 708_570}
    assert _parameters(x2) == 2_065_062 and x2.scale == 2
    assert original.scale == 4 and HCFlowRescaler.scale == 4
    assert network("hcflow-rescale").fixed_scale({"levels": 1}) == 2 and network("hcflow-rescale").engine is None
    assert network("hcflow-rescale").default_temperature == 1.0


def test_haar_squeeze_is_the_originals_strided_conv_of_haar_filters() -> None:
    """Band k of channel c goes to channel k C + c; the first C channels are the 2x2 means."""
    x = torch.rand(2, 6, 4, 6, generator=_generator(1))
    expected = F.conv2d(x, haar_filters(6), stride=2, groups=6) / 4
    expected = expected.reshape(2, 6, 4, 2, 3).transpose(1, 2).reshape(2, 24, 2, 3)
    assert (haar_squeeze(x) - expected).abs().max() < 1e-6
    assert torch.allclose(haar_squeeze(x)[:, :6], F.avg_pool2d(x, 2))


@pytest.mark.parametrize("config", ["x4", "x2"])
def test_at_initialisation_the_lr_is_the_box_mean_and_heat_zero_replicates_it(config: str) -> None:
    torch.manual_seed(0)
    model = make({"name": "hcflow-rescale", "args": CONFIGS[config]}).eval()
    hr = torch.rand(2, 3, 8, 12, generator=_generator(2))
    with torch.no_grad():
        lr = model.downscale(hr)
        assert lr.shape == (2, 3, 8 // model.scale, 12 // model.scale)
        assert (lr - F.avg_pool2d(hr, model.scale)).abs().max() < 1e-6
        restored = model.upscale(lr, 0.0)  # zero prior convs: the prior means are 0, no detail at all
    assert (restored - F.interpolate(lr, scale_factor=model.scale, mode="nearest")).abs().max() < 1e-6


@pytest.mark.parametrize("config", ["x4", "x2"])
def test_forward_then_inverse_with_the_true_latents_returns_the_hr(config: str) -> None:
    model = tiny_rescaler(CONFIGS[config])
    hr = torch.rand(2, 3, 8, 12, generator=_generator(3))
    with torch.no_grad():
        lr, latents = model.to_latents(hr)
        assert torch.equal(lr, model.downscale(hr)) and torch.equal(lr, model(hr))
        assert (lr - F.avg_pool2d(hr, model.scale)).abs().max() > 0.05  # the tamed weights do act
        assert [tuple(latent.shape[1:]) for latent in latents] == model.latent_shapes(lr)
        restored = model.upscale(lr, 1.0, latents=latents)
        assert (model.upscale(lr, 1.0, _generator(4)) - hr).abs().max() > 0.1
    assert (restored - hr).abs().max() < 1e-5


def test_latent_shapes_coarsest_first() -> None:
    lr = torch.rand(1, 3, 3, 5)
    assert tiny_rescaler(TINY).latent_shapes(lr) == [(21, 3, 5), (6, 6, 10)]
    assert tiny_rescaler(TINY_X2).latent_shapes(lr) == [(9, 3, 5)]


def test_heats_scale_the_latents_and_heat_zero_is_deterministic() -> None:
    model = tiny_rescaler(TINY)
    lr = torch.rand(1, 3, 2, 3, generator=_generator(6))
    with torch.no_grad():
        zero = model.upscale(lr, 0.0, _generator(1))
        assert torch.equal(zero, model.upscale(lr, 0.0, _generator(2)))
        zeros = [torch.zeros(1, *shape) for shape in model.latent_shapes(lr)]
        assert torch.equal(zero, model.upscale(lr, 0.7, latents=zeros))
        hot = model.upscale(lr, 0.7, _generator(1))
        halved = [0.5 * latent for latent in model.random_latents(lr, _generator(1))]
        assert torch.equal(hot, model.upscale(lr, 1.4, latents=halved))
        assert not torch.allclose(hot, zero) and torch.equal(hot, model.upscale(lr, 0.7, _generator(1)))


def test_the_training_losses_reach_every_weight() -> None:
    """The original's losses (module docstring) give finite gradients; each dense block's last conv gets one."""
    model = tiny_rescaler(TINY).train()
    hr = torch.rand(2, 3, 8, 8, generator=_generator(7))
    lr, latents = model.to_latents(hr)
    quantised = lr + ((lr.clamp(0, 1) * 255).round() / 255 - lr).detach()
    restored = model.upscale(quantised, 1.0, _generator(8))
    loss = (
        0.05 * F.mse_loss(lr.clamp(0, 1), F.avg_pool2d(hr, 4))
        + 1e-5 * torch.cat([latent.flatten() for latent in latents]).pow(2).mean()
    )
    (loss + F.l1_loss(restored, hr)).backward()
    assert all(parameter.grad is not None and torch.isfinite(parameter.grad).all() for parameter in model.parameters())
    dense = [module for module in model.modules() if isinstance(module, DenseCouplingNet)]
    assert all(module.convs[-1].weight.grad.abs().sum() > 0 for module in dense)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"levels": 3}, "levels = 3 must be an integer from 1 to 2"),
        ({"steps": [1]}, "steps and cond_steps must list one number per level"),
        ({"levels": 1, "cond_steps": [1, 1]}, "steps and cond_steps must list one number per level"),
        ({"rrdb_blocks": [1]}, "rrdb_blocks must list the blocks of the two RRDB trunks"),
        ({"hidden": 0}, "hidden = 0 must be an integer from 1 to 1024"),
        ({"heat": 1.0}, "unexpected keyword argument 'heat'"),
    ],
)
def test_bad_specs_are_refused(args: dict[str, object], message: str) -> None:
    with pytest.raises(ModelSpecError, match=message):
        make({"name": "hcflow-rescale", "args": args})


def test_sizes_and_latents_that_do_not_fit_are_refused() -> None:
    model = tiny_rescaler(TINY)
    with pytest.raises(ValueError, match=r"HR size \(8, 6\) is not a multiple of the scale 4"):
        model.downscale(torch.rand(1, 3, 8, 6))
    with pytest.raises(ValueError, match="needs 2 latents, got 1"):
        model.upscale(torch.rand(1, 3, 2, 2), latents=[torch.zeros(1, 21, 2, 2)])
