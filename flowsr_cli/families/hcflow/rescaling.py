"""HCFlow image rescaling (Liang et al., ICCV 2021; the original's ``HCFlowNet_Rescaling`` with
``FlowNet_Rescaling_x4``): one bijection HR <-> (LR, a_1, ..., a_L) that *makes* the LR from the HR (downscale)
and restores the HR from that exact LR (upscale).

Conventions (every method follows them):

* Images are float in [0, 1] (RGB). The LR :meth:`HCFlowRescaler.downscale` returns is the flow's own output,
  neither clamped nor quantised (the original clamps it to [0, 1]; callers clamp and round it to 8 bits, as the
  original does before the inverse). The HR :meth:`HCFlowRescaler.upscale` returns is not clamped either (the
  original clamps it).
* Levels are numbered 0 (finest) to L - 1 (coarsest). Level l: a Haar squeeze to C = 4 x its input's channels
  (:func:`haar_squeeze`: channels ``k C_in + c`` are band k of input channel c, band 0 the 2x2 mean), ``steps[l]``
  flow steps (actnorm, then an :class:`Affine3ShiftCoupling`; no permutation), then a split: the first ``kept``
  channels (C / 2, or the 3 LR channels on the coarsest level) go on, the rest ``a_l`` is modelled by level l's
  :class:`RescalingConditionalFlow`. At construction every coupling is the identity, so the LR is the
  2^L x 2^L box mean of the HR.
* Conditional flows (coarsest first): level l's condition is ``cat(kept_l, nearest_up(features_j) for j > l)``,
  so the coarsest level's is the LR itself. Its RRDB features (``rrdb_channels``) condition ``cond_steps[l]``
  flow steps (actnorm, invertible 1x1, bounded affine coupling) and a prior with mean and bounded log-std
  ``0.318 atan(2 s)`` from a Conv2dZeros of the features.
* Latents are the split-off parts standardised by their priors, ``eps_l = (z_l - mean_l) / exp(logs_l)``, listed
  coarsest first. For an h x w LR and L = 2: ``[(B, 21, h, w), (B, 6, 2h, 2w)]``; L = 1: ``[(B, 9, h, w)]``.
  Upscaling at heat t uses ``t * eps`` (the original draws ``torch.normal(0, t)``, which is ``t * randn`` from the
  same random stream, coarsest first); the original tests at heat 1 and trains the HR loss at heat 1.
* Training (the original's losses; nothing here trains): with ``lr, latents = to_latents(hr)``,
  ``0.05 MSE(clamp(lr, 0, 1), bicubic LR) + 1e-5 mean(cat(latents)^2) + L1(HR, upscale(Q(lr), 1.0))``, Q clamping
  and rounding to 1/255 with a straight-through gradient. In training mode the first forward pass initialises the
  actnorms from its batch, as the original's does; after that the LR is no longer the box mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from flowsr_cli.families.common.flow_layers import ActNorm, standard_normal
from flowsr_cli.families.common.layout import channels_last, is_channels_last
from flowsr_cli.families.hcflow.layers import ConditionalFlow, bounded_log_scale, build_levels, level_condition
from flowsr_cli.families.registry import Bound

LR_CHANNELS = 3
"""The Affine3shift couplings treat the first 3 channels (the LR-to-be) apart from the others."""
DENSE_INIT_GAIN = 0.1
"""The dense blocks' convs start Xavier-normal x 0.1 (the last one at zero)."""
CPU_CONFIGS: Mapping[str, Mapping[str, object]] = {
    "x4-small": {
        "levels": 2,
        "steps": [6, 6],
        "cond_steps": [4, 4],
        "hidden": 24,
        "cond_hidden": 32,
        "rrdb_blocks": [1, 1],
        "rrdb_channels": 32,
        "growth": 16,
    },
    "x2-small": {
        "levels": 1,
        "steps": [6],
        "cond_steps": [4],
        "hidden": 24,
        "cond_hidden": 32,
        "rrdb_blocks": [1, 1],
        "rrdb_channels": 32,
        "growth": 16,
    },
}
"""Configurations small enough to train on a CPU that keep every part (Haar squeezes, Affine3shift steps with
dense blocks, conditional flows with RRDB extractors and bounded priors); parameter counts in the tests."""


