"""HCFlow's layers (Liang et al., ICCV 2021): flow steps with a bounded affine coupling, and the conditional
flow that models each split-off part with RRDB features of its condition and a conditional Gaussian prior.

They follow the original's ``FlowStep.py``, ``AffineCouplings.py`` (``AffineCoupling`` with the ``FCN``
network) and ``ConditionalFlow.py`` (the SR branch) and compute exactly what those compute with the same
weights. The actnorm, the invertible 1x1 convolution (full weight, ``LU_decomposed=False``), the coupling
network (conv3x3 + actnorm -> ReLU -> conv1x1 + actnorm -> ReLU -> Conv2dZeros with ``exp(3 logs)``) and
the RRDB are :mod:`flowsr_cli.families.common`'s, whose math is the same as the original's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from flowsr_cli.families.common.encoders import RRDB
from flowsr_cli.families.common.flow_layers import (
    ActNorm,
    ActNormConv2d,
    InvertibleConv1x1,
    ZeroConv2d,
    coupling_network,
)

LOG_SCALE_BOUND = 0.318
"""The coupling's ``logscale = 0.318 * atan(2 s)``: |logscale| < 0.318 * pi / 2 ~ 0.4995, a scale in about e^±0.5."""
RESIDUAL_INIT_GAIN = 0.1
"""The original initialises the coupling networks' hidden convs and the RRDBs' convs with Xavier-normal x 0.1."""
_LOG_2PI = math.log(2 * math.pi)


def bounded_log_scale(raw: torch.Tensor) -> torch.Tensor:
    """HCFlow's bounded log-scale ``0.318 * atan(2 raw)``."""
    return LOG_SCALE_BOUND * torch.atan(2 * raw)


def gaussian_log_likelihood(mean: torch.Tensor, log_std: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, exp(log_std)^2) summed per sample, as the original's ``GaussianDiag.logp``: (B, ...) -> (B,)."""
    likelihood = -0.5 * (log_std * 2.0 + (x - mean) ** 2 / torch.exp(log_std * 2.0) + _LOG_2PI)
    return likelihood.flatten(1).sum(dim=1)


def _xavier(convs: list[nn.Conv2d]) -> None:
    """The original's ``initialize_weights_xavier(convs, 0.1)``: Xavier-normal weights x 0.1, zero biases."""
    for conv in convs:
        nn.init.xavier_normal_(conv.weight)
        conv.weight.data.mul_(RESIDUAL_INIT_GAIN)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)


