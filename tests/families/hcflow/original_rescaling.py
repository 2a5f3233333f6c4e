"""Test support: an independent re-implementation of the original HCFlow rescaling network (JingyunLiang/HCFlow).

It follows ``codes/models/modules/HCFlowNet_Rescaling_arch.py`` (``normal_flow_diracLR``, ``reverse_flow_diracLR``),
``FlowNet_Rescaling_x4.py`` (``normal_flow``, ``reverse_flow``), ``ConditionalFlow.py`` (the ``SR=False`` branch),
``FlowStep.py`` (``flow_permutation`` invconv / none, ``flow_coupling`` Affine / Affine3shift),
``AffineCouplings.py`` (``AffineCoupling3shift``) and ``Basic.py`` (``HaarDownsampling``, ``DenseBlock``) on the
CPU, with the original's module and attribute names so that ``state_dict`` keys are the original's; the pieces the
SR network shares (actnorm, 1x1 conv, ``FCN``, ``AffineCoupling``, RRDB, ``GaussianDiag``, ``Split``) come from
:mod:`tests.families.hcflow.original_hcflow`. The ``opt`` dictionaries become explicit arguments; actnorms are taken
as initialised (loaded checkpoints). It imports nothing from flowsr_cli: tests check flowsr against it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tests.families.hcflow.original_hcflow import (
    RRDB,
    ActNorm2d,
    AffineCoupling,
    Conv2d,
    Conv2dZeros,
    GaussianDiag,
    InvertibleConv1x1,
    Quant,
    Split,
    split_feature,
    thops_sum,
)

# ---- Basic.py ----


class DenseBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, gc: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, gc, 3, 1, 1, bias=True)
        self.conv2 = nn.Conv2d(in_channels + gc, gc, 3, 1, 1, bias=True)
        self.conv3 = nn.Conv2d(in_channels + 2 * gc, gc, 3, 1, 1, bias=True)
        self.conv4 = nn.Conv2d(in_channels + 3 * gc, gc, 3, 1, 1, bias=True)
        self.conv5 = nn.Conv2d(in_channels + 4 * gc, out_channels, 3, 1, 1, bias=True)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        return self.conv5(torch.cat((x, x1, x2, x3, x4), 1))


class HaarDownsampling(nn.Module):
    def __init__(self, channel_in: int) -> None:
        super().__init__()
        self.channel_in = channel_in
        weights = torch.ones(4, 1, 2, 2)
        weights[1, 0, 0, 1] = -1
        weights[1, 0, 1, 1] = -1
        weights[2, 0, 1, 0] = -1
        weights[2, 0, 1, 1] = -1
        weights[3, 0, 1, 0] = -1
        weights[3, 0, 0, 1] = -1
        self.haar_weights = nn.Parameter(torch.cat([weights] * self.channel_in, 0))
        self.haar_weights.requires_grad = False

    def forward(self, x: Tensor, logdet: Any = None, reverse: bool = False) -> tuple[Tensor, Any]:
        if not reverse:
            out = F.conv2d(x, self.haar_weights, bias=None, stride=2, groups=self.channel_in) / 4.0
            out = out.reshape([x.shape[0], self.channel_in, 4, x.shape[2] // 2, x.shape[3] // 2])
            out = torch.transpose(out, 1, 2)
            out = out.reshape([x.shape[0], self.channel_in * 4, x.shape[2] // 2, x.shape[3] // 2])
            return out, logdet
        out = x.reshape([x.shape[0], 4, self.channel_in, x.shape[2], x.shape[3]])
        out = torch.transpose(out, 1, 2)
        out = out.reshape([x.shape[0], self.channel_in * 4, x.shape[2], x.shape[3]])
        return F.conv_transpose2d(out, self.haar_weights, bias=None, stride=2, groups=self.channel_in), logdet


# ---- AffineCouplings.py (AffineCoupling3shift, unconditional, DenseBlock) ----


class AffineCoupling3shift(nn.Module):
    def __init__(self, in_channels: int, hidden_channels: int, LRvsothers: bool) -> None:
        super().__init__()
        self.LRvsothers = LRvsothers
        if LRvsothers:
            self.f = DenseBlock(3, (in_channels - 3) * 2, hidden_channels)
        else:
            self.f = DenseBlock(in_channels - 3, 3, hidden_channels)

    def forward(self, z: Tensor, u: Any = None, logdet: Any = None, reverse: bool = False) -> tuple[Tensor, Any]:
        if not reverse:
            if self.LRvsothers:
                z1, z2 = z[:, :3, ...], z[:, 3:, ...]
                shift, scale = split_feature(self.f(z1), "cross")
                logscale = 0.318 * torch.atan(2 * scale)
                z2 = (z2 + shift) * torch.exp(logscale)
                if logdet is not None:
                    logdet += thops_sum(logscale, dim=[1, 2, 3])
            else:
                z2, z1 = z[:, :3, ...], z[:, 3:, ...]
                z2 = z2 + self.f(z1)
        elif self.LRvsothers:
            z1, z2 = z[:, :3, ...], z[:, 3:, ...]
            shift, scale = split_feature(self.f(z1), "cross")
            logscale = 0.318 * torch.atan(2 * scale)
            z2 = z2 * torch.exp(-logscale) - shift
        else:
            z2, z1 = z[:, :3, ...], z[:, 3:, ...]
            z2 = z2 - self.f(z1)
        z = torch.cat((z1, z2), dim=1) if self.LRvsothers else torch.cat((z2, z1), dim=1)
        return z, logdet


# ---- FlowStep.py ----


class FlowStep(nn.Module):
    def __init__(
        self,
        in_channels: int,
        cond_channels: int | None,
        flow_permutation: str,
        flow_coupling: str,
        hidden_channels: int,
        LRvsothers: bool = True,
    ) -> None:
        super().__init__()
        self.actnorm = ActNorm2d(in_channels)
        self.permute = InvertibleConv1x1(in_channels) if flow_permutation == "invconv" else None
        if flow_coupling == "Affine":
            self.affine: nn.Module = AffineCoupling(in_channels, cond_channels, hidden_channels)
        else:
            self.affine = AffineCoupling3shift(in_channels, hidden_channels, LRvsothers)

    def forward(self, z: Tensor, u: Any = None, logdet: Any = None, reverse: bool = False) -> tuple[Tensor, Any]:
        if not reverse:
            z, logdet = self.actnorm(z, logdet=logdet, reverse=False)
            if self.permute is not None:
                z, logdet = self.permute(z, logdet=logdet, reverse=False)
            return self.affine(z, u=u, logdet=logdet, reverse=False)
        z, _ = self.affine(z, u=u, reverse=True)
        if self.permute is not None:
            z, _ = self.permute(z, reverse=True)
        z, _ = self.actnorm(z, reverse=True)
        return z, logdet


# ---- ConditionalFlow.py (SR=False) ----


class ConditionalFlow(nn.Module):
    def __init__(
        self, num_channels: int, num_channels_split: int, n_flow_step: int, opt: dict, num_levels_condition: int
    ) -> None:
        super().__init__()
        nf, gc, nb = opt["RRDB_nf"], opt["RRDB_gc"], opt["RRDB_nb"]
        num_features_condition = 1
        self.conv_first = nn.Conv2d(
            num_channels_split + nf * num_features_condition * num_levels_condition, nf, 3, 1, 1, bias=True
        )
        self.RRDB_trunk0 = nn.Sequential(*(RRDB(nf, gc) for _ in range(nb[0])))
        self.RRDB_trunk1 = nn.Sequential(*(RRDB(nf, gc) for _ in range(nb[1])))
        self.trunk_conv1 = nn.Conv2d(nf, nf, 3, 1, 1, bias=True)
        self.additional_flow_steps = nn.ModuleList(
            FlowStep(num_channels - num_channels_split, nf, "invconv", "Affine", opt["hidden_channels"])
            for _ in range(n_flow_step)
        )
        self.f = Conv2dZeros(nf * num_features_condition, (num_channels - num_channels_split) * 2)

    def forward(self, z: Any, u: Tensor, eps_std: Any = None, logdet: Any = 0.0, reverse: bool = False) -> Any:
        conditional_feature = self.get_conditional_feature_Rescaling(u)
        if not reverse:
            for layer in self.additional_flow_steps:
                z, logdet = layer(z, u=conditional_feature, logdet=logdet, reverse=False)
            mean, scale = split_feature(self.f(conditional_feature), "cross")
            logscale = 0.318 * torch.atan(2 * scale)
            return (z - mean) * torch.exp(-logscale), conditional_feature
        mean, scale = split_feature(self.f(conditional_feature), "cross")
        logscale = 0.318 * torch.atan(2 * scale)
        z = GaussianDiag.sample(mean, logscale, eps_std)
        for layer in reversed(self.additional_flow_steps):
            z, _ = layer(z, u=conditional_feature, reverse=True)
        return z, conditional_feature

    def get_conditional_feature_Rescaling(self, u: Tensor) -> Tensor:
        u_feature_first = self.conv_first(u)
        return self.trunk_conv1(self.RRDB_trunk1(self.RRDB_trunk0(u_feature_first))) + u_feature_first


# ---- FlowNet_Rescaling_x4.py (L = 2) ----


class FlowNet(nn.Module):
    """``K`` and ``after`` (splitOff.after_flowstep) are per level; ``hidden`` is the dense blocks' growth."""

    def __init__(self, K: list[int], after: list[int], hidden: int, split_opt: dict) -> None:
        super().__init__()
        self.L = 2
        self.layers = nn.ModuleList()
        channels = 3
        for level in range(self.L):
            self.layers.append(HaarDownsampling(channels))
            channels *= 4
            for k in range(K[level] - after[level]):
                self.layers.append(FlowStep(channels, None, "none", "Affine3shift", hidden, LRvsothers=k % 2 == 0))
            split = channels // 2 if level < self.L - 1 else 3
            self.layers.append(Split(split, level))
            condition = ConditionalFlow(channels, split, after[level], split_opt, 1 if level == 0 else 0)
            setattr(self, f"level{level}_condFlow", condition)
            channels = split

    def forward(self, hr: Any = None, z: Any = None, eps_std: Any = None, reverse: bool = False) -> Any:
        if not reverse:
            return self.normal_flow(hr, logdet=None)
        return self.reverse_flow(z, eps_std)

    def normal_flow(self, z: Tensor, logdet: Any) -> tuple[Tensor, Tensor, Tensor]:
        for layer in self.layers:
            if isinstance(layer, FlowStep):
                z, _ = layer(z, None, logdet=logdet, reverse=False)
            elif isinstance(layer, HaarDownsampling):
                z, _ = layer(z, logdet=logdet, reverse=False)
            elif layer.level == 0:
                z, a1 = layer(z, reverse=False)
                y1 = z.clone()
            elif layer.level == 1:
                z, a2 = layer(z, reverse=False)
                fake_z2, conditional_feature2 = self.level1_condFlow(a2, z, logdet=logdet, reverse=False)
                up = F.interpolate(conditional_feature2, scale_factor=2, mode="nearest")
                fake_z1, _ = self.level0_condFlow(a1, torch.cat([y1, up], 1), logdet=logdet, reverse=False)
        return z, fake_z1, fake_z2

    def reverse_flow(self, z: Tensor, eps_std: float) -> Tensor:
        for layer in reversed(self.layers):
            if isinstance(layer, FlowStep):
                z, _ = layer(z, None, reverse=True)
            elif isinstance(layer, HaarDownsampling):
                z, _ = layer(z, reverse=True)
            elif layer.level == 1:
                a2, conditional_feature2 = self.level1_condFlow(None, z, eps_std=eps_std, reverse=True)
                z = layer(z, a2, reverse=True)
            elif layer.level == 0:
                up = F.interpolate(conditional_feature2, scale_factor=2, mode="nearest")
                a1, _ = self.level0_condFlow(None, torch.cat([z, up], 1), eps_std=eps_std, reverse=True)
                z = layer(z, a1, reverse=True)
        return z


