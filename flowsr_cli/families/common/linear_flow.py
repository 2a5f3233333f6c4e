"""LINF's conditional flow on one D-vector per query: invertible linear layers and condition-given affines."""

from __future__ import annotations

import math

import torch
from torch import nn

from flowsr_cli.families.common.derived import tensors_key

AFFINE_EPS = 1e-4
SCALE_OFFSET = 2.0
"""Added to a layer's raw scale before the sigmoid (LINF's parametrisation: scales start near 0.88)."""
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
        inverse, bias = self.inverse_matrices(y.dtype)
        return torch.addmm(bias, y, inverse)

    def inverse_matrices(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
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
        per_layer = self._by_layer(params, 1)
        return affine_scale(per_layer[:, :, 0]), per_layer[:, :, 1]

    def _by_layer(self, values: torch.Tensor, dim: int) -> torch.Tensor:
        """``values`` with its conditioning dimension ``dim`` (condition_size) split as it is laid out: (layers,
        2, features), each layer's scale half first, then its shift half."""
        return values.unflatten(dim, (len(self.linears), 2, self.features))

    def prepare(self, params: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The affines (..., condition_size, N) that :meth:`latents_of_columns` and :meth:`inverse_of_columns`
        read, from raw conditioning laid out feature-major (..., condition_size, N), one column per vector;
        written into ``out`` (that shape) if given. Per layer: its scale ``sigmoid(raw + 2) + 1e-4`` and its
        shift with the layer's linear bias folded in (``bias * scale + shift``), so each direction costs one
        matrix product and one fused elementwise pass per layer on contiguous rows. Computed once per
        conditioning and read by both directions. Differentiable where autograd needs it; otherwise written in
        place, a pass less per step."""
        raw = self._by_layer(params, -2)
        biases = torch.stack([linear.bias for linear in self.linears]).unsqueeze(-1).to(params.dtype)
        if torch.is_grad_enabled() and (params.requires_grad or biases.requires_grad):
            scale = affine_scale(raw.select(-3, 0))
            prepared = torch.stack([scale, torch.addcmul(raw.select(-3, 1), biases, scale)], dim=-3).flatten(-4, -2)
            return prepared if out is None else out.copy_(prepared)
        prepared = torch.empty_like(raw) if out is None else self._by_layer(out, -2)
        scale, shift = prepared.select(-3, 0), prepared.select(-3, 1)
        torch.add(raw.select(-3, 0), SCALE_OFFSET, out=scale)  # affine_scale, in place
        scale.sigmoid_().add_(AFFINE_EPS)
        torch.addcmul(raw.select(-3, 1), biases, scale, out=shift)
        return prepared.flatten(-4, -2) if out is None else out

    def latents_of_columns(self, x: torch.Tensor, affines: torch.Tensor) -> torch.Tensor:
        """x -> z for vectors laid out as columns (..., D, N) under :meth:`prepare`'s affines (..., C, N):
        :meth:`latents` in the layout where every elementwise pass reads whole contiguous rows."""
        scales, shifts = self._columns_affines(affines)
        z = x
        for layer, linear in enumerate(self.linears):
            z = torch.addcmul(shifts[layer], torch.matmul(linear.weight, z), scales[layer])
        return torch.matmul(self.last.weight, z).add_(self.last.bias.unsqueeze(-1))

    def inverse_of_columns(self, z: torch.Tensor, affines: torch.Tensor) -> torch.Tensor:
        """z -> x for vectors laid out as columns (..., D, N) under :meth:`prepare`'s affines (..., C, N)."""
        scales, shifts = self._columns_affines(affines)
        inverse, bias = self.last.inverse_matrices(z.dtype)
        x = torch.matmul(inverse.T, z).add_(bias.unsqueeze(-1))
        for layer in reversed(range(len(self.linears))):
            inverse, _ = self.linears[layer].inverse_matrices(z.dtype)
            x = torch.matmul(inverse.T, (x - shifts[layer]) / scales[layer])
        return x

    def _columns_affines(self, affines: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Each layer's (scale, shift), (..., D, N), from :meth:`prepare`'s affines."""
        per_layer = self._by_layer(affines, -2)
        return list(per_layer.select(-3, 0).unbind(-3)), list(per_layer.select(-3, 1).unbind(-3))

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
        """x -> z as :meth:`forward` gives it, without the log-density (for inference): (N, D), (N, C) -> (N, D)."""
        return self.latents_of_columns(x.mT, self.prepare(params.mT)).mT.contiguous()

    def inverse(self, z: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """z -> x: (N, D), (N, condition_size) -> (N, D)."""
        return self.inverse_of_columns(z.mT, self.prepare(params.mT)).mT.contiguous()


def affine_scale(raw: torch.Tensor) -> torch.Tensor:
    """An affine layer's scale from its raw value (LINF's conditioning, SRFlow's coupling nets):
    ``sigmoid(raw + 2) + 1e-4``."""
    return torch.sigmoid(raw + SCALE_OFFSET) + AFFINE_EPS
