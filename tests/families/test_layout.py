"""Channels-last runs of the original UNet's resampling and of the flows' space-to-depth: the same values as the
default layout, in the same layout as their input (so the convolutions after them get the layout they are fastest
in)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flowsr_cli.families.common.flow_layers import squeeze2d, unsqueeze2d
from flowsr_cli.families.common.layout import channels_last, lerp_along
from flowsr_cli.families.common.original_unet import MapWindow, Up, run_unet, unet_levels, unet_reach
from flowsr_cli.families.hcflow.rescaling import haar_squeeze, haar_unsqueeze
from flowsr_cli.families.registry import make


@pytest.mark.parametrize("dim", [2, 3])
def test_lerp_along_gives_the_default_layouts_values_in_the_inputs_layout(dim: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, 9)
    length = x.shape[dim]
    low = torch.tensor([0, 0, 1, 3, length - 2, length - 1])
    high = torch.clamp(low + 1, max=length - 1)
    weight = torch.rand(len(low))
    expected = torch.lerp(
        x.index_select(dim, low), x.index_select(dim, high), weight.view([1, 1, 1, 1][:dim] + [-1] + [1] * (3 - dim))
    )

    plain = lerp_along(x, dim, low, high, weight)
    packed = lerp_along(channels_last(x), dim, low, high, weight)

    assert torch.equal(plain, expected) and plain.is_contiguous()
    assert torch.equal(packed, expected)
    assert packed.is_contiguous(memory_format=torch.channels_last) and not packed.is_contiguous()


def test_the_unets_upsampling_is_pytorchs_align_corners_bilinear_padded_with_zeros_in_either_layout() -> None:
    torch.manual_seed(1)
    up = Up(8, 4).eval()
    coarse = torch.rand(1, 4, 5, 6)
    skip = torch.rand(1, 4, 11, 13)  # one row and one column past 2 x the coarse map: the zero pad
    with torch.no_grad():
        plain = up(coarse, skip, MapWindow.whole((5, 6)), MapWindow.whole((11, 13)))
        packed = up(channels_last(coarse), channels_last(skip), MapWindow.whole((5, 6)), MapWindow.whole((11, 13)))
        enlarged = F.pad(F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=True), (0, 1, 0, 1))
        expected = up.conv(torch.cat([skip, enlarged], dim=1))

    assert packed.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(plain, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(packed, plain, rtol=0, atol=1e-6)


def test_a_channels_last_window_of_the_unet_matches_the_whole_maps_default_layout_run() -> None:
    torch.manual_seed(2)
    inc, downs, ups = unet_levels(4, 2)
    for module in (inc, downs, ups):
        module.eval()
    x = torch.randn(1, 4, 64, 60)
    with torch.no_grad():
        whole = run_unet(inc, downs, ups, x, MapWindow.whole((64, 60)))
        window = run_unet(inc, downs, ups, channels_last(x[..., 16:, 8:]), MapWindow((16, 8), (64, 60)))

    assert window.is_contiguous(memory_format=torch.channels_last)
    reach = unet_reach(2)  # cells this far from the window's inner (top, left) edges are exact
    torch.testing.assert_close(window[..., reach:, reach:], whole[..., 16 + reach :, 8 + reach :], rtol=0, atol=1e-5)


@pytest.mark.parametrize("kept_slice", [False, True])
def test_squeeze_and_unsqueeze_give_the_same_values_in_the_inputs_layout(kept_slice: bool) -> None:
    """Glow's space-to-depth on a channels-last map (or a channel slice of one, as a split's kept half is)
    equals the default layout's and stays channels-last, both ways."""
    torch.manual_seed(3)
    x = torch.randn(2, 6, 8, 10)
    packed = channels_last(torch.cat([x, torch.randn(2, 4, 8, 10)], dim=1))[:, :6] if kept_slice else channels_last(x)

    squeezed = squeeze2d(packed)

    assert torch.equal(squeezed, squeeze2d(x)) and squeezed.stride(1) == 1
    restored = unsqueeze2d(squeezed)
    assert torch.equal(restored, x) and restored.is_contiguous(memory_format=torch.channels_last)


FLOWS = {
    "srflow": {"rrdb_blocks": 2, "rrdb_channels": 8, "growth": 4, "feature_blocks": [0, 1], "steps": 2, "hidden": 8},
    "hcflow": {"steps": [2, 1], "cond_steps": [1, 2], "hidden": 8, "cond_hidden": 6, "rrdb_blocks": [1, 1],
               "rrdb_channels": 8, "growth": 4},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_every_convolution_of_srflow_and_hcflow_reads_a_channels_last_map(name: str) -> None:
    """Sampling and scoring (the two directions) hand each convolution a map whose channels vary fastest in memory
    (channels-last, or a channel slice of such a map), the layout oneDNN runs 1.2-1.5x faster at these widths."""
    torch.manual_seed(4)
    model = make({"name": name, "args": FLOWS[name]}).eval()
    lr = torch.rand(1, 3, 8, 12)

    def both_directions() -> None:
        features = model.encode(lr)
        model.log_prob(model.sample(features, 0.5), features)

    count, default_layout = _convolution_inputs(model, both_directions)

    assert count > 20
    assert default_layout == []


def test_the_haar_squeeze_gives_the_same_values_in_the_inputs_layout() -> None:
    """The rescaling models' Haar squeeze on a channels-last map equals the default layout's and stays channels-last;
    its inverse restores the map in that layout."""
    torch.manual_seed(5)
    x = torch.randn(2, 6, 8, 10)

    squeezed = haar_squeeze(channels_last(x))

    assert torch.equal(squeezed, haar_squeeze(x)) and squeezed.stride(1) == 1
    restored = haar_unsqueeze(squeezed)
    assert torch.equal(restored, haar_unsqueeze(haar_squeeze(x)))
    assert restored.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(restored, x, rtol=0, atol=1e-6)


def test_every_convolution_of_a_rescaling_model_reads_a_channels_last_map() -> None:
    """Shrinking, the latents and restoring (its three directions) hand each convolution a channels-last map."""
    torch.manual_seed(6)
    args = {"steps": [3, 2], "cond_steps": [1, 2], "hidden": 4, "cond_hidden": 6, "rrdb_blocks": [1, 0],
            "rrdb_channels": 8, "growth": 4}  # fmt: skip
    model = make({"name": "hcflow-rescale", "args": args}).eval()

    def three_directions() -> None:
        lr, latents = model.to_latents(torch.rand(1, 3, 16, 24))
        model.upscale(model.downscale(torch.rand(1, 3, 16, 24)), heat=0.5, latents=latents)

    count, default_layout = _convolution_inputs(model, three_directions)

    assert count > 20
    assert default_layout == []


def _convolution_inputs(model: nn.Module, run: Callable[[], None]) -> tuple[int, list[tuple[str, tuple[int, ...]]]]:
    """How many convolutions of ``model`` ``run`` calls (without gradients), and the kind and input shape of those
    whose input is in the default layout (its channels not varying fastest in memory)."""
    inputs: list[tuple[str, torch.Tensor]] = []
    hooks = [
        module.register_forward_pre_hook(lambda module, args: inputs.append((type(module).__name__, args[0])))
        for module in model.modules()
        if isinstance(module, nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    default_layout = [(kind, tuple(x.shape)) for kind, x in inputs if x.shape[1] > 1 and x.stride(1) > x.stride(3)]
    return len(inputs), default_layout