# ---- HCFlowNet_Rescaling_arch.py ----


class HCFlowNet_Rescaling(nn.Module):
    def __init__(self, K: list[int], after: list[int], hidden: int, split_opt: dict) -> None:
        super().__init__()
        self.flow = FlowNet(K, after, hidden, split_opt)

    def forward(self, hr: Any = None, lr: Any = None, eps_std: Any = None, reverse: bool = False) -> Any:
        if not reverse:
            fake_lr_from_hr, fake_z1, fake_z2 = self.flow(hr=hr, reverse=False)
            return torch.clamp(fake_lr_from_hr, 0, 1), fake_z1, fake_z2
        return torch.clamp(self.flow(z=lr, eps_std=eps_std, reverse=True), 0, 1)


def quantise(lr: Tensor) -> Tensor:
    """The original's test: ``Quantization()(netG(hr=...)[0])``, the LR the inverse starts from."""
    return Quant.apply(lr)


def tamed_original_rescaling(K: list[int], after: list[int], hidden: int, split_opt: dict, seed: int) -> nn.Module:
    """An original-layout HCFlow rescaler with seeded random weights away from their start (every zero-initialised
    last conv perturbed, so every coupling and prior acts) but tame enough that both directions stay finite and
    well conditioned: actnorms and Conv2dZeros get N(0, 0.05^2) values, the 1x1 weights are perturbed orthogonal
    matrices, the FCNs' hidden convs have std 0.05, dense blocks 0.1 (the last conv 0.02), the RRDBs' convs 0.02."""
    torch.manual_seed(seed)
    net = HCFlowNet_Rescaling(K, after, hidden, split_opt)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, ActNorm2d):
                module.bias.normal_(0.0, 0.05)
                module.logs.normal_(0.0, 0.05)
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
        for block in net.modules():
            if isinstance(block, DenseBlock):
                for conv in (block.conv1, block.conv2, block.conv3, block.conv4):
                    conv.weight.normal_(0.0, 0.1)
    return net.eval()
