"""LINF's conditional flow on one D-vector per query: invertible linear layers and condition-given affines."""

from __future__ import annotations

import math
from collections.abc import Callable

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
        self._compiled: tuple[ColumnsKernel, ColumnsKernel] | None = None

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

    def use_compiled(self, compile_function: Callable[[ColumnsKernel], ColumnsKernel]) -> None:
        """Run both directions at inference as ``compile_function`` compiles :func:`latents_of_columns` and
        :func:`inverse_of_columns` (e.g. ``torch.compile``: each layer's elementwise pass fused with reading its
        affines, whatever dtype a conditioning grid stores them in)."""
        self._compiled = (compile_function(latents_of_columns), compile_function(inverse_of_columns))

    def latents_of_columns(self, x: torch.Tensor, affines: torch.Tensor) -> torch.Tensor:
        """x -> z for vectors laid out as columns (..., D, N) under :meth:`prepare`'s affines (..., C, N), read
        as float32 whatever they are stored in: :meth:`latents` in the layout where every elementwise pass reads
        whole contiguous rows."""
        kernel = latents_of_columns if self._compiled is None or torch.is_grad_enabled() else self._compiled[0]
        weights = torch.stack([linear.weight for linear in self.linears])
        return kernel(x, affines, weights, self.last.weight, self.last.bias)

    def inverse_of_columns(self, z: torch.Tensor, affines: torch.Tensor) -> torch.Tensor:
        """z -> x for vectors laid out as columns (..., D, N) under :meth:`prepare`'s affines (..., C, N), read
        as float32 whatever they are stored in."""
        kernel = inverse_of_columns if self._compiled is None or torch.is_grad_enabled() else self._compiled[1]
        last_inverse, last_bias = self.last.inverse_matrices(z.dtype)
        inverses = torch.stack([linear.inverse_matrices(z.dtype)[0].T for linear in self.linears])
        return kernel(z, affines, inverses, last_inverse.T, last_bias)

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


ColumnsKernel = Callable[..., torch.Tensor]
""":func:`latents_of_columns` or :func:`inverse_of_columns`, or a compiled version of one."""


def latents_of_columns(
    x: torch.Tensor, affines: torch.Tensor, weights: torch.Tensor, last_weight: torch.Tensor, last_bias: torch.Tensor
) -> torch.Tensor:
    """The flow forward x -> z of vectors laid out as columns (..., D, N) under prepared affines (..., C, N) (any
    float dtype, read as float32), the layers' weights stacked (layers, D, D) and the last linear's weight and
    bias: per layer one matrix product and one fused ``addcmul`` on contiguous rows."""
    scales, shifts = _layer_affines(affines, weights.shape[0], weights.shape[-1])
    z = x
    for layer in range(weights.shape[0]):
        z = torch.addcmul(shifts[layer], torch.matmul(weights[layer], z), scales[layer])
    return torch.matmul(last_weight, z).add_(last_bias.unsqueeze(-1))


def inverse_of_columns(
    z: torch.Tensor,
    affines: torch.Tensor,
    inverses: torch.Tensor,
    last_inverse: torch.Tensor,
    last_bias: torch.Tensor,
) -> torch.Tensor:
    """The flow inverse z -> x of :func:`latents_of_columns`, given each layer's W^-1 stacked (layers, D, D) and
    the last linear's W^-1 and its bias term ``-b W^-T`` (:meth:`InvertibleLinear.inverse_matrices`)."""
    scales, shifts = _layer_affines(affines, inverses.shape[0], inverses.shape[-1])
    x = torch.matmul(last_inverse, z).add_(last_bias.unsqueeze(-1))
    for layer in reversed(range(inverses.shape[0])):
        x = torch.matmul(inverses[layer], (x - shifts[layer]) / scales[layer])
    return x


def _layer_affines(affines: torch.Tensor, layers: int, features: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each layer's (scale, shift), (..., D, N) in float32, from prepared affines (..., C, N)."""
    per_layer = affines.float().unflatten(-2, (layers, 2, features))
    return list(per_layer.select(-3, 0).unbind(-3)), list(per_layer.select(-3, 1).unbind(-3))