def haar_squeeze(x: torch.Tensor) -> torch.Tensor:
    """The original's ``HaarDownsampling``: (B, C, H, W) -> (B, 4C, H/2, W/2), channel ``k C + c`` band k of
    channel c, each 2x2 block [[p, q], [r, s]] giving ``(p+q+r+s, p-q+r-s, p+q-r-s, p-q-r+s) / 4``; in ``x``'s
    layout (channels-last or contiguous)."""
    batch, channels, height, width = x.shape
    if height % 2 or width % 2:
        raise ValueError(f"the Haar squeeze needs an even height and width, got {height}x{width}")
    if is_channels_last(x):
        pixels = x.permute(0, 2, 3, 1).reshape(batch, height // 2, 2, width // 2, 2, channels)
        p, q = pixels[:, :, 0, :, 0], pixels[:, :, 0, :, 1]
        r, s = pixels[:, :, 1, :, 0], pixels[:, :, 1, :, 1]
        bands = torch.cat([p + q + r + s, p - q + r - s, p + q - r - s, p - q - r + s], dim=-1) / 4
        return bands.permute(0, 3, 1, 2)
    blocks = x.reshape(batch, channels, height // 2, 2, width // 2, 2)
    p, q = blocks[:, :, :, 0, :, 0], blocks[:, :, :, 0, :, 1]
    r, s = blocks[:, :, :, 1, :, 0], blocks[:, :, :, 1, :, 1]
    return torch.cat([p + q + r + s, p - q + r - s, p + q - r - s, p - q - r + s], dim=1) / 4


def haar_unsqueeze(y: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`haar_squeeze`: (B, 4C, H, W) -> (B, C, 2H, 2W), in ``y``'s layout."""
    batch, channels, height, width = y.shape
    packed = is_channels_last(y)
    bands = y.permute(0, 2, 3, 1) if packed else y
    low, horizontal, vertical, diagonal = bands.chunk(4, dim=-1 if packed else 1)
    p = low + horizontal + vertical + diagonal
    q = low - horizontal + vertical - diagonal
    r = low + horizontal - vertical - diagonal
    s = low - horizontal - vertical + diagonal
    if packed:
        blocks = torch.stack([torch.stack([p, q], dim=3), torch.stack([r, s], dim=3)], dim=2)
        return blocks.reshape(batch, 2 * height, 2 * width, channels // 4).permute(0, 3, 1, 2)
    blocks = torch.stack([torch.stack([p, q], dim=-1), torch.stack([r, s], dim=-1)], dim=3)
    return blocks.reshape(batch, channels // 4, 2 * height, 2 * width)


class DenseCouplingNet(nn.Module):
    """The original's ``DenseBlock`` for flows: five 3x3 convs, each seeing the input and all earlier outputs
    (LeakyReLU 0.2 between), no residual; Xavier-normal x 0.1 weights, the last conv all zero."""

    def __init__(self, in_channels: int, out_channels: int, growth: int) -> None:
        super().__init__()
        widths = [in_channels + index * growth for index in range(5)]
        self.convs = nn.ModuleList(
            nn.Conv2d(width, growth if index < 4 else out_channels, 3, padding=1) for index, width in enumerate(widths)
        )
        self.activation = nn.LeakyReLU(0.2)
        for conv in self.convs:
            nn.init.xavier_normal_(conv.weight)
            conv.weight.data.mul_(DENSE_INIT_GAIN)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.convs[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) -> (B, out_channels, H, W)."""
        features = [x]
        for conv in self.convs[:-1]:
            features.append(self.activation(conv(torch.cat(features, dim=1))))
        return self.convs[-1](torch.cat(features, dim=1))


class Affine3ShiftCoupling(nn.Module):
    """The original's ``AffineCoupling3shift`` (unconditional). With ``lr_gives_affine`` (the original's
    ``LRvsothers``, even steps) the first 3 channels give shift and raw scale s ("cross" order) for the others:
    ``y_rest = (x_rest + shift) * exp(0.318 atan(2 s))``; otherwise the others give a shift to the first 3:
    ``y_lr = x_lr + net(x_rest)``. The channel order is kept."""

    def __init__(self, channels: int, hidden: int, lr_gives_affine: bool) -> None:
        super().__init__()
        self.lr_gives_affine = lr_gives_affine
        rest = channels - LR_CHANNELS
        if lr_gives_affine:
            self.net = DenseCouplingNet(LR_CHANNELS, 2 * rest, hidden)
        else:
            self.net = DenseCouplingNet(rest, LR_CHANNELS, hidden)

    def _shift_and_log_scale(self, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(lr)
        return h[:, 0::2], bounded_log_scale(h[:, 1::2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x -> y."""
        lr, rest = x[:, :LR_CHANNELS], x[:, LR_CHANNELS:]
        if not self.lr_gives_affine:
            return torch.cat([lr + self.net(rest), rest], dim=1)
        shift, log_scale = self._shift_and_log_scale(lr)
        return torch.cat([lr, (rest + shift) * torch.exp(log_scale)], dim=1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """y -> x."""
        lr, rest = y[:, :LR_CHANNELS], y[:, LR_CHANNELS:]
        if not self.lr_gives_affine:
            return torch.cat([lr - self.net(rest), rest], dim=1)
        shift, log_scale = self._shift_and_log_scale(lr)
        return torch.cat([lr, rest * torch.exp(-log_scale) - shift], dim=1)


class RescalingStep(nn.Module):
    """actnorm -> Affine3shift coupling (the original's ``FlowStep`` with ``flow_permutation: none``)."""

    def __init__(self, channels: int, hidden: int, lr_gives_affine: bool) -> None:
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.coupling = Affine3ShiftCoupling(channels, hidden, lr_gives_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x -> y."""
        return self.coupling(self.actnorm(x)[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """y -> x."""
        return self.actnorm.inverse(self.coupling.inverse(y))


class RescalingConditionalFlow(ConditionalFlow):
    """The original's ``ConditionalFlow`` with ``SR=False``: one feature map,
    ``trunk_conv(trunk1(trunk0(first))) + first``, and a prior whose log-std is bounded, ``0.318 atan(2 s)``."""

    feature_levels = 1

    def features(self, u: torch.Tensor) -> torch.Tensor:
        """Condition (B, cond_in_channels, H, W) -> RRDB features (B, rrdb_channels, H, W)."""
        first = self.conv_first(u)
        return self.trunk_conv(self.trunk1(self.trunk0(first))) + first

    def prior_of(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, bounded log-std) of the prior, each (B, channels, H, W)."""
        mean, raw = super().prior_of(features)
        return mean, bounded_log_scale(raw)


class RescalingLevel(nn.Module):
    """One level: Haar squeeze, ``steps`` Affine3shift steps (even ones LR -> affine), then the split whose part
    ``cond_flow`` models."""

    def __init__(self, channels: int, kept: int, steps: int, hidden: int, cond_flow: RescalingConditionalFlow) -> None:
        super().__init__()
        self.kept = kept
        self.split = channels - kept
        self.steps = nn.ModuleList(RescalingStep(channels, hidden, index % 2 == 0) for index in range(steps))
        self.cond_flow = cond_flow

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Input (B, C/4, 2H, 2W) -> (kept part, split-off part a)."""
        x = haar_squeeze(x)
        for step in self.steps:
            x = step(x)
        return x[:, : self.kept], x[:, self.kept :]

    def inverse(self, kept: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """(kept part, split-off part) -> the level's input."""
        x = torch.cat([kept, a], dim=1)
        for step in reversed(self.steps):
            x = step.inverse(x)
        return haar_unsqueeze(x)


class RescalingLatents(NamedTuple):
    """Result of :meth:`HCFlowRescaler.to_latents`: the forward direction of the bijection."""

    lr: torch.Tensor
    """The model's LR (B, 3, h, w), neither clamped nor quantised."""
    latents: list[torch.Tensor]
    """The standardised latents, coarsest first (:meth:`HCFlowRescaler.upscale`'s order)."""


class HCFlowRescaler(nn.Module):
    """HCFlow image rescaling x 2^levels (the original: x4, 4.40 M parameters); conventions in the module docstring.

    Spec arguments (the original's config names in brackets): ``levels`` [L]; ``steps`` per level, the Affine3shift
    steps [K - splitOff.after_flowstep; default 8 each]; ``cond_steps`` per level, the conditional flow's steps
    [splitOff.after_flowstep; default 6 each]; ``hidden`` [hidden_channels], the dense blocks' growth; ``cond_hidden``
    [splitOff.hidden_channels], the conditional couplings' width; ``rrdb_blocks`` [RRDB_nb], ``rrdb_channels``
    [RRDB_nf] and ``growth`` [RRDB_gc] of every level's feature extractor. CPU-sized configs: :data:`CPU_CONFIGS`.

    API:

    * ``downscale(hr) -> lr``: HR (B, 3, H, W), H and W multiples of 2^levels -> the model's LR (B, 3, H/s, W/s).
    * ``to_latents(hr) -> RescalingLatents(lr, latents)``: the LR and the standardised latents, coarsest first.
    * ``latent_shapes(lr)``, ``random_latents(lr, generator)``: (C, H, W) of each latent and N(0, I) draws of them.
    * ``upscale(lr, heat=1.0, generator=None, latents=None) -> hr``: the inverse; ``upscale(*to_latents(hr)) ==
      hr`` up to float rounding.

    ``scale`` is 2^levels on an instance (the class attribute is the original's 4; :meth:`scale_of` gives a spec's).
    """

    scale = 4
    default_temperature = 1.0
    """The heat the original upscales at (its test config and its training's HR loss)."""
    spec_bounds: ClassVar[Mapping[str, Bound]] = {
        "levels": Bound(1, 2),
        "steps": Bound(0, 64, items=2),
        "cond_steps": Bound(0, 64, items=2),
        "hidden": Bound(1, 1024),
        "cond_hidden": Bound(1, 4096),
        "rrdb_blocks": Bound(0, 64, items=2),
        "rrdb_channels": Bound(1, 1024),
        "growth": Bound(1, 1024),
    }
    """The original builds L = 2 (x4) with 8 + 6 steps per level, dense blocks of growth 32, couplings 64 wide and
    RRDB extractors of [2, 1] blocks of 64 channels, growth 16; L = 1 is x2."""

    @classmethod
    def scale_of(cls, args: Mapping[str, object]) -> int:
        """The scale of the model a spec's ``args`` build: 2^levels (the class's 4 without ``levels``)."""
        levels = args.get("levels")
        return 2**levels if isinstance(levels, int) else cls.scale

    def __init__(
        self,
        levels: int = 2,
        steps: Sequence[int] | None = None,
        cond_steps: Sequence[int] | None = None,
        hidden: int = 32,
        cond_hidden: int = 64,
        rrdb_blocks: Sequence[int] = (2, 1),
        rrdb_channels: int = 64,
        growth: int = 16,
    ) -> None:
        super().__init__()
        steps = [8] * levels if steps is None else list(steps)
        cond_steps = [6] * levels if cond_steps is None else list(cond_steps)
        self.scale = 2**levels

        def make_level(level: int, channels: int, kept: int) -> RescalingLevel:
            cond_flow = RescalingConditionalFlow(
                channels - kept,
                kept + rrdb_channels * (levels - 1 - level),
                cond_steps[level],
                cond_hidden,
                (rrdb_blocks[0], rrdb_blocks[1]),
                rrdb_channels,
                growth,
            )
            return RescalingLevel(channels, kept, steps[level], hidden, cond_flow)

        self.flow_levels = build_levels(levels, steps, cond_steps, rrdb_blocks, make_level)

    def _check_hr(self, hr: torch.Tensor) -> None:
        if hr.shape[-2] % self.scale or hr.shape[-1] % self.scale:
            raise ValueError(f"HR size {tuple(hr.shape[-2:])} is not a multiple of the scale {self.scale}")

    def downscale(self, hr: torch.Tensor) -> torch.Tensor:
        """HR (B, 3, H, W) in [0, 1], H and W multiples of :attr:`scale` -> the model's LR (B, 3, H/s, W/s), neither
        clamped nor quantised (only the main flow runs: the LR needs no conditional flow)."""
        self._check_hr(hr)
        x = channels_last(hr)
        for level in self.flow_levels:
            x, _ = level(x)
        return x

    def to_latents(self, hr: torch.Tensor) -> RescalingLatents:
        """HR (B, 3, H, W) -> (the model's LR, the standardised latents coarsest first)."""
        self._check_hr(hr)
        x = channels_last(hr)
        parts = []
        for level in self.flow_levels:
            x, a = level(x)
            parts.append((x, a))
        latents: list[torch.Tensor] = []
        coarser: list[torch.Tensor] = []
        for level, (kept, a) in zip(reversed(self.flow_levels), reversed(parts)):
            features = level.cond_flow.features(level_condition(kept, coarser))
            latents.append(level.cond_flow(a, features)[0])
            coarser.insert(0, features)
        return RescalingLatents(x, latents)

    def latent_shapes(self, lr: torch.Tensor) -> list[tuple[int, int, int]]:
        """(C, H, W) of each latent for an LR (B, 3, h, w), coarsest first (:meth:`upscale`'s order)."""
        height, width = lr.shape[-2:]
        coarsest_first = reversed(self.flow_levels)
        return [(level.split, height << depth, width << depth) for depth, level in enumerate(coarsest_first)]

    def random_latents(self, lr: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """N(0, I) latents drawn from ``generator`` (torch's global one if None) in :meth:`latent_shapes` order:
        with the same random state, the draws the original makes at heat 1."""
        return [
            standard_normal((lr.shape[0], *shape), device=lr.device, dtype=lr.dtype, generator=generator)
            for shape in self.latent_shapes(lr)
        ]

    def upscale(
        self,
        lr: torch.Tensor,
        heat: float = 1.0,
        generator: torch.Generator | None = None,
        latents: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The inverse: LR (B, 3, h, w) -> HR (B, 3, s h, s w), not clamped, from ``heat * latents`` (N(0, I)-scale
        ``latents``, drawn by :meth:`random_latents` if None; heat 0: the prior means)."""
        if latents is None:
            latents = self.random_latents(lr, generator)
        if len(latents) != len(self.flow_levels):
            raise ValueError(f"HCFlow rescaling needs {len(self.flow_levels)} latents, got {len(latents)}")
        x = channels_last(lr)
        coarser: list[torch.Tensor] = []
        for level, eps in zip(reversed(self.flow_levels), latents):
            features = level.cond_flow.features(level_condition(x, coarser))
            x = level.inverse(x, level.cond_flow.inverse(heat * channels_last(eps), features))
            coarser.insert(0, features)
        return x

    def forward(self, hr: torch.Tensor) -> torch.Tensor:
        """The original's forward direction: HR -> the model's LR (:meth:`downscale`)."""
        return self.downscale(hr)
