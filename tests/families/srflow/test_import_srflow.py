"""Importing the original SRFlow's state dicts (github.com/andreas128/SRFlow): exact conversion, layer math, errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from flowsr_cli.families.common.flow_layers import ActNorm, ActNormConv2d, InvertibleConv1x1, ZeroConv2d
from flowsr_cli.families.importing import CheckpointImportError, convert_original
from flowsr_cli.families.model_file import load_model
from flowsr_cli.families.registry import make
from flowsr_cli.families.srflow.network import SRFlow
from tests.conftest import CliInvoker

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"rrdb_blocks": 3, "rrdb_channels": 8, "growth": 4, "feature_blocks": [1, 2], "steps": 2, "hidden": 8}
"""Feature blocks as SRFlow's configs place them: evenly from block 1 to the last (like [1, 8, 15, 22] of 23)."""
DEEPER = {**TINY, "rrdb_blocks": 5, "feature_blocks": [1, 2, 3, 4], "levels": 4, "split_levels": [1, 2]}
"""SRFlow's own rule splits every level but the last two: for L = 4, levels 1 and 2."""


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def source_srflow(args: dict[str, object]) -> SRFlow:
    """A tiny SRFlow with every weight away from its start and actnorms initialised (a non-trivial flow)."""
    torch.manual_seed(0)
    model = make({"name": "srflow", "args": args})
    assert isinstance(model, SRFlow)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, ZeroConv2d):
                for parameter in (module.weight, module.bias, module.logs):
                    parameter.normal_(0.0, 0.05)
            if isinstance(module, InvertibleConv1x1):
                module.weight.add_(torch.randn_like(module.weight), alpha=0.2 / module.weight.shape[0] ** 0.5)
        model.train()
        model.log_prob(torch.rand(4, 3, 32, 32, generator=_generator(1)), model.encode(torch.rand(4, 3, 8, 8)))
    return model.eval()


def _actnorm(state: dict[str, torch.Tensor], prefix: str, actnorm: ActNorm) -> None:
    state[prefix + "bias"] = actnorm.bias
    state[prefix + "logs"] = actnorm.log_scale


def _glow_network(state: dict[str, torch.Tensor], prefix: str, net: nn.Sequential) -> None:
    """SRFlow's ``F``: Conv2d (no bias, actnorm) at 0 and 2, ReLUs at 1 and 3, Conv2dZeros at 4."""
    for index in (0, 2):
        conv = net[index]
        assert isinstance(conv, ActNormConv2d)
        state[f"{prefix}{index}.weight"] = conv.weight
        _actnorm(state, f"{prefix}{index}.actnorm.", conv.actnorm)
    last = net[4]
    assert isinstance(last, ZeroConv2d)
    state.update({f"{prefix}4.weight": last.weight, f"{prefix}4.bias": last.bias, f"{prefix}4.logs": last.logs})


def original_state(model: SRFlow) -> dict[str, torch.Tensor]:
    """What the original ``SRFlowNet.state_dict()`` holds for the same network (its names, shapes and layer list)."""
    conditioner = model.conditioner
    channels = conditioner.conv_first.out_channels
    state: dict[str, torch.Tensor] = {}
    for name, conv in (("conv_first", conditioner.conv_first), ("trunk_conv", conditioner.conv_body)):
        state.update({f"RRDB.{name}.weight": conv.weight, f"RRDB.{name}.bias": conv.bias})
    for block, rrdb in enumerate(conditioner.body):
        for dense, dense_block in enumerate(rrdb.blocks, start=1):
            for number, conv in enumerate([*dense_block.convs, dense_block.fuse], start=1):
                prefix = f"RRDB.RRDB_trunk.{block}.RDB{dense}.conv{number}."
                state.update({prefix + "weight": conv.weight, prefix + "bias": conv.bias})
    state.update({"RRDB.upconv1.weight": conditioner.upconv.weight, "RRDB.upconv1.bias": conditioner.upconv.bias})
    # The RRDB's image head and FlowUpsamplerNet.f: saved by the original, never used by its flow.
    for name, out_channels in (("upconv2", channels), ("HRconv", channels), ("conv_last", 3)):
        state[f"RRDB.{name}.weight"] = torch.randn(out_channels, channels, 3, 3)
        state[f"RRDB.{name}.bias"] = torch.randn(out_channels)
    state["flowUpsamplerNet.f.0.weight"] = torch.randn(96, conditioner.out_channels, 3, 3)
    state["flowUpsamplerNet.f.0.bias"] = torch.randn(96)
    index = 0
    for level in model.flow_levels:
        index += 1  # SqueezeLayer: no weights
        for step in level.steps:
            prefix = f"flowUpsamplerNet.layers.{index}."
            actnorm, invconv, *affine = step.layers
            _actnorm(state, prefix + "actnorm.", actnorm)
            state[prefix + "invconv.weight"] = invconv.weight  # LU_decomposed=False: the full (C, C) W
            if affine:
                injector, coupling = affine
                _glow_network(state, prefix + "affine.fFeatures.", injector.net)
                _glow_network(state, prefix + "affine.fAffine.", coupling.net)
            index += 1
        if level.split is not None:
            prior = level.split.prior_net
            prefix = f"flowUpsamplerNet.layers.{index}.conv."
            state.update({prefix + "weight": prior.weight, prefix + "bias": prior.bias, prefix + "logs": prior.logs})
            index += 1
    return {key: value.detach().clone() for key, value in state.items()}


