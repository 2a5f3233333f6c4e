"""Invertible layers of Glow-style conditional flows on NCHW images (SRFlow's building blocks).

Every layer except :class:`Split` has the same interface:

* ``forward(x, cond=None) -> (y, logdet)``: the map x -> y and log|det dy/dx| per sample, shape (B,);
* ``inverse(y, cond=None) -> x``: its exact inverse for the same condition.

``cond`` is a (B, cond_channels, H, W) tensor at the resolution of ``x``; unconditional layers ignore it.
Affine scales use ``sigmoid(raw + 2) + 1e-4`` and networks output (shift, raw scale) interleaved
channel by channel (SRFlow's "cross" order: shift = h[:, 0::2], raw scale = h[:, 1::2]). The networks
are Glow's: hidden convs without bias followed by an actnorm, and a zero-initialised output conv whose
output is multiplied by ``exp(3 * logs)`` per channel (as in SRFlow's code, so its weights map one to one).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from flowsr_cli.families.common.layout import is_channels_last
from flowsr_cli.families.common.linear_flow import affine_scale

_LOG_2PI = math.log(2 * math.pi)


def standard_normal(
    shape: tuple[int, ...],
    *,
    device: torch.device,
    dtype: torch.dtype,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """N(0, I) noise drawn on the generator's device (so a CPU generator is reproducible anywhere), on ``device``."""
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source, dtype=dtype).to(device)


