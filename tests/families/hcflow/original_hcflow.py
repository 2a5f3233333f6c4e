"""Test support: an independent re-implementation of the original HCFlow SR network (JingyunLiang/HCFlow).

It follows ``codes/models/modules/HCFlowNet_SR_arch.py`` (``normal_flow_diracLR``, ``reverse_flow_diracLR``),
``FlowNet_SR_x4.py`` and ``FlowNet_SR_x8.py`` (``normal_flow``, ``reverse_flow``), ``ConditionalFlow.py`` (SR
branch), ``FlowStep.py``, ``AffineCouplings.py`` (``AffineCoupling`` with the ``FCN``), ``ActNorms.py``,
``Permutations.py`` (``InvertibleConv1x1``, ``LU_decomposed=False``), ``Basic.py`` and ``thops.py`` on the
CPU, with the original's module and attribute names so that ``state_dict`` keys are the original's. The
``opt`` dictionaries become explicit arguments; actnorms are taken as initialised (loaded checkpoints). It
imports nothing from flowsr_cli: tests check flowsr against it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOG_2PI = float(math.log(2 * math.pi))


# ---- thops.py ----


def split_feature(tensor: torch.Tensor, kind: str = "split") -> tuple[torch.Tensor, torch.Tensor]:
    channels = tensor.size(1)
    if kind == "split":
        return tensor[:, : channels // 2, ...], tensor[:, channels // 2 :, ...]
    return tensor[:, 0::2, ...], tensor[:, 1::2, ...]


def thops_sum(tensor: torch.Tensor, dim: list[int]) -> torch.Tensor:
    for d in sorted(dim):
        tensor = tensor.sum(dim=d, keepdim=True)
    for i, d in enumerate(sorted(dim)):
        tensor = tensor.squeeze(d - i)
    return tensor


def pixels(tensor: torch.Tensor) -> int:
    return int(tensor.size(2) * tensor.size(3))


# ---- ActNorms.py, Permutations.py, Basic.py ----


class ActNorm2d(nn.Module):
    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.register_parameter("bias", nn.Parameter(torch.zeros(1, num_features, 1, 1)))
        self.register_parameter("logs", nn.Parameter(torch.zeros(1, num_features, 1, 1)))

    def forward(self, input: Tensor, logdet: Any = None, reverse: bool = False) -> tuple[Tensor, Any]:
        if not reverse:
            input = input + self.bias
            input = input * torch.exp(self.logs)
        else:
            input = input * torch.exp(-self.logs)
        if logdet is not None:
            dlogdet = torch.sum(self.logs) * pixels(input)
            logdet = logdet + (-dlogdet if reverse else dlogdet)
        if reverse:
            input = input - self.bias
        return input, logdet


class InvertibleConv1x1(nn.Module):
    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.w_shape = [num_channels, num_channels]
        self.register_parameter("weight", nn.Parameter(torch.linalg.qr(torch.randn(*self.w_shape))[0]))

    def forward(self, input: Tensor, logdet: Any = None, reverse: bool = False) -> tuple[Tensor, Any]:
        if not reverse:
            dlogdet = torch.slogdet(self.weight.to("cpu"))[1] * pixels(input)
            weight = self.weight.view(self.w_shape[0], self.w_shape[1], 1, 1)
            z = F.conv2d(input, weight)
            return z, (logdet + dlogdet if logdet is not None else logdet)
        weight = torch.inverse(self.weight.double()).float().view(self.w_shape[0], self.w_shape[1], 1, 1)
        return F.conv2d(input, weight), logdet


class Conv2d(nn.Conv2d):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size, 1, (kernel_size - 1) // 2, bias=False)
        self.actnorm = ActNorm2d(out_channels)

    def forward(self, input: Tensor) -> Tensor:
        x = super().forward(input)
        x, _ = self.actnorm(x)
        return x


class Conv2dZeros(nn.Conv2d):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, 3, 1, 1)
        self.logscale_factor = 3
        self.register_parameter("logs", nn.Parameter(torch.zeros(out_channels, 1, 1)))

    def forward(self, input: Tensor) -> Tensor:
        output = super().forward(input)
        return output * torch.exp(self.logs * self.logscale_factor)


class GaussianDiag:
    @staticmethod
    def likelihood(mean: Tensor, logs: Tensor, x: Tensor) -> Tensor:
        return -0.5 * (logs * 2.0 + ((x - mean) ** 2) / torch.exp(logs * 2.0) + LOG_2PI)

    @staticmethod
    def logp(mean: Tensor, logs: Tensor, x: Tensor) -> Tensor:
        return thops_sum(GaussianDiag.likelihood(mean, logs, x), dim=[1, 2, 3])

    @staticmethod
    def sample(mean: Tensor, logs: Tensor, eps_std: Any = None) -> Tensor:
        eps = torch.normal(mean=torch.zeros_like(mean), std=torch.ones_like(logs) * eps_std)
        return mean + torch.exp(logs) * eps


def squeeze2d(input: torch.Tensor, factor: int = 2) -> torch.Tensor:
    b, c, h, w = input.size()
    x = input.view(b, c, h // factor, factor, w // factor, factor)
    x = x.permute(0, 1, 3, 5, 2, 4).contiguous()
    return x.view(b, c * factor * factor, h // factor, w // factor)


def unsqueeze2d(input: torch.Tensor, factor: int = 2) -> torch.Tensor:
    b, c, h, w = input.size()
    x = input.view(b, c // factor**2, factor, factor, h, w)
    x = x.permute(0, 1, 4, 2, 5, 3).contiguous()
    return x.view(b, c // factor**2, h * factor, w * factor)


class SqueezeLayer(nn.Module):
    def forward(self, input: Tensor, logdet: Any = None, reverse: bool = False) -> tuple[Tensor, Any]:
        return (unsqueeze2d(input) if reverse else squeeze2d(input)), logdet


class Quant(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, input: Tensor) -> Tensor:
        input = torch.clamp(input, 0, 1)
        return (input * 255.0).round() / 255.0

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tensor:
        return grad_output


class Split(nn.Module):
    def __init__(self, num_channels_split: int, level: int) -> None:
        super().__init__()
        self.num_channels_split = num_channels_split
        self.level = level

    def forward(self, z: Tensor, z2: Any = None, reverse: bool = False) -> Any:
        if not reverse:
            return z[:, : self.num_channels_split, ...], z[:, self.num_channels_split :, ...]
        return torch.cat((z, z2), dim=1)


class ResidualDenseBlock(nn.Module):
    def __init__(self, nf: int, gc: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(nf, gc, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf + gc, gc, 3, 1, 1)
        self.conv3 = nn.Conv2d(nf + 2 * gc, gc, 3, 1, 1)
        self.conv4 = nn.Conv2d(nf + 3 * gc, gc, 3, 1, 1)
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, nf: int, gc: int) -> None:
        super().__init__()
        self.RDB1 = ResidualDenseBlock(nf, gc)
        self.RDB2 = ResidualDenseBlock(nf, gc)
        self.RDB3 = ResidualDenseBlock(nf, gc)

    def forward(self, x: Tensor) -> Tensor:
        out = self.RDB3(self.RDB2(self.RDB1(x)))
        return out * 0.2 + x


class FCN(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.conv1 = Conv2d(in_channels, hidden_channels, 3)
        self.conv2 = Conv2d(hidden_channels, hidden_channels, 1)
        self.conv3 = Conv2dZeros(hidden_channels, out_channels)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(self.relu(self.conv2(self.relu(self.conv1(x)))))


# ---- AffineCouplings.py, FlowStep.py ----


class AffineCoupling(nn.Module):
    def __init__(self, in_channels: int, cond_channels: int | None, hidden_channels: int) -> None:
        super().__init__()
        self.cond_channels = cond_channels
        f_in = in_channels // 2 if cond_channels is None else in_channels // 2 + cond_channels
        self.f = FCN(f_in, (in_channels - in_channels // 2) * 2, hidden_channels)

    def forward(self, z: Tensor, u: Any = None, logdet: Any = None, reverse: bool = False) -> tuple[Tensor, Any]:
        z1, z2 = split_feature(z, "split")
        h = self.f(z1) if self.cond_channels is None else self.f(torch.cat((z1, u), dim=1))
        shift, scale = split_feature(h, "cross")
        logscale = 0.318 * torch.atan(2 * scale)
        if not reverse:
            z2 = (z2 + shift) * torch.exp(logscale)
            if logdet is not None:
                logdet += thops_sum(logscale, dim=[1, 2, 3])
        else:
            z2 = z2 * torch.exp(-logscale) - shift
        return torch.cat((z1, z2), dim=1), logdet


class FlowStep(nn.Module):
    def __init__(self, in_channels: int, cond_channels: int | None, hidden_channels: int) -> None:
        super().__init__()
        self.actnorm = ActNorm2d(in_channels)
        self.permute = InvertibleConv1x1(in_channels)
        self.affine = AffineCoupling(in_channels, cond_channels, hidden_channels)

    def forward(self, z: Tensor, u: Any = None, logdet: Any = None, reverse: bool = False) -> tuple[Tensor, Any]:
        if not reverse:
            z, logdet = self.actnorm(z, logdet=logdet, reverse=False)
            z, logdet = self.permute(z, logdet=logdet, reverse=False)
            return self.affine(z, u=u, logdet=logdet, reverse=False)
        z, _ = self.affine(z, u=u, reverse=True)
        z, _ = self.permute(z, reverse=True)
        z, _ = self.actnorm(z, reverse=True)
        return z, logdet


# ---- ConditionalFlow.py (SR) ----


class ConditionalFlow(nn.Module):
    def __init__(
        self, num_channels: int, num_channels_split: int, n_flow_step: int, opt: dict, num_levels_condition: int
    ) -> None:
        super().__init__()
        nf, gc, nb = opt["RRDB_nf"], opt["RRDB_gc"], opt["RRDB_nb"]
        self.conv_first = nn.Conv2d(num_channels_split + nf * 2 * num_levels_condition, nf, 3, 1, 1, bias=True)
        self.RRDB_trunk0 = nn.Sequential(*(RRDB(nf, gc) for _ in range(nb[0])))
        self.RRDB_trunk1 = nn.Sequential(*(RRDB(nf, gc) for _ in range(nb[1])))
        self.trunk_conv1 = nn.Conv2d(nf, nf, 3, 1, 1, bias=True)
        self.additional_flow_steps = nn.ModuleList(
            FlowStep(num_channels - num_channels_split, nf * 2, opt["hidden_channels"]) for _ in range(n_flow_step)
        )
        self.f = Conv2dZeros(nf * 2, (num_channels - num_channels_split) * 2)

    def forward(self, z: Any, u: Tensor, eps_std: Any = None, logdet: Any = 0.0, reverse: bool = False) -> Any:
        conditional_feature = self.get_conditional_feature_SR(u)
        if not reverse:
            for layer in self.additional_flow_steps:
                z, logdet = layer(z, u=conditional_feature, logdet=logdet, reverse=False)
            h = self.f(conditional_feature)
            mean, logs = split_feature(h, "cross")
            logdet += GaussianDiag.logp(mean, logs, z)
            return logdet, conditional_feature
        h = self.f(conditional_feature)
        mean, logs = split_feature(h, "cross")
        z = GaussianDiag.sample(mean, logs, eps_std)
        for layer in reversed(self.additional_flow_steps):
            z, _ = layer(z, u=conditional_feature, reverse=True)
        return z, logdet, conditional_feature

    def get_conditional_feature_SR(self, u: Tensor) -> Tensor:
        u_feature_first = self.conv_first(u)
        u_feature1 = self.RRDB_trunk0(u_feature_first)
        u_feature2 = self.trunk_conv1(self.RRDB_trunk1(u_feature1)) + u_feature_first
        return torch.cat([u_feature1, u_feature2], 1)


# ---- FlowNet_SR_x4.py / FlowNet_SR_x8.py ----


class FlowNet(nn.Module):
    """``L`` = 2 follows FlowNet_SR_x4, ``L`` = 3 FlowNet_SR_x8; ``K`` and ``after`` are per level."""

    def __init__(self, L: int, K: list[int], after: list[int], hidden: int, split_opt: dict) -> None:
        super().__init__()
        self.L = L
        self.layers = nn.ModuleList()
        channels = 3
        for level in range(L):
            self.layers.append(SqueezeLayer())
            channels *= 4
            for _ in range(K[level] - after[level]):
                self.layers.append(FlowStep(channels, None, hidden))
            split = channels // 2 if level < L - 1 else 3
            self.layers.append(Split(split, level))
            condition = ConditionalFlow(channels, split, after[level], split_opt, L - 1 - level)
            setattr(self, f"level{level}_condFlow", condition)
            channels = split

    def forward(
        self, hr: Any = None, z: Any = None, eps_std: Any = None, logdet: Any = None, reverse: bool = False
    ) -> Any:
        if not reverse:
            return self.normal_flow(hr, logdet)
        return self.reverse_flow(z, eps_std)

    def normal_flow(self, z: Tensor, logdet: Tensor) -> tuple[Tensor, Tensor]:
        for layer in self.layers:
            if isinstance(layer, FlowStep):
                z, logdet = layer(z, None, logdet=logdet, reverse=False)
            elif isinstance(layer, SqueezeLayer):
                z, logdet = layer(z, logdet=logdet, reverse=False)
            elif self.L == 2:
                if layer.level == 0:
                    z, a1 = layer(z, reverse=False)
                    y1 = z.clone()
                elif layer.level == 1:
                    z, a2 = layer(z, reverse=False)
                    logdet, cf2 = self.level1_condFlow(a2, z, logdet=logdet, reverse=False)
                    cf1 = torch.cat([y1, F.interpolate(cf2, scale_factor=2, mode="nearest")], 1)
                    logdet, _ = self.level0_condFlow(a1, cf1, logdet=logdet, reverse=False)
            else:
                if layer.level == 0:
                    z, a1 = layer(z, reverse=False)
                    y1 = z.clone()
                elif layer.level == 1:
                    z, a2 = layer(z, reverse=False)
                    y2 = z.clone()
                elif layer.level == 2:
                    z, a3 = layer(z, reverse=False)
                    logdet, cf3 = self.level2_condFlow(a3, z, logdet=logdet, reverse=False)
                    cf2 = torch.cat([y2, F.interpolate(cf3, scale_factor=2, mode="nearest")], 1)
                    logdet, cf2 = self.level1_condFlow(a2, cf2, logdet=logdet, reverse=False)
                    cf1 = torch.cat(
                        [
                            y1,
                            F.interpolate(cf2, scale_factor=2, mode="nearest"),
                            F.interpolate(cf3, scale_factor=4, mode="nearest"),
                        ],
                        1,
                    )
                    logdet, _ = self.level0_condFlow(a1, cf1, logdet=logdet, reverse=False)
        return z, logdet

    def reverse_flow(self, z: Tensor, eps_std: float) -> Tensor:
        for layer in reversed(self.layers):
            if isinstance(layer, FlowStep):
                z, _ = layer(z, None, reverse=True)
            elif isinstance(layer, SqueezeLayer):
                z, _ = layer(z, reverse=True)
            elif self.L == 2:
                if layer.level == 1:
                    a2, _, cf2 = self.level1_condFlow(None, z, eps_std=eps_std, reverse=True)
                    z = layer(z, a2, reverse=True)
                elif layer.level == 0:
                    cf1 = torch.cat([z, F.interpolate(cf2, scale_factor=2, mode="nearest")], 1)
                    a1, _, _ = self.level0_condFlow(None, cf1, eps_std=eps_std, reverse=True)
                    z = layer(z, a1, reverse=True)
            else:
                if layer.level == 2:
                    a3, _, cf3 = self.level2_condFlow(None, z, eps_std=eps_std, reverse=True)
                    z = layer(z, a3, reverse=True)
                elif layer.level == 1:
                    cf2 = torch.cat([z, F.interpolate(cf3, scale_factor=2, mode="nearest")], 1)
                    a2, _, cf2 = self.level1_condFlow(None, cf2, eps_std=eps_std, reverse=True)
                    z = layer(z, a2, reverse=True)
                elif layer.level == 0:
                    cf1 = torch.cat(
                        [
                            z,
                            F.interpolate(cf2, scale_factor=2, mode="nearest"),
                            F.interpolate(cf3, scale_factor=4, mode="nearest"),
                        ],
                        1,
                    )
                    a1, _, _ = self.level0_condFlow(None, cf1, eps_std=eps_std, reverse=True)
                    z = layer(z, a1, reverse=True)
        return z


# ---- HCFlowNet_SR_arch.py ----


class HCFlowNet_SR(nn.Module):
    def __init__(self, L: int, K: list[int], after: list[int], hidden: int, split_opt: dict, quant: int = 64) -> None:
        super().__init__()
        self.quant = quant
        self.flow = FlowNet(L, K, after, hidden, split_opt)

    def forward(self, hr: Any = None, lr: Any = None, eps_std: Any = None, reverse: bool = False) -> Any:
        if not reverse:
            return self.normal_flow_diracLR(hr, lr)
        return torch.clamp(self.flow(z=lr, eps_std=eps_std, reverse=True), 0, 1)

    def normal_flow_diracLR(self, hr: Tensor, lr: Tensor) -> tuple[Tensor, Tensor]:
        n_pixels = pixels(hr)
        hr = hr + (torch.rand(hr.shape, device=hr.device)) / self.quant
        logdet = torch.zeros_like(hr[:, 0, 0, 0]) + float(-math.log(self.quant) * n_pixels)
        fake_lr_from_hr, logdet = self.flow(hr=hr, logdet=logdet, reverse=False)
        fake_lr_from_hr = Quant.apply(fake_lr_from_hr)
        objective = logdet + GaussianDiag.logp(lr, -torch.ones_like(lr) * 6, fake_lr_from_hr)
        nll = ((-objective) / float(math.log(2.0) * n_pixels)).mean()
        return torch.clamp(fake_lr_from_hr, 0, 1), nll


def tamed_original(L: int, K: list[int], after: list[int], hidden: int, split_opt: dict, seed: int) -> HCFlowNet_SR:
    """An original-layout HCFlow with seeded random weights away from their start but tame enough that every
    direction stays finite and well conditioned: actnorms and zero-initialised convs get small random values,
    the 1x1 weights are perturbed orthogonal matrices, hidden convs have std 0.05, RRDB convs std 0.02."""
    torch.manual_seed(seed)
    net = HCFlowNet_SR(L, K, after, hidden, split_opt)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, ActNorm2d):
                module.bias.normal_(0.0, 0.2)
                module.logs.normal_(0.0, 0.2)
            elif isinstance(module, InvertibleConv1x1):
                module.weight.add_(torch.randn_like(module.weight), alpha=0.2 / module.weight.shape[0] ** 0.5)
            elif isinstance(module, Conv2dZeros):
                for parameter in (module.weight, module.bias, module.logs):
                    parameter.normal_(0.0, 0.05)
            elif isinstance(module, Conv2d):
                module.weight.normal_(0.0, 0.05)
            elif isinstance(module, nn.Conv2d):
                module.weight.normal_(0.0, 0.02)
                module.bias.normal_(0.0, 0.02)
    return net.eval()
