"""Invertible layers of Glow-style conditional flows on NCHW images (SRFlow's building blocks).

Every layer except :class:`Split` has the same interface:

* ``forward(x, cond=None) -> (y, logdet)``: the map x -> y and log|det dy/dx| per sample, shape (B,);
* ``inverse(y, cond=None) -> x``: its exact inverse for the same condition.

``cond`` is a (B, cond_channels, H, W) tensor at the resolution of ``x``; unconditional layers ignore it.
Affine scales use ``sigmoid(raw + 2) + 1e-4`` and networks output (shift, raw scale) interleaved
channel by channel (SRFlow's "cross" order: shift = h[:, 0::2], raw scale = h[:, 1::2]).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from flowsr_cli.models.linear_flow import AFFINE_EPS

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
    """2x2 space-to-depth: (B, C, H, W) -> (B, 4C, H/2, W/2); channel ``4c + 2dy + dx`` (Glow's order)."""
    batch, channels, height, width = x.shape
    if height % 2 or width % 2:
        raise ValueError(f"squeeze2d needs an even height and width, got {height}x{width}")
    x = x.reshape(batch, channels, height // 2, 2, width // 2, 2)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(batch, 4 * channels, height // 2, width // 2)


def unsqueeze2d(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`squeeze2d`: (B, 4C, H, W) -> (B, C, 2H, 2W)."""
    batch, channels, height, width = x.shape
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
    """Glow's invertible 1x1 convolution, LU-parametrised: W = P (L + I) (U + diag(sign_s * exp(log_s))).

    P and sign_s are fixed buffers, L (strictly lower) and U (strictly upper) and log_s are learned;
    W starts as a random orthogonal matrix, so log|det W| = sum(log_s) starts near 0.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        permutation, lower, upper = torch.linalg.lu(torch.linalg.qr(torch.randn(channels, channels))[0])
        diagonal = torch.diagonal(upper)
        self.register_buffer("permutation", permutation)
        self.register_buffer("sign_s", torch.sign(diagonal))
        self.lower = nn.Parameter(torch.tril(lower, -1))
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(diagonal.abs()))

    def matrix(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The (C, C) weight W, optionally computed in another dtype (e.g. float64)."""
        dtype = dtype or self.log_s.dtype
        eye = torch.eye(self.log_s.shape[0], dtype=dtype, device=self.log_s.device)
        lower = torch.tril(self.lower.to(dtype), -1) + eye
        diagonal = self.sign_s.to(dtype) * torch.exp(self.log_s.to(dtype))
        upper = torch.triu(self.upper.to(dtype), 1) + torch.diag(diagonal)
        return self.permutation.to(dtype) @ lower @ upper

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> (W x per pixel, H*W*sum(log_s)) per sample."""
        channels = x.shape[1]
        y = F.conv2d(x, self.matrix(x.dtype).view(channels, channels, 1, 1))
        return y, (x.shape[2] * x.shape[3] * self.log_s.sum()).expand(x.shape[0])

    def inverse(self, y: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """y -> W^-1 y per pixel; the inverse matrix is formed in float64 for accuracy."""
        channels = y.shape[1]
        inverse = torch.linalg.inv(self.matrix(torch.float64)).to(y.dtype)
        return F.conv2d(y, inverse.view(channels, channels, 1, 1))


def coupling_network(in_channels: int, out_channels: int, hidden: int) -> nn.Sequential:
    """SRFlow's affine network: conv3x3 -> ReLU -> conv1x1 -> ReLU -> conv3x3 initialised to zero."""
    last = nn.Conv2d(hidden, out_channels, 3, padding=1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(hidden, hidden, 1),
        nn.ReLU(),
        last,
    )


def _required(cond: torch.Tensor | None) -> torch.Tensor:
    if cond is None:
        raise ValueError("this layer is conditional: pass cond")
    return cond


def _shift_and_scale(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Interleaved network output -> (shift, scale = sigmoid(raw + 2) + 1e-4)."""
    return h[:, 0::2], torch.sigmoid(h[:, 1::2] + 2.0) + AFFINE_EPS


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

    The prior's mean and log-std come from one zero-initialised 3x3 conv on the kept channels
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
        self.prior_net = nn.Conv2d(self.kept + cond_channels, 2 * self.split, 3, padding=1)
        nn.init.zeros_(self.prior_net.weight)
        nn.init.zeros_(self.prior_net.bias)

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