def assert_same_outputs(source: SRFlow, imported: SRFlow, lr: torch.Tensor, hr: torch.Tensor) -> None:
    """log_prob, latents and samples agree (bit for bit: the conversion only renames weights)."""
    with torch.no_grad():
        expected, actual = source.log_prob(hr, source.encode(lr)), imported.log_prob(hr, imported.encode(lr))
        assert torch.isfinite(expected.log_prob).all() and expected.latents[-1].abs().max() < 50
        assert (expected.log_prob - actual.log_prob).abs().max() <= 1e-5
        for want, got in zip(expected.latents, actual.latents, strict=True):
            assert torch.equal(want, got)
        features = source.encode(lr)
        latents = source.random_latents(features, 0.9, _generator(4))
        sample = source.sample(features, latents=latents)
        assert torch.equal(sample, imported.sample(imported.encode(lr), latents=latents))


@pytest.mark.parametrize("args", [TINY, DEEPER], ids=["3-levels", "4-levels"])
def test_original_srflow_state_dict_converts_exactly(tmp_path: Path, args: dict[str, object]) -> None:
    source = source_srflow(args)
    torch.save(original_state(source), tmp_path / "SRFlow_DF2K_4X.pth")
    imported = convert_original(tmp_path / "SRFlow_DF2K_4X.pth")
    assert isinstance(imported, SRFlow)
    assert imported.spec["args"] == {"unconditional_steps": 2, "levels": 3, "split_levels": [1], **args}
    assert all(bool(module.initialized) for module in imported.modules() if isinstance(module, ActNorm))
    assert imported.state_dict().keys() == source.state_dict().keys()
    assert all(torch.equal(value, source.state_dict()[key]) for key, value in imported.state_dict().items())
    assert_same_outputs(source, imported, torch.rand(1, 3, 4, 6, generator=_generator(2)), torch.rand(1, 3, 16, 24))


def test_wrapped_and_data_parallel_state_dicts_convert_too(tmp_path: Path) -> None:
    source = source_srflow(TINY)
    state = {"module." + key: value for key, value in original_state(source).items()}
    torch.save({"state_dict": state, "iter": 200000}, tmp_path / "wrapped.pth")
    imported = convert_original(tmp_path / "wrapped.pth")
    assert isinstance(imported, SRFlow)
    assert_same_outputs(source, imported, torch.rand(1, 3, 4, 4), torch.rand(1, 3, 16, 16))


def test_conv2d_zeros_scales_by_exp_of_three_times_logs() -> None:
    """Glow's Conv2dZeros: (conv(x) + bias) * exp(logs * 3), not exp(logs)."""
    conv = ZeroConv2d(1, 2)
    with torch.no_grad():
        conv.weight[:, 0, 1, 1] = torch.tensor([2.0, -1.0])  # a 1x1 input only meets the centre tap
        conv.bias.copy_(torch.tensor([0.5, 0.0]))
        conv.logs.copy_(torch.tensor([0.1, -0.2]).view(2, 1, 1))
        y = conv(torch.full((1, 1, 1, 1), 1.5))
    expected = torch.tensor([(2.0 * 1.5 + 0.5) * math.exp(0.3), -1.5 * math.exp(-0.6)])
    assert torch.allclose(y.flatten(), expected, atol=1e-6, rtol=0)


