"""Importing the original SRFlow-LP (FlowSR-LP code): an original SRFlow state and an original prior file give
the original ``test.py``'s output, whole and in tiles, in-process and through the CLI; bad priors are refused.

The reference below re-implements ``test.py`` and the original ``models/unet.py`` from the prior's state dict
(plain ``F.interpolate(align_corners=True)`` and ``F.pad`` as the original ``Up``, ``torch.std`` unbiased,
``np.pad`` reflect, ``astype(uint8)`` truncation), sharing nothing with flowsr's prior. Its flow is the flowsr
SRFlow the original state dict was made from (its import is checked exact in ``test_import_srflow``).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image as PILImage

from flowsr_cli.engine.pipeline import tensor_to_pixels
from flowsr_cli.errors import ImageError
from flowsr_cli.families.common.original_unet import MapWindow
from flowsr_cli.families.importing import CheckpointImportError, convert_original
from flowsr_cli.families.model_file import save_model
from flowsr_cli.families.srflow.engine import SRFlowUpscaler
from flowsr_cli.families.srflow.importer import import_srflow_with_prior
from flowsr_cli.families.srflow.network import SRFlow
from flowsr_cli.families.srflow.original_prior import OriginalPriorUNets, OriginalSRFlowLP
from flowsr_cli.families.upscalers import UpscalerRequest, create_upscaler
from flowsr_cli.io.reading import read_image
from tests.conftest import CliInvoker
from tests.families.srflow.test_import_srflow import DEEPER, TINY, original_state, source_srflow
from tests.families.srflow.test_srflow_engine import collect, photo_pair

pytestmark = pytest.mark.usefixtures("one_thread")

DIM, DEPTH = 8, 3
PRIOR_ARGS = {"depth": DEPTH, "dim": DIM, "bilinear": True}
OUTPUT_SCALES = (0.2, 0.02)
"""Factors on the random ``outc0`` / ``outc1`` weights: the prior then moves the tiny flow's output (of the
48 x 64 LR) 29.1 dB PSNR away from its temperature-0 image (each UNet alone 32.2 and 32.1 dB), finitely."""
ORIGINAL_PSNR = 45.0
"""The least PSNR (dB) against the original's 8-bit output: flowsr rounds to 8 bits where the original
truncates (``astype(np.uint8)``), which alone costs about 51.5 dB."""


def _conv(
    state: dict[str, torch.Tensor],
    name: str,
    shape: tuple[int, ...],
    rng: torch.Generator,
    bias: bool = True,
    gain: float = 1.0,
) -> None:
    """A He-scaled random conv weight and a small bias, both times ``gain``."""
    state[f"{name}.weight"] = torch.randn(shape, generator=rng) * gain * math.sqrt(2.0 / math.prod(shape[1:]))
    if bias:
        state[f"{name}.bias"] = 0.1 * gain * torch.randn(shape[0], generator=rng)


def _batch_norm(state: dict[str, torch.Tensor], name: str, width: int, rng: torch.Generator) -> None:
    state[f"{name}.weight"] = 0.5 + torch.rand(width, generator=rng)
    state[f"{name}.bias"] = 0.1 * torch.randn(width, generator=rng)
    state[f"{name}.running_mean"] = 0.1 * torch.randn(width, generator=rng)
    state[f"{name}.running_var"] = 0.5 + torch.rand(width, generator=rng)
    state[f"{name}.num_batches_tracked"] = torch.tensor(70000)


def _double_conv(state: dict[str, torch.Tensor], name: str, widths: tuple[int, int, int], rng: torch.Generator) -> None:
    """The original ``DoubleConv(in, out, mid)``: widths (in, mid, out)."""
    width_in, mid, width_out = widths
    _conv(state, f"{name}.double_conv.0", (mid, width_in, 3, 3), rng, bias=False)
    _batch_norm(state, f"{name}.double_conv.1", mid, rng)
    _conv(state, f"{name}.double_conv.3", (width_out, mid, 3, 3), rng, bias=False)
    _batch_norm(state, f"{name}.double_conv.4", width_out, rng)


def original_prior_state(channels: tuple[int, int] = (6, 96), dim: int = DIM, depth: int = DEPTH) -> dict[str, Any]:
    """What the original ``UNet(depth, dim, bilinear=True).state_dict()`` holds (its names and shapes, as its
    ``__init__`` builds them), with random tamed weights and non-trivial BatchNorm statistics."""
    rng = torch.Generator().manual_seed(5)
    state: dict[str, torch.Tensor] = {}
    for index, width in enumerate(channels):
        for conv in range(1, 6):  # DenseBlock_5C(nf=width, gc=dim, out_dim=dim)
            _conv(state, f"input_proj{index}.conv{conv}", (dim, width + (conv - 1) * dim, 3, 3), rng, gain=0.5)
        _double_conv(state, f"inc{index}", (dim, dim, dim), rng)
        for level in range(depth):
            out = dim * 2 ** (level + 1) // (2 if level == depth - 1 else 1)
            _double_conv(state, f"down_layers{index}.{level}.maxpool_conv.1", (dim * 2**level, out, out), rng)
        for level in range(depth):
            width_in = dim * 2 ** (depth - level)
            out = dim * 2 ** (depth - level - 1) // (2 if level < depth - 1 else 1)
            _double_conv(state, f"up_layers{index}.{level}.conv", (width_in, width_in // 2, out), rng)
        _conv(state, f"outc{index}.conv", (width, dim, 1, 1), rng, gain=OUTPUT_SCALES[index])
    return state


def prior_file(state: dict[str, Any], args: dict[str, Any] | None = None, name: str = "unet") -> dict[str, Any]:
    """A prior checkpoint as the original training saves it."""
    return {"prior_model": {"name": name, "args": dict(PRIOR_ARGS if args is None else args), "sd": state}, "epoch": 9}


# The reference: the original test.py and models/unet.py, run from the prior's state dict.


def _leaky(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


def _ref_conv(state: dict[str, torch.Tensor], name: str, x: torch.Tensor, padding: int = 1) -> torch.Tensor:
    return F.conv2d(x, state[f"{name}.weight"], state.get(f"{name}.bias"), padding=padding)


def _ref_dense_block(state: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    x1 = _leaky(_ref_conv(state, f"{name}.conv1", x))
    x2 = _leaky(_ref_conv(state, f"{name}.conv2", torch.cat((x, x1), 1)))
    x3 = _leaky(_ref_conv(state, f"{name}.conv3", torch.cat((x, x1, x2), 1)))
    x4 = _leaky(_ref_conv(state, f"{name}.conv4", torch.cat((x, x1, x2, x3), 1)))
    return _ref_conv(state, f"{name}.conv5", torch.cat((x, x1, x2, x3, x4), 1))


def _ref_double_conv(state: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    for conv, norm in ((0, 1), (3, 4)):
        x = F.conv2d(x, state[f"{name}.double_conv.{conv}.weight"], padding=1)
        prefix = f"{name}.double_conv.{norm}."
        mean, var = state[prefix + "running_mean"], state[prefix + "running_var"]
        x = _leaky(F.batch_norm(x, mean, var, state[prefix + "weight"], state[prefix + "bias"], False, 0.1, 1e-5))
    return x


def _ref_up(state: dict[str, torch.Tensor], name: str, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    x1 = F.interpolate(x1, scale_factor=2, mode="bilinear", align_corners=True)
    diff_y, diff_x = x2.size()[2] - x1.size()[2], x2.size()[3] - x1.size()[3]
    x1 = F.pad(x1, [diff_x // 2, diff_x - diff_x // 2, diff_y // 2, diff_y - diff_y // 2])
    return _ref_double_conv(state, f"{name}.conv", torch.cat([x2, x1], dim=1))


def _ref_unet(state: dict[str, torch.Tensor], index: int, depth: int, eps: torch.Tensor) -> torch.Tensor:
    z = _ref_double_conv(state, f"inc{index}", _ref_dense_block(state, f"input_proj{index}", eps))
    features = [z]
    for level in range(depth):
        z = _ref_double_conv(state, f"down_layers{index}.{level}.maxpool_conv.1", F.max_pool2d(z, 2))
        features.append(z)
    for level in range(depth):
        z = _ref_up(state, f"up_layers{index}.{level}", z, features[depth - 1 - level])
    return _ref_conv(state, f"outc{index}.conv", z, padding=0)


def reference(
    flow: SRFlow, state: dict[str, torch.Tensor], lr: np.ndarray, depth: int = DEPTH
) -> tuple[torch.Tensor, np.ndarray]:
    """The original test.py's SR of an 8-bit LR (H, W, 3): (clamped float output, its truncated 8-bit image)."""
    height, width, _ = lr.shape
    padded = np.pad(lr, [(0, -height % 2), (0, -width % 2), (0, 0)], "reflect")
    lr_t = torch.Tensor(np.expand_dims(padded.transpose([2, 0, 1]), axis=0).astype(np.float32)) / 255
    with torch.no_grad():
        lr_up = F.interpolate(lr_t, scale_factor=4, mode="bilinear", align_corners=False)
        features = flow.encode(lr_t)
        epses = flow.log_prob(lr_up, features).latents  # [the split's eps, z], as encode appends them
        for i in range(len(epses)):
            mean = torch.mean(epses[i], dim=[1], keepdim=True)
            std = torch.std(epses[i], dim=[1], keepdim=True)
            epses[i] = (epses[i] - mean) / (std + 1e-8)
        learned = [_ref_unet(state, index, depth, eps) for index, eps in enumerate(epses)]
        sr_t = torch.clamp(flow.sample(features, latents=learned), 0, 1)
    image = (np.clip(sr_t[0].numpy().transpose([1, 2, 0]), 0, 1) * 255).astype(np.uint8)
    return sr_t[..., : 4 * height, : 4 * width], image[: 4 * height, : 4 * width]


