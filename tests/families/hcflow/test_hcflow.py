"""flowsr's HCFlow SR network: sizes, an exact bijection, its log-determinant, sampling and the training NLL."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from flowsr_cli.families.common.flow_layers import ActNorm, InvertibleConv1x1, ZeroConv2d
from flowsr_cli.families.hcflow.network import CPU_CONFIGS, HCFlowSR, lr_log_likelihood
from flowsr_cli.families.registry import ModelSpecError, make

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {
    "steps": [2, 1],
    "cond_steps": [1, 2],
    "hidden": 8,
    "cond_hidden": 6,
    "rrdb_blocks": [1, 1],
    "rrdb_channels": 8,
    "growth": 4,
}
TINY_X8 = {**TINY, "levels": 3, "steps": [1, 1, 1], "cond_steps": [1, 1, 1], "rrdb_blocks": [1, 0]}


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _parameters(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def tiny_model(args: dict[str, object], seed: int = 0) -> HCFlowSR:
    """A tiny HCFlow with every weight away from its start and its actnorms initialised from data."""
    torch.manual_seed(seed)
    model = make({"name": "hcflow", "args": args})
    assert isinstance(model, HCFlowSR)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, ZeroConv2d):
                for parameter in (module.weight, module.bias, module.logs):
                    parameter.normal_(0.0, 0.05)
            if isinstance(module, InvertibleConv1x1):
                module.weight.add_(torch.randn_like(module.weight), alpha=0.2 / module.weight.shape[0] ** 0.5)
        model.train()
        model.to_latents(torch.rand(4, 3, 4 * model.scale, 4 * model.scale, generator=_generator(seed + 1)))
    assert all(bool(module.initialized) for module in model.modules() if isinstance(module, ActNorm))
    return model.eval()


def test_parameter_counts_of_the_paper_and_cpu_configs() -> None:
    """DESIGN section 9: paper x4 23.2 M (RRDB extractors 20.3 M); K12/[6,6]/RRDB [2,1]/gc 16 3.78 M;
    K8/[4,4]/RRDB [1,1]/gc 16/hidden 32 2.14 M."""
    with torch.device("meta"):
        paper = HCFlowSR()
        counts = {name: _parameters(HCFlowSR(**args)) for name, args in CPU_CONFIGS.items()}
    extractors = sum(
        _parameters(module)
        for level in paper.flow_levels
        for module in (level.cond_flow.conv_first, level.cond_flow.trunk0, level.cond_flow.trunk1)
    ) + sum(_parameters(level.cond_flow.trunk_conv) for level in paper.flow_levels)
    assert _parameters(paper) == 23_232_539 and round(extractors / 1e6, 1) == 20.3
    assert counts == {"k12": 3_783_214, "k8": 2_138_328}
    assert paper.scale == 4 and HCFlowSR.scale == 4


@pytest.mark.parametrize(("args", "lr_size"), [(TINY, (3, 5)), (TINY_X8, (1, 3))], ids=["x4-odd", "x8"])
def test_forward_then_inverse_returns_the_hr(args: dict[str, object], lr_size: tuple[int, int]) -> None:
    model = tiny_model(args)
    scale = model.scale
    hr = torch.rand(2, 3, scale * lr_size[0], scale * lr_size[1], generator=_generator(3))
    with torch.no_grad():
        lr_hat, latents, log_density = model.to_latents(hr)
        assert lr_hat.shape == (2, 3, *lr_size) and torch.isfinite(log_density).all()
        features = model.encode(lr_hat)
        assert [tuple(latent.shape[1:]) for latent in latents] == model.latent_shapes(features)
        restored = model.sample(features, 1.0, latents=latents)
    assert (restored - hr).abs().max() < 1e-4


def test_latent_shapes_coarsest_first() -> None:
    features = tiny_model(TINY).encode(torch.rand(1, 3, 3, 5))
    assert tiny_model(TINY).latent_shapes(features) == [(21, 3, 5), (6, 6, 10)]
    x8 = tiny_model(TINY_X8)
    assert x8.latent_shapes(x8.encode(torch.rand(1, 3, 3, 5))) == [(45, 3, 5), (12, 6, 10), (6, 12, 20)]


def test_log_density_is_the_log_determinant_plus_the_latents_standard_normal_density() -> None:
    """HR -> (LR^, eps) is a bijection; log_density = log|det d(LR^, eps)/d HR| + log N(eps; 0, I)."""
    model = tiny_model(TINY).double()
    hr = torch.rand(1, 3, 4, 8, generator=_generator(5), dtype=torch.float64)

    def outputs(x: torch.Tensor) -> torch.Tensor:
        lr_hat, latents, _ = model.to_latents(x)
        return torch.cat([lr_hat.flatten(), *(latent.flatten() for latent in latents)])

    jacobian = torch.autograd.functional.jacobian(outputs, hr, vectorize=True).reshape(hr.numel(), hr.numel())
    with torch.no_grad():
        _, latents, log_density = model.to_latents(hr)
    normal = sum(-0.5 * (latent.pow(2) + math.log(2 * math.pi)).sum() for latent in latents)
    assert log_density.item() == pytest.approx((torch.linalg.slogdet(jacobian)[1] + normal).item(), abs=1e-8)


def test_heat_zero_is_deterministic_and_the_prior_mean() -> None:
    model = tiny_model(TINY)
    features = model.encode(torch.rand(1, 3, 2, 3, generator=_generator(6)))
    with torch.no_grad():
        zero = model.sample(features, 0.0, _generator(1))
        assert torch.equal(zero, model.sample(features, 0.0, _generator(2)))
        zeros = [torch.zeros(1, *shape) for shape in model.latent_shapes(features)]
        assert torch.equal(zero, model.sample(features, 0.7, latents=zeros))
        hot = model.sample(features, 0.7, _generator(1))
        assert torch.equal(hot, model.sample(features, 0.7, _generator(1)))
        assert not torch.allclose(hot, zero) and torch.equal(hot, model(features.lr, 0.7, _generator(1)))


def test_nll_trains_through_both_terms_and_initialises_actnorms() -> None:
    torch.manual_seed(0)
    model = make({"name": "hcflow", "args": TINY}).train()
    hr, lr = torch.rand(2, 3, 8, 12, generator=_generator(1)), torch.rand(2, 3, 2, 3, generator=_generator(2))
    nll = model.nll_bits_per_pixel(hr, lr, generator=_generator(3))
    assert torch.isfinite(nll) and all(bool(m.initialized) for m in model.modules() if isinstance(m, ActNorm))
    nll.backward()
    grads = [parameter.grad for parameter in model.parameters()]
    assert all(grad is not None and torch.isfinite(grad).all() for grad in grads)
    deterministic = model.eval().nll_bits_per_pixel(hr, lr, dequantise=False)
    log_prob, _ = model.log_prob(hr, model.encode(lr))
    assert deterministic.item() == pytest.approx((-log_prob / (math.log(2) * 96)).mean().item(), rel=1e-6)


def test_lr_term_quantises_with_a_straight_through_gradient() -> None:
    """log N(LR; round(clamp(LR^) * 255) / 255, e^-6), gradient as if there were no rounding nor clamping."""
    lr = torch.tensor([0.2, 0.6, 1.0]).view(1, 3, 1, 1)
    lr_hat = torch.tensor([0.2 + 0.001, 0.6 + 1 / 255, 1.3]).view(1, 3, 1, 1).requires_grad_()
    value = lr_log_likelihood(lr_hat, lr)
    per_value = 6.0 - 0.5 * math.log(2 * math.pi)
    expected = 3 * per_value - 0.5 * (1 / 255) ** 2 * math.exp(12)
    assert value.item() == pytest.approx(expected, rel=1e-4)
    value.sum().backward()
    assert lr_hat.grad is not None
    assert lr_hat.grad.flatten().tolist() == pytest.approx([0.0, -(1 / 255) * math.exp(12), 0.0], rel=1e-3, abs=1e-3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"steps": [1]}, "steps and cond_steps must list one number per level"),
        ({"rrdb_blocks": [1]}, "rrdb_blocks must list the blocks of the two RRDB trunks"),
        ({"levels": 5}, "levels = 5 must be an integer from 1 to 4"),
        ({"hidden": 0}, "hidden = 0 must be an integer from 1 to 4096"),
    ],
)
def test_bad_specs_are_refused(args: dict[str, object], message: str) -> None:
    with pytest.raises(ModelSpecError, match=message):
        make({"name": "hcflow", "args": args})


def test_hr_sizes_must_be_the_scale_times_the_lr() -> None:
    model = tiny_model(TINY)
    with pytest.raises(ValueError, match=r"HR size \(8, 8\) is not 4x the LR size \(2, 3\)"):
        model.log_prob(torch.rand(1, 3, 8, 8), model.encode(torch.rand(1, 3, 2, 3)))