class BoundedAffineCoupling(nn.Module):
    """The first ``channels // 2`` channels (with the condition, if any) give shift and raw scale s for the
    rest ("cross" order: shift = h[:, 0::2], s = h[:, 1::2]): ``y_b = (x_b + shift) * exp(0.318 atan(2 s))``."""

    def __init__(self, channels: int, cond_channels: int, hidden: int) -> None:
        super().__init__()
        self.passed = channels // 2
        self.net = coupling_network(self.passed + cond_channels, 2 * (channels - self.passed), hidden)
        _xavier([layer for layer in self.net if isinstance(layer, ActNormConv2d)])

    def _shift_and_log_scale(
        self, passed: torch.Tensor, cond: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(passed if cond is None else torch.cat([passed, cond], dim=1))
        return h[:, 0::2], bounded_log_scale(h[:, 1::2])

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> (y, sum of the log-scales per sample)."""
        passed, changed = x[:, : self.passed], x[:, self.passed :]
        shift, log_scale = self._shift_and_log_scale(passed, cond)
        changed = (changed + shift) * torch.exp(log_scale)
        return torch.cat([passed, changed], dim=1), log_scale.flatten(1).sum(dim=1)

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """y -> x for the same condition."""
        passed, changed = y[:, : self.passed], y[:, self.passed :]
        shift, log_scale = self._shift_and_log_scale(passed, cond)
        return torch.cat([passed, changed * torch.exp(-log_scale) - shift], dim=1)


class HCFlowStep(nn.Module):
    """actnorm -> invertible 1x1 conv -> bounded affine coupling (conditional when ``cond_channels > 0``)."""

    def __init__(self, channels: int, cond_channels: int, hidden: int) -> None:
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.permute = InvertibleConv1x1(channels)
        self.coupling = BoundedAffineCoupling(channels, cond_channels, hidden)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> (y, log|det dy/dx| per sample)."""
        x, logdet = self.actnorm(x)
        x, permute_logdet = self.permute(x)
        x, coupling_logdet = self.coupling(x, cond)
        return x, logdet + permute_logdet + coupling_logdet

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """y -> x: coupling, 1x1 conv and actnorm inverted in reverse order."""
        return self.actnorm.inverse(self.permute.inverse(self.coupling.inverse(y, cond)))


class ConditionalFlow(nn.Module):
    """Models a split-off part ``a`` given a condition ``u`` (the original's ``ConditionalFlow``, SR branch).

    ``features(u)``: ``first = conv_first(u)``, ``f1 = trunk0(first)``, ``f2 = trunk_conv(trunk1(f1)) + first``
    -> ``cat(f1, f2)`` (``feature_levels`` = 2 levels of ``rrdb_channels`` channels). Given those features, ``a``
    passes ``len(steps)`` conditional flow steps and the result has the prior N(mean, exp(logs)) with ``(mean,
    logs)`` the "cross" halves of ``prior(features)`` (a Conv2dZeros, so it starts as N(0, I)).
    """

    feature_levels = 2
    """How many ``rrdb_channels``-wide feature maps :meth:`features` returns (the original's
    ``num_features_condition``)."""

    def __init__(
        self,
        channels: int,
        cond_in_channels: int,
        steps: int,
        hidden: int,
        rrdb_blocks: tuple[int, int],
        rrdb_channels: int,
        growth: int,
    ) -> None:
        super().__init__()
        self.feature_channels = self.feature_levels * rrdb_channels
        self.conv_first = nn.Conv2d(cond_in_channels, rrdb_channels, 3, padding=1)
        self.trunk0 = nn.Sequential(*(RRDB(rrdb_channels, growth) for _ in range(rrdb_blocks[0])))
        self.trunk1 = nn.Sequential(*(RRDB(rrdb_channels, growth) for _ in range(rrdb_blocks[1])))
        self.trunk_conv = nn.Conv2d(rrdb_channels, rrdb_channels, 3, padding=1)
        _xavier(
            [module for module in (*self.trunk0.modules(), *self.trunk1.modules()) if isinstance(module, nn.Conv2d)]
        )
        self.steps = nn.ModuleList(HCFlowStep(channels, self.feature_channels, hidden) for _ in range(steps))
        self.prior = ZeroConv2d(self.feature_channels, 2 * channels)

    def features(self, u: torch.Tensor) -> torch.Tensor:
        """Condition (B, cond_in_channels, H, W) -> RRDB features (B, 2 rrdb_channels, H, W)."""
        first = self.conv_first(u)
        f1 = self.trunk0(first)
        return torch.cat([f1, self.trunk_conv(self.trunk1(f1)) + first], dim=1)

    def prior_of(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log-std) of the prior, each (B, channels, H, W)."""
        h = self.prior(features)
        return h[:, 0::2], h[:, 1::2]

    def forward(self, a: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """a -> (standardised latent eps = (z - mean) / std, log-det of the steps + log N(z; mean, std)) for
        z the steps' output."""
        logdet = a.new_zeros(a.shape[0])
        for step in self.steps:
            a, step_logdet = step(a, features)
            logdet = logdet + step_logdet
        mean, log_std = self.prior_of(features)
        return (a - mean) * torch.exp(-log_std), logdet + gaussian_log_likelihood(mean, log_std, a)

    def inverse(self, eps: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Scaled latent eps (the original's ``eps_std``-scaled draw; zeros give the prior mean) -> a."""
        mean, log_std = self.prior_of(features)
        a = mean + torch.exp(log_std) * eps
        for step in reversed(self.steps):
            a = step.inverse(a, features)
        return a


class _QuantiseStraightThrough(torch.autograd.Function):
    """The original's ``Quant``: clamp to [0, 1] and round to 1/255 forward; the gradient passes unchanged."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return torch.round(torch.clamp(x, 0.0, 1.0) * 255.0) / 255.0

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return grad


def quantise_8bit(image: torch.Tensor) -> torch.Tensor:
    """``image`` clamped to [0, 1] and rounded to multiples of 1/255, as an 8-bit file stores it, with a
    straight-through gradient (1 everywhere, also where the clamp cuts): the original's ``Quant``."""
    return _QuantiseStraightThrough.apply(image)


def level_condition(kept: torch.Tensor, coarser: Sequence[torch.Tensor]) -> torch.Tensor:
    """A level's condition: its kept part and the features of the coarser levels (next coarser first), upsampled
    by nearest neighbour to its size (x2, x4, ...)."""
    upsampled = [
        F.interpolate(features, scale_factor=2 ** (index + 1), mode="nearest") for index, features in enumerate(coarser)
    ]
    return torch.cat([kept, *upsampled], dim=1)


def build_levels(
    levels: int,
    steps: Sequence[int],
    cond_steps: Sequence[int],
    rrdb_blocks: Sequence[int],
    make_level: Callable[[int, int, int], nn.Module],
) -> nn.ModuleList:
    """The flow levels of an HCFlow (SR or rescaling), finest first, after checking the per-level sizes: level i
    squeezes its input to ``channels`` (4x its input's), keeps ``kept`` of them (half; the coarsest keeps the LR's
    3) and splits off the rest; ``make_level(i, channels, kept)`` builds it."""
    if levels < 1:
        raise TypeError("levels must be at least 1")
    if len(steps) != levels or len(cond_steps) != levels:
        raise TypeError(f"steps and cond_steps must list one number per level ({levels})")
    if len(rrdb_blocks) != 2:
        raise TypeError("rrdb_blocks must list the blocks of the two RRDB trunks")
    built = nn.ModuleList()
    channels = 3
    for level in range(levels):
        channels *= 4
        kept = channels // 2 if level < levels - 1 else 3
        built.append(make_level(level, channels, kept))
        channels = kept
    return built
