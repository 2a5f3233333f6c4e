"""Self-checks of the test-side reference of the original LINF-LP code (original_linf_lp.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.families.linf.original_linf_lp import (
    load,
    natural_image,
    original_output,
    original_output_without_prior,
    psnr,
    save_original_checkpoints,
    wrapper_sample,
)

SIZES = {"n_resblocks": 2, "n_feats": 8, "hidden_dim": 16, "num_layer": 2, "flow_layers": 2, "prior_dim": 8}
LR = natural_image(24, 20, seed=3)  # x2: 48x40, x3: 72x60, x3.5: 84x70, x4: 96x80 (widths % 3: 1, 0, 1, 2)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return save_original_checkpoints(tmp_path_factory.mktemp("original"), seed=0, **SIZES)


def output_size(scale: float) -> tuple[int, int]:
    return round(LR.shape[0] * scale), round(LR.shape[1] * scale)


def double_conv_keys(prefix: str) -> set[str]:
    keys = {f"{prefix}.double_conv.{i}.weight" for i in (0, 3)}
    stats = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    return keys | {f"{prefix}.double_conv.{i}.{s}" for i in (1, 4) for s in stats}


def dense_keys(prefix: str) -> set[str]:
    return {f"{prefix}.conv{i}.{p}" for i in range(1, 6) for p in ("weight", "bias")}


def expected_flow_keys(n_resblocks: int, num_layer: int, flow_layers: int) -> set[str]:
    wb = ("weight", "bias")
    keys = {f"encoder.{m}.{p}" for m in ("sub_mean", "add_mean", "head.0", f"body.{n_resblocks}") for p in wb}
    keys |= {f"encoder.body.{i}.body.{j}.{p}" for i in range(n_resblocks) for j in (0, 2) for p in wb}
    keys |= {f"{m}.{p}" for m in ("coef", "freq") for p in wb} | {"phase.weight"}
    keys |= {f"layers.{2 * i}.{p}" for i in range(num_layer + 1) for p in wb}
    linears = [f"linears.{i}" for i in range(flow_layers)] + ["last"]
    return keys | {f"imnet.{m}.{p}" for m in linears for p in ("_weight", "bias")}


def expected_prior_keys(depth: int) -> set[str]:
    keys = dense_keys("input_proj") | dense_keys("lr_proj.2") | {"lr_proj.0.weight", "lr_proj.0.bias"}
    keys |= double_conv_keys("inc") | {"outc.conv.weight", "outc.conv.bias"}
    for i in range(depth):
        keys |= double_conv_keys(f"down_layers.{i}.maxpool_conv.1") | double_conv_keys(f"up_layers.{i}.conv")
    return keys


def test_checkpoints_have_the_original_formats_and_keys(checkpoints: tuple[Path, Path]) -> None:
    flow_file, prior_file = (torch.load(p, map_location="cpu", weights_only=True) for p in checkpoints)
    flow, prior = flow_file["model"], prior_file["prior_model"]
    assert flow["name"] == "linf-patch" and prior["name"] == "unet"
    assert flow["args"]["encoder_spec"] == {
        "name": "edsr-baseline",
        "args": {"no_upsampling": True, "n_resblocks": 2, "n_feats": 8},
    }
    assert flow["args"]["imnet_spec"]["name"] == "flow" and flow["args"]["patch_size"] == 3
    assert prior["args"] == {"in_chans": 27, "depth": 3, "dim": 8, "bilinear": True}
    assert set(flow["sd"]) == expected_flow_keys(n_resblocks=2, num_layer=2, flow_layers=2)
    assert set(prior["sd"]) == expected_prior_keys(depth=3)
    shapes = {
        "layers.4.weight": (2 * 54, 16, 1, 1),
        "imnet.linears.1._weight": (27, 27),
        "phase.weight": (8, 2),
        "coef.weight": (16, 8, 3, 3),
    }
    assert {k: tuple(flow["sd"][k].shape) for k in shapes} == shapes
    shapes = {
        "lr_proj.0.weight": (27, 3, 3, 3),
        "input_proj.conv1.weight": (4, 27, 3, 3),
        "input_proj.conv5.weight": (4, 27 + 16, 3, 3),
        "inc.double_conv.0.weight": (8, 8, 3, 3),
        "down_layers.2.maxpool_conv.1.double_conv.3.weight": (32, 32, 3, 3),
        "up_layers.0.conv.double_conv.0.weight": (32, 64, 3, 3),
        "up_layers.2.conv.double_conv.3.weight": (8, 8, 3, 3),
        "outc.conv.weight": (27, 8, 1, 1),
    }
    assert {k: tuple(prior["sd"][k].shape) for k in shapes} == shapes
    assert not torch.allclose(prior["sd"]["inc.double_conv.1.running_var"], torch.ones(8))
    assert not torch.allclose(prior["sd"]["inc.double_conv.1.running_mean"], torch.zeros(8))


def test_flow_forward_then_inverse_round_trips(checkpoints: tuple[Path, Path]) -> None:
    model = load(checkpoints[0], "model")
    batch = wrapper_sample(LR, output_size(3.5))
    with torch.no_grad():
        affine = model.affine_info(model.gen_feat(batch["inp"]), batch["coord"], batch["cell"])
        affine = affine.permute(0, 2, 3, 1).reshape(-1, affine.shape[1])
        z = torch.randn(affine.shape[0], 27, generator=torch.Generator().manual_seed(0))
        x = model.imnet.inverse(z, affine)
        back, _ = model.imnet(x, affine)
    assert x.isfinite().all() and x.abs().max() < 10
    assert (back - z).abs().max() < 1e-4


def test_output_is_deterministic(checkpoints: tuple[Path, Path]) -> None:
    first = original_output(*checkpoints, LR, output_size(3))
    assert np.array_equal(first, original_output(*checkpoints, LR, output_size(3)))


def test_prior_moves_the_output_by_about_29_db(checkpoints: tuple[Path, Path]) -> None:
    size = output_size(4)
    moved = psnr(original_output(*checkpoints, LR, size), original_output_without_prior(checkpoints[0], LR, size))
    assert 26 < moved < 32


@pytest.mark.parametrize("scale", [2, 3, 3.5, 4])
def test_output_sizes_and_block_padding(checkpoints: tuple[Path, Path], scale: float) -> None:
    height, width = output_size(scale)
    output = original_output(*checkpoints, LR, (height, width))
    assert output.shape == (height, width, 3) and output.dtype == np.uint8
    batch = wrapper_sample(LR, (height, width))
    blocks = (height // 3 + 1, width // 3 + 1)  # a side that is a multiple of 3 still gets a padding block
    assert batch["coord"].shape == (1, *blocks, 2) and batch["gt_lr_up"].shape == (1, 27, *blocks)
    coord = batch["coord"][0]
    assert torch.allclose(coord[0, 0], torch.tensor([-1 + 3 / height, -1 + 3 / width]))
    for axis, side in ((0, height), (1, width)):
        last = coord.select(axis, -1)  # the last block row (axis 0) or column (axis 1)
        if side % 3 == 2:
            assert torch.allclose(last[0, axis], torch.tensor(1 - 1 / side))
        else:  # its centre is a padded pixel, whose coordinate is (0, 0)
            assert (last == 0).all()
