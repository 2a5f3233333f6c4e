"""LINF's conditional flow on one D-vector per query: invertible linear layers and condition-given affines."""

from __future__ import annotations

import math

import torch
from torch import nn

from flowsr_cli.families.common.derived import tensors_key

AFFINE_EPS = 1e-4
_LOG_2PI = math.log(2 * math.pi)


class InvertibleLinear(nn.Module):
    """y = x W^T + b with a free square W (initialised orthogonal, so log|det W| starts at 0)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linalg.qr(torch.randn(features, features))[0])
        self.bias = nn.Parameter(torch.zeros(features))
        self._inverse_cache: tuple[tuple[object, ...], torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, D) -> (N, D) and log|det W| (a scalar, the same for every row)."""
        return nn.functional.linear(x, self.weight, self.bias), torch.linalg.slogdet(self.weight)[1]

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Solve for x: ``x = y W^-T - b W^-T``, one fused matrix product, W^-1 formed in float64."""
        inverse, bias = self._inverse(y.dtype)
        return torch.addmm(bias, y, inverse)

    def _inverse(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(W^-T, -b W^-T) in ``dtype``; kept while the weights are unchanged and no gradient needs them."""
        if torch.is_grad_enabled() and self.weight.requires_grad:
            return self._formed_inverse(dtype)
        key = (tensors_key((self.weight, self.bias)), dtype)
        if self._inverse_cache is None or self._inverse_cache[0] != key:
            with torch.inference_mode(False), torch.no_grad():  # usable later with autograd, too
                self._inverse_cache = (key, *self._formed_inverse(dtype))
        return self._inverse_cache[1], self._inverse_cache[2]

    def _formed_inverse(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        inverse = torch.linalg.inv(self.weight.double()).T
        return inverse.to(dtype), (-(self.bias.double() @ inverse)).to(dtype)


class ConditionalLinearFlow(nn.Module):
    """``layers`` x {invertible linear, affine with scale/shift from the condition}, then a last linear.

    Per layer the condition gives 2*D numbers: raw scale (first D) and shift (last D), with
    scale = sigmoid(raw + 2) + 1e-4 (LINF's parametrisation and channel order).
    """

    def __init__(self, features: int, layers: int = 10) -> None:
        super().__init__()
        self.features = features
        self.linears = nn.ModuleList(InvertibleLinear(features) for _ in range(layers))
        self.last = InvertibleLinear(features)

    @property
    def condition_size(self) -> int:
        """How many conditioning numbers one vector needs."""
        return 2 * self.features * len(self.linears)

    def _affines(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every layer's (scale, shift), each (N, layers, D), in one pass over the conditioning
        (elementwise work on 10 strided 27-wide slices per layer costs more than on one block)."""
        per_layer = params.view(params.shape[0], len(self.linears), 2, self.features)
        scale = torch.sigmoid(per_layer[:, :, 0] + 2.0) + AFFINE_EPS
        return scale, per_layer[:, :, 1]

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> (z, log p(x)) with a standard normal base: (N, D), (N, condition_size) -> (N, D), (N,)."""
        z = x
        scales, shifts = self._affines(params)
        log_det = torch.log(scales).sum(dim=(1, 2))
        for layer, linear in enumerate(self.linears):
            z, linear_log_det = linear(z)
            z = z * scales[:, layer] + shifts[:, layer]
            log_det = log_det + linear_log_det
        z, last_log_det = self.last(z)
        log_base = -0.5 * (z.pow(2) + _LOG_2PI).sum(dim=1)
        return z, log_det + last_log_det + log_base

    def latents(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """x -> z as :meth:`forward` gives it, without the log-density (for inference)."""
        z = x
        scales, shifts = self._affines(params)
        for layer, linear in enumerate(self.linears):
            z = torch.addcmul(shifts[:, layer], nn.functional.linear(z, linear.weight, linear.bias), scales[:, layer])
        return nn.functional.linear(z, self.last.weight, self.last.bias)

    def inverse(self, z: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """z -> x: (N, D), (N, condition_size) -> (N, D)."""
        x = self.last.inverse(z)
        scales, shifts = self._affines(params)
        for layer in reversed(range(len(self.linears))):
            x = self.linears[layer].inverse((x - shifts[:, layer]) / scales[:, layer])
        return x