def test_actnorm_shifts_then_scales_by_exp_logs_with_a_per_pixel_log_det() -> None:
    """SRFlow's ActNorm2d: y = (x + bias) * exp(logs), log-det = H * W * sum(logs)."""
    actnorm = ActNorm(2).eval()
    with torch.no_grad():
        actnorm.bias.copy_(torch.tensor([-1.0, 0.5]).view(1, 2, 1, 1))
        actnorm.log_scale.copy_(torch.tensor([math.log(3.0), 0.0]).view(1, 2, 1, 1))
    x = torch.tensor([2.0, 1.0]).view(1, 2, 1, 1).expand(1, 2, 2, 3)
    y, logdet = actnorm(x)
    assert torch.allclose(y[0, :, 0, 0], torch.tensor([3.0, 1.5]))
    assert logdet.item() == pytest.approx(6 * math.log(3.0))


def test_cli_imports_an_original_srflow_file(run_cli: CliInvoker, tmp_path: Path) -> None:
    source = source_srflow(TINY)
    torch.save(original_state(source), tmp_path / "SRFlow_DF2K_4X.pth")
    result = run_cli("models", "import", str(tmp_path / "SRFlow_DF2K_4X.pth"), "--name", "srflow-original")
    assert result.exit_code == 0, result.output
    assert "imported srflow-original" in result.stdout and "--scale 4 " in result.stdout
    located = run_cli("models", "path", "srflow-original")
    loaded = load_model(located.stdout.strip())
    assert isinstance(loaded, SRFlow)
    assert_same_outputs(source, loaded, torch.rand(1, 3, 4, 4), torch.rand(1, 3, 16, 16))


@pytest.mark.parametrize(
    ("removed", "added", "message"),
    [
        ("RRDB.trunk_conv.bias", None, "missing weights for conditioner.conv_body.bias"),
        ("flowUpsamplerNet.layers.3.invconv.weight", None, "flowUpsamplerNet.layers.3 is no SRFlow layer"),
        (None, "RRDB.extra.weight", "unexpected RRDB.extra.weight"),
        (
            None,
            "flowUpsamplerNet.layers.4.affine.fAffine.4.logs",
            "wrong shape: flowUpsamplerNet.layers.4.affine.fAffine.4.logs (3,) (expected (12, 1, 1))",
        ),
        (None, "RRDB.upconv3.weight", "it is an x8 or larger SRFlow"),
    ],
    ids=["missing", "broken-layer", "unexpected", "wrong-shape", "x8"],
)
def test_cli_refuses_srflow_files_it_cannot_convert(
    run_cli: CliInvoker, tmp_path: Path, removed: str | None, added: str | None, message: str
) -> None:
    state = original_state(source_srflow(TINY))
    if removed:
        del state[removed]
    if added:
        state[added] = torch.zeros(3)
    torch.save(state, tmp_path / "bad.pth")
    result = run_cli("models", "import", str(tmp_path / "bad.pth"), "--name", "bad")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not an SRFlow checkpoint this flowsr can convert: " + message in lines[0], lines
    assert not result.stdout


def test_feature_taps_that_srflow_configs_cannot_give_are_refused(tmp_path: Path) -> None:
    """The file holds how many RRDB outputs feed the condition (its width), not which: the published rule is used."""
    torch.save(
        original_state(source_srflow({**TINY, "rrdb_blocks": 5, "feature_blocks": [1, 2, 3]})), tmp_path / "x.pth"
    )
    with pytest.raises(CheckpointImportError, match="cannot tell which of its 5 RRDB blocks feed its 3"):
        convert_original(tmp_path / "x.pth")


class _RunsCode:
    """An object whose unpickling would create a file (a harmless stand-in for malicious code)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[Path, str]]:
        return (Path.write_text, (Path(self.path), "pwned"))


@pytest.mark.robustness
def test_an_srflow_file_carrying_pickled_code_is_refused_unrun(run_cli: CliInvoker, tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    state: dict[str, object] = dict(original_state(source_srflow(TINY)))
    state["RRDB.payload"] = _RunsCode(str(marker))
    torch.save(state, tmp_path / "evil.pth")
    result = run_cli("models", "import", str(tmp_path / "evil.pth"), "--name", "evil")
    assert result.exit_code == 2
    assert "cannot be loaded safely as a weights-only checkpoint" in result.stderr
    assert not marker.exists()