def psnr(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, peak: float = 1.0) -> float:
    mse = float(((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2).mean())
    return 10 * math.log10(peak**2 / mse) if mse else math.inf


def to_tensor(lr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255


# Fixtures: the tiny original pair on disk and an 8-bit LR photo.


@pytest.fixture(scope="module")
def flow() -> SRFlow:
    return source_srflow(TINY)


@pytest.fixture(scope="module")
def prior_state() -> dict[str, torch.Tensor]:
    return original_prior_state()


@pytest.fixture(scope="module")
def files(flow: SRFlow, prior_state: dict[str, torch.Tensor], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("original")
    torch.save(original_state(flow), folder / "SRFlow_DF2K_4X.pth")
    torch.save(prior_file(prior_state), folder / "SRFlow-LP.pth")
    return folder


@pytest.fixture(scope="module")
def imported(files: Path) -> OriginalSRFlowLP:
    model = convert_original(files / "SRFlow_DF2K_4X.pth", prior=files / "SRFlow-LP.pth")
    assert isinstance(model, OriginalSRFlowLP)
    return model


@pytest.fixture(scope="module")
def lr() -> np.ndarray:
    """A 48 x 64 8-bit LR photo (H, W, 3)."""
    return (photo_pair(192, 256)[1][0].permute(1, 2, 0) * 255).round().byte().numpy()


def test_the_import_holds_the_flow_and_the_original_unets(imported: OriginalSRFlowLP, flow: SRFlow) -> None:
    spec = {"name": "srflow-lp-original", "args": {"flow": imported.flow.spec, "prior": {"dim": 8, "depth": 3}}}
    assert imported.spec == spec and imported.flow.spec["args"] == {**imported.flow.spec["args"], **TINY}
    assert all(torch.equal(value, flow.state_dict()[key]) for key, value in imported.flow.state_dict().items())
    assert not any(parameter.requires_grad for parameter in imported.flow.parameters())
    assert imported.levels == [0, 2] and imported.prior.channels == (6, 96)
    assert imported.size_multiple == 16 and imported.scale == 4 and not imported.training


@pytest.mark.parametrize("size", [(48, 64), (33, 45)], ids=["even", "odd"])
def test_the_import_reproduces_the_original_test_py(
    imported: OriginalSRFlowLP, flow: SRFlow, prior_state: dict[str, torch.Tensor], lr: np.ndarray, size: tuple
) -> None:
    lr = lr[: size[0], : size[1]]
    expected, expected_8bit = reference(flow, prior_state, lr)
    with torch.no_grad():
        output = imported(to_tensor(lr))
        temperature_zero = flow(to_tensor(lr), temperature=0.0).clamp(0, 1)
    assert output.shape == (1, 3, 4 * size[0], 4 * size[1])
    assert 27 < psnr(expected, temperature_zero) < 33, "the prior moves the output: the test can tell"
    assert psnr(output.clamp(0, 1), expected) > 100  # measured: 138.0 / 138.4 dB (max |difference| 8e-7)
    assert psnr(tensor_to_pixels(output, np.uint8), expected_8bit, 255) > ORIGINAL_PSNR  # measured: 51.6 / 51.5 dB


def test_a_flow_with_other_latent_sizes_takes_a_prior_of_those_sizes(tmp_path: Path, lr: np.ndarray) -> None:
    """A two-level SRFlow's latents are 6 channels at 2x the LR and 24 at the LR: the UNets follow the flow."""
    two_levels = source_srflow({**TINY, "levels": 2})
    state = original_prior_state((6, 24), depth=2)
    torch.save(original_state(two_levels), tmp_path / "flow.pth")
    torch.save(prior_file(state, {"depth": 2, "dim": DIM}), tmp_path / "prior.pth")
    model = convert_original(tmp_path / "flow.pth", prior=tmp_path / "prior.pth")
    assert isinstance(model, OriginalSRFlowLP) and model.levels == [0, 1] and model.size_multiple == 4
    with torch.no_grad():
        output = model(to_tensor(lr[:24, :32])).clamp(0, 1)
    assert psnr(output, reference(two_levels, state, lr[:24, :32], depth=2)[0]) > 100


@pytest.mark.parametrize(
    ("origin", "whole", "windows"),
    [
        ((0, 0), (47, 63), [((0, 0), (96, 128)), ((0, 0), (24, 32))]),
        ((16, 32), (47, 63), [((32, 64), (96, 128)), ((8, 16), (24, 32))]),
        ((32, 16), (64, 48), [((64, 32), (128, 96)), ((16, 8), (32, 24))]),
    ],
)
def test_each_unet_sees_its_window_of_the_whole_images_latent_map(
    imported: OriginalSRFlowLP, monkeypatch: pytest.MonkeyPatch, origin: tuple, whole: tuple, windows: list
) -> None:
    """The crop's position on each latent grid: 2x the LR for the split's eps, LR / 2 for z, of the padded LR."""
    seen: list[MapWindow] = []
    real_predict = OriginalPriorUNets.predict

    def recording(self: OriginalPriorUNets, index: int, z: torch.Tensor, window: MapWindow) -> torch.Tensor:
        seen.append(window)
        return real_predict(self, index, z, window)

    monkeypatch.setattr(OriginalPriorUNets, "predict", recording)
    crop = torch.rand(1, 3, min(16, whole[0] - origin[0]), min(16, whole[1] - origin[1]))
    with torch.no_grad():
        imported.predict_latents(imported.flow.encode(crop), crop, origin, whole)
    assert seen == [MapWindow(*window) for window in windows]
    with pytest.raises(ValueError, match="not on the prior's grid of 16"):
        imported.predict_latents(imported.flow.encode(crop), crop, (8, 0), whole)


def tiled(
    model: OriginalSRFlowLP, lr: torch.Tensor, tile: int, tile_pad: str | int = "auto"
) -> tuple[torch.Tensor, int]:
    upscaler = SRFlowUpscaler(model.flow, torch.device("cpu"), torch.float32, 0.0, "x", tile, tile_pad, predictor=model)
    with torch.no_grad():
        (output,), report = collect(upscaler, lr, [0])
    return output, report.tiles


@pytest.mark.parametrize("size", [(48, 64), (47, 61)], ids=["even", "odd"])
def test_tiles_give_the_untiled_image(imported: OriginalSRFlowLP, lr: np.ndarray, size: tuple[int, int]) -> None:
    """Measured with 16-pixel tiles (even / odd): halo 16 within 7.0e-2 / 6.8e-2 of untiled, 32 within 1.5e-2 /
    1.8e-2 (mean 9.0e-4 / 9.5e-4), 48 and the auto halo within 1.2e-7 (every crop then holds the whole image)."""
    image = to_tensor(lr[: size[0], : size[1]])
    whole, one = tiled(imported, image, 0)
    auto, twelve = tiled(imported, image, 16)
    near, _ = tiled(imported, image, 16, 32)
    assert one == 1 and twelve == 12
    with torch.no_grad():
        assert torch.allclose(whole, imported(image), atol=1e-6, rtol=0)
    assert (auto - whole).abs().max() < 1e-5
    assert (near - whole).abs().max() < 3e-2 and (near - whole).abs().mean() < 2e-3


def test_prior_gaussian_runs_the_flow_alone(imported: OriginalSRFlowLP, tmp_path: Path) -> None:
    save_model(imported, tmp_path / "lp.safetensors", source="SRFlow_DF2K_4X.pth")
    learned = create_upscaler(UpscalerRequest(str(tmp_path / "lp.safetensors"), device="cpu"))
    assert isinstance(learned, SRFlowUpscaler), "an imported model is not back-projected under auto"
    assert isinstance(learned.predictor, OriginalSRFlowLP) and learned.model is learned.predictor.flow
    assert learned.halo == OriginalSRFlowLP.halo and not learned.stochastic
    request = UpscalerRequest(str(tmp_path / "lp.safetensors"), device="cpu", prior="gaussian", temperature=0.7)
    gaussian = create_upscaler(request)
    assert isinstance(gaussian, SRFlowUpscaler) and gaussian.predictor is None and gaussian.stochastic


def test_an_image_too_small_for_the_unets_is_refused(imported: OriginalSRFlowLP) -> None:
    """z (LR / 2) must pool 3 times: the padded LR needs 16 pixels a side, so 15 is the least (as the original)."""
    with torch.no_grad():
        assert imported(torch.rand(1, 3, 15, 17)).shape == (1, 3, 60, 68)
        with pytest.raises(ImageError, match="17×14, too small for this model's learned prior .at least 15"):
            imported(torch.rand(1, 3, 14, 17))


def test_cli_imports_the_pair_and_upscales_as_the_original(
    run_cli: CliInvoker, files: Path, flow: SRFlow, prior_state: dict[str, torch.Tensor], lr: np.ndarray, tmp_path: Path
) -> None:
    flow_file, prior_path = files / "SRFlow_DF2K_4X.pth", files / "SRFlow-LP.pth"
    result = run_cli("models", "import", str(flow_file), "--prior", str(prior_path), "--name", "lp-original")
    assert result.exit_code == 0, result.output
    assert "imported lp-original" in result.stdout and "--scale 4 " in result.stdout
    odd = np.ascontiguousarray(lr[:47, :61])
    PILImage.fromarray(odd).save(tmp_path / "lr.png")
    outputs = {}
    for tile in ("0", "16"):
        args = ["upscale", str(tmp_path / "lr.png"), "--model", "lp-original", "--scale", "4", "--tile", tile]
        result = run_cli(*args, "-o", str(tmp_path / f"out{tile}.png"), "--json")
        assert result.exit_code == 0, result.output
        record = json.loads(result.stdout)
        assert (
            record["status"] == "done"
            and record["size_out"] == [244, 188]
            and record["tiles"] == (1 if tile == "0" else 12)
        )
        outputs[tile] = read_image(tmp_path / f"out{tile}.png").pixels
    expected = reference(flow, prior_state, odd)[1]
    assert psnr(outputs["0"], expected, 255) > ORIGINAL_PSNR  # measured: 51.6 dB
    assert psnr(outputs["16"], expected, 255) > ORIGINAL_PSNR
    assert np.abs(outputs["16"].astype(int) - outputs["0"].astype(int)).max() <= 1


LINF_LP_PRIOR = prior_file(
    {
        name: torch.zeros(8, 27, 3, 3)
        for name in ("input_proj.conv1.weight", "lr_proj.0.weight", "inc.double_conv.0.weight")
    },
    {**PRIOR_ARGS, "in_chans": 27},
)
"""The start of an original LINF-LP prior: one UNet (input_proj, inc, ...) with an LR branch (lr_proj)."""


def _changed(state: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """``state`` with entries replaced (None: removed); keys are given with ``__`` for dots."""
    changed = dict(state)
    for key, value in changes.items():
        changed.pop(key.replace("__", "."))
        if value is not None:
            changed[key.replace("__", ".")] = value
    return changed


BAD_PRIORS = {
    "a-bare-state-dict": (lambda state: state, "not an original SRFlow-LP prior (expected {'prior_model'"),
    "a-linf-lp-prior": (lambda state: LINF_LP_PRIOR, "it is a LINF-LP prior (one UNet with an LR branch"),
    "not-unet": (lambda state: prior_file(state, name="mlp"), "prior model 'mlp' is not SRFlow-LP's 'unet'"),
    "transposed": (lambda state: prior_file(state, {**PRIOR_ARGS, "bilinear": False}), "transposed convolutions"),
    "unknown-argument": (
        lambda state: prior_file(state, {**PRIOR_ARGS, "cell_input": True}),
        "unexpected arguments cell_input (SRFlow-LP's UNet takes depth, dim, bilinear)",
    ),
    "no-depth": (lambda state: prior_file(state, {"dim": 8}), "its arguments give no depth"),
    "arguments-disagree": (
        lambda state: prior_file(state, {**PRIOR_ARGS, "dim": 16}),
        "its arguments say dim 16, depth 3, but its weights have dim 8, depth 3",
    ),
    "unknown-weight": (
        lambda state: prior_file({**state, "lr_proj0.weight": torch.zeros(1)}),
        "unrecognised weights: lr_proj0.weight",
    ),
    "missing-weight": (
        lambda state: prior_file(_changed(state, up_layers1__0__conv__double_conv__4__running_var=None)),
        "its weights do not fit SRFlow-LP's UNets of its own arguments (missing: "
        "up_layers1.0.conv.double_conv.4.running_var)",
    ),
    "wrong-shape": (
        lambda state: prior_file(_changed(state, inc1__double_conv__3__weight=torch.zeros(8, 8, 1, 1))),
        "(wrong shape: inc1.double_conv.3.weight)",
    ),
    "not-a-tensor": (
        lambda state: prior_file({**state, "outc0.conv.bias": [0.0] * 6}),
        "its 'sd' has entries that are not tensors of numbers: outc0.conv.bias",
    ),
}


@pytest.mark.parametrize(("make_file", "message"), BAD_PRIORS.values(), ids=BAD_PRIORS.keys())
def test_priors_that_are_not_srflow_lp_priors_are_refused(
    files: Path, prior_state: dict[str, torch.Tensor], tmp_path: Path, make_file: Any, message: str
) -> None:
    torch.save(make_file(prior_state), tmp_path / "bad.pth")
    with pytest.raises(CheckpointImportError) as failure:
        convert_original(files / "SRFlow_DF2K_4X.pth", prior=tmp_path / "bad.pth")
    text = str(failure.value)
    assert text.startswith(f"{tmp_path / 'bad.pth'}: ") and message in text and "\n" not in text, text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({**TINY, "levels": 2}, "its UNets take latents of 6 and 96 channels and give 6 and 96, but the flow's "
         "latents have 6 and 24"),
        (DEEPER, "the flow has 3 latents; the original SRFlow-LP prior takes two (one split level)"),
    ],
    ids=["other-channels", "three-latents"],
)  # fmt: skip
def test_a_prior_for_other_latents_than_the_flows_is_refused(
    files: Path, tmp_path: Path, args: dict[str, object], message: str
) -> None:
    torch.save(original_state(source_srflow(args)), tmp_path / "flow.pth")
    with pytest.raises(CheckpointImportError, match=re.escape(f"SRFlow-LP.pth: {message}")):
        convert_original(tmp_path / "flow.pth", prior=files / "SRFlow-LP.pth")


def test_a_flow_that_is_not_srflow_is_left_to_other_families(files: Path) -> None:
    prior = torch.load(files / "SRFlow-LP.pth", weights_only=True)
    assert import_srflow_with_prior(prior, files / "SRFlow-LP.pth", prior, files / "SRFlow-LP.pth") is None
    with pytest.raises(CheckpointImportError, match=str(files / "SRFlow-LP.pth")):
        convert_original(files / "SRFlow-LP.pth", prior=files / "SRFlow-LP.pth")


def test_cli_refuses_a_linf_lp_prior_for_an_srflow_in_one_line(
    run_cli: CliInvoker, files: Path, tmp_path: Path
) -> None:
    torch.save(LINF_LP_PRIOR, tmp_path / "rrdb-linf-LP.pth")
    flow_file, prior_path = files / "SRFlow_DF2K_4X.pth", tmp_path / "rrdb-linf-LP.pth"
    result = run_cli("models", "import", str(flow_file), "--prior", str(prior_path), "--name", "mixed")
    assert result.exit_code == 2 and not result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "rrdb-linf-LP.pth: it is a LINF-LP prior" in lines[0], lines