def gaussian_log_density(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over all but the batch dimension: (B, ...) -> (B,)."""
    return -0.5 * (z.pow(2) + _LOG_2PI).flatten(1).sum(dim=1)


def squeeze2d(x: torch.Tensor) -> torch.Tensor:
    """2x2 space-to-depth: (B, C, H, W) -> (B, 4C, H/2, W/2); channel ``4c + 2dy + dx`` (Glow's order), in ``x``'s
    layout (channels-last or contiguous)."""
    batch, channels, height, width = x.shape
    if height % 2 or width % 2:
        raise ValueError(f"squeeze2d needs an even height and width, got {height}x{width}")
    if is_channels_last(x):
        pixels = x.permute(0, 2, 3, 1).reshape(batch, height // 2, 2, width // 2, 2, channels)
        pixels = pixels.permute(0, 1, 3, 5, 2, 4).reshape(batch, height // 2, width // 2, 4 * channels)
        return pixels.permute(0, 3, 1, 2)
    x = x.reshape(batch, channels, height // 2, 2, width // 2, 2)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(batch, 4 * channels, height // 2, width // 2)


def unsqueeze2d(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`squeeze2d`: (B, 4C, H, W) -> (B, C, 2H, 2W), in ``x``'s layout."""
    batch, channels, height, width = x.shape
    if is_channels_last(x):
        pixels = x.permute(0, 2, 3, 1).reshape(batch, height, width, channels // 4, 2, 2)
        pixels = pixels.permute(0, 1, 4, 2, 5, 3).reshape(batch, 2 * height, 2 * width, channels // 4)
        return pixels.permute(0, 3, 1, 2)
    x = x.reshape(batch, channels // 4, 2, 2, height, width)
    return x.permute(0, 1, 4, 2, 5, 3).reshape(batch, channels // 4, 2 * height, 2 * width)


class Squeeze(nn.Module):
    """:func:`squeeze2d` as a flow layer (a permutation: log-det 0)."""

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> (B, 4C, H/2, W/2) and a zero log-det."""
        return squeeze2d(x), x.new_zeros(x.shape[0])

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 4C, H, W) -> (B, C, 2H, 2W)."""
        return unsqueeze2d(y)


class ActNorm(nn.Module):
    """y = (x + bias) * exp(log_scale) per channel, with Glow's data-dependent initialisation.

    The first forward pass in training mode sets bias and scale so that this batch leaves with zero
    mean and unit standard deviation per channel; the buffer ``initialized`` records that it happened,
    so a saved and reloaded model is not initialised again.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def _initialize(self, x: torch.Tensor) -> None:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + self.eps))
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> (y, H*W*sum(log_scale)) per sample."""
        if self.training and not bool(self.initialized):
            self._initialize(x)
        logdet = (x.shape[2] * x.shape[3] * self.log_scale.sum()).expand(x.shape[0])
        return (x + self.bias) * torch.exp(self.log_scale), logdet

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """y -> x."""
        return y * torch.exp(-self.log_scale) - self.bias


class InvertibleConv1x1(nn.Module):
    """Glow's invertible 1x1 convolution with a full (C, C) weight W, as SRFlow trains it (``LU_decomposed=False``).

    W starts as a random orthogonal matrix (log|det W| = 0); log|det W| comes from ``torch.slogdet``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linalg.qr(torch.randn(channels, channels))[0])

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> (W x per pixel, H*W*log|det W|) per sample."""
        channels = x.shape[1]
        y = F.conv2d(x, self.weight.view(channels, channels, 1, 1))
        return y, (torch.linalg.slogdet(self.weight)[1] * (x.shape[2] * x.shape[3])).expand(x.shape[0])

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """y -> W^-1 y per pixel; the inverse matrix is formed in float64 for accuracy."""
        channels = y.shape[1]
        inverse = torch.linalg.inv(self.weight.double()).to(y.dtype)
        return F.conv2d(y, inverse.view(channels, channels, 1, 1))


ZERO_CONV_LOGSCALE = 3.0
"""Glow's ``Conv2dZeros`` scales its output by ``exp(logs * 3)``."""
HIDDEN_CONV_STD = 0.05
"""Glow's hidden convs start with N(0, 0.05^2) weights."""


class ActNormConv2d(nn.Conv2d):
    """Glow's hidden conv: a bias-free conv ("same" padding) followed by an :class:`ActNorm`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        nn.init.normal_(self.weight, 0.0, HIDDEN_CONV_STD)
        self.actnorm = ActNorm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """conv, then actnorm (initialised from the first training batch, like every actnorm)."""
        return self.actnorm(super().forward(x))[0]


class ZeroConv2d(nn.Conv2d):
    """Glow's output conv: 3x3 with bias, output times ``exp(3 * logs)`` per channel; all zero, so it starts at 0."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)
        self.logs = nn.Parameter(torch.zeros(out_channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(conv(x) + bias) * exp(3 * logs)."""
        return super().forward(x) * torch.exp(self.logs * ZERO_CONV_LOGSCALE)


def coupling_network(in_channels: int, out_channels: int, hidden: int) -> nn.Sequential:
    """SRFlow's affine network: conv3x3+actnorm -> ReLU -> conv1x1+actnorm -> ReLU -> zero conv3x3."""
    return nn.Sequential(
        ActNormConv2d(in_channels, hidden, 3),
        nn.ReLU(),
        ActNormConv2d(hidden, hidden, 1),
        nn.ReLU(),
        ZeroConv2d(hidden, out_channels),
    )


def _required(cond: torch.Tensor | None) -> torch.Tensor:
    if cond is None:
        raise ValueError("this layer is conditional: pass cond")
    return cond


def _shift_and_scale(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Interleaved network output -> (shift, scale = sigmoid(raw + 2) + 1e-4)."""
    return h[:, 0::2], affine_scale(h[:, 1::2])


def _log_scale_sum(scale: torch.Tensor) -> torch.Tensor:
    return torch.log(scale).flatten(1).sum(dim=1)


class ConditionalAffineInjector(nn.Module):
    """y = (x + shift) * scale with shift and scale from the condition only (SRFlow's affine injector)."""

    def __init__(self, channels: int, cond_channels: int, hidden: int) -> None:
        super().__init__()
        self.net = coupling_network(cond_channels, 2 * channels, hidden)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> ((x + shift) * scale, sum(log scale))."""
        shift, scale = _shift_and_scale(self.net(_required(cond)))
        return (x + shift) * scale, _log_scale_sum(scale)

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """y -> y / scale - shift."""
        shift, scale = _shift_and_scale(self.net(_required(cond)))
        return y / scale - shift


class ConditionalAffineCoupling(nn.Module):
    """Affine coupling: the first ``channels // 2`` channels pass unchanged and, with the condition,
    give shift and scale for the rest: y_b = (x_b + shift) * scale.

    With ``cond_channels=0`` it is an unconditional coupling and ``cond`` must be None.
    """

    def __init__(self, channels: int, cond_channels: int, hidden: int) -> None:
        super().__init__()
        self.passed = channels // 2
        self.net = coupling_network(self.passed + cond_channels, 2 * (channels - self.passed), hidden)

    def _shift_and_scale(self, passed: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = passed if cond is None else torch.cat([passed, cond], dim=1)
        return _shift_and_scale(self.net(inputs))

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> (y, sum(log scale))."""
        passed, changed = x[:, : self.passed], x[:, self.passed :]
        shift, scale = self._shift_and_scale(passed, cond)
        return torch.cat([passed, (changed + shift) * scale], dim=1), _log_scale_sum(scale)

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """y -> x."""
        passed, changed = y[:, : self.passed], y[:, self.passed :]
        shift, scale = self._shift_and_scale(passed, cond)
        return torch.cat([passed, changed / scale - shift], dim=1)


class FlowStep(nn.Module):
    """actnorm -> invertible 1x1 conv, then (if ``conditional``) affine injector -> affine coupling."""

    def __init__(self, channels: int, cond_channels: int, hidden: int, conditional: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [ActNorm(channels), InvertibleConv1x1(channels)]
        if conditional:
            layers += [
                ConditionalAffineInjector(channels, cond_channels, hidden),
                ConditionalAffineCoupling(channels, cond_channels, hidden),
            ]
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> (y, log-det) through all layers."""
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, layer_logdet = layer(x, cond)
            logdet = logdet + layer_logdet
        return x, logdet

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """y -> x through the layers in reverse."""
        for layer in reversed(self.layers):
            y = layer.inverse(y, cond)
        return y


class Split(nn.Module):
    """Factor out the last ``channels // 2`` channels as a latent level with a learned Gaussian prior.

    The prior's mean and log-std come from one :class:`ZeroConv2d` on the kept channels
    (concatenated with the condition when ``cond_channels > 0``; SRFlow's models use the kept half
    only), so it starts as N(0, I). The level's latent is the split-off part *standardised by its
    prior*, ``eps = (z_split - mean) / std``: every latent of the flow is then N(0, I) under the model,
    and sampling at temperature t draws ``eps = t * N(0, I)``.

    Interface: ``forward(x, cond) -> (kept, logdet, eps)`` where logdet is log N(z_split; mean, std)
    per sample (the prior's log-likelihood, to be added to the flow's log-det), and
    ``inverse(kept, eps=None, cond=None, temperature=1.0, generator=None) -> x``.
    """

    def __init__(self, channels: int, cond_channels: int = 0) -> None:
        super().__init__()
        self.split = channels // 2
        self.kept = channels - self.split
        self.cond_channels = cond_channels
        self.prior_net = ZeroConv2d(self.kept + cond_channels, 2 * self.split)

    def prior(self, kept: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_std) of the split-off channels, each (B, channels // 2, H, W)."""
        inputs = kept if self.cond_channels == 0 else torch.cat([kept, _required(cond)], dim=1)
        h = self.prior_net(inputs)
        return h[:, 0::2], h[:, 1::2]

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x -> (kept channels, log N(z_split; mean, std) per sample, standardised latent eps)."""
        kept, z_split = x[:, : self.kept], x[:, self.kept :]
        mean, log_std = self.prior(kept, cond)
        eps = (z_split - mean) * torch.exp(-log_std)
        return kept, gaussian_log_density(eps) - log_std.flatten(1).sum(dim=1), eps

    def inverse(
        self,
        kept: torch.Tensor,
        eps: torch.Tensor | None = None,
        cond: torch.Tensor | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """(kept, eps) -> x; without ``eps``, draw it as ``temperature * N(0, I)`` from ``generator``."""
        mean, log_std = self.prior(kept, cond)
        if eps is None:
            eps = temperature * standard_normal(
                tuple(mean.shape), device=mean.device, dtype=mean.dtype, generator=generator
            )
        return torch.cat([kept, mean + torch.exp(log_std) * eps], dim=1)
