"""Importing the original HCFlow SR state dicts (github.com/JingyunLiang/HCFlow): fidelity against an independent
re-implementation of the original (:mod:`tests.families.hcflow.original_hcflow`), recognition and refusals."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from flowsr_cli.families.hcflow.network import HCFlowSR
from flowsr_cli.families.hcflow.rescaling_importer import import_hcflow_checkpoint
from flowsr_cli.families.importing import CheckpointImportError, convert_original
from flowsr_cli.families.model_file import load_model
from tests.conftest import CliInvoker
from tests.families.hcflow.original_hcflow import HCFlowNet_SR, tamed_original

pytestmark = pytest.mark.usefixtures("one_thread")

SPLIT_OPT = {"RRDB_nf": 8, "RRDB_gc": 4, "RRDB_nb": [1, 1], "hidden_channels": 6}
X4 = {"L": 2, "K": [4, 3], "after": [2, 1], "hidden": 8, "split_opt": SPLIT_OPT}
"""Different step counts per level and different coupling widths, so the importer must read each from the file."""
X8 = {"L": 3, "K": [2, 2, 3], "after": [1, 1, 1], "hidden": 8, "split_opt": {**SPLIT_OPT, "RRDB_nb": [1, 0]}}
SPECS = {
    "x4": {
        "levels": 2,
        "steps": [2, 2],
        "cond_steps": [2, 1],
        "hidden": 8,
        "cond_hidden": 6,
        "rrdb_blocks": [1, 1],
        "rrdb_channels": 8,
        "growth": 4,
    },
    "x8": {
        "levels": 3,
        "steps": [1, 1, 2],
        "cond_steps": [1, 1, 1],
        "hidden": 8,
        "cond_hidden": 6,
        "rrdb_blocks": [1, 0],
        "rrdb_channels": 8,
        "growth": 4,
    },
}
CONFIGS = {"x4": X4, "x8": X8}


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _imported(tmp_path: Path, original: HCFlowNet_SR, name: str = "SR_DF2K_X4_HCFlow.pth") -> HCFlowSR:
    torch.save(original.state_dict(), tmp_path / name)
    model = convert_original(tmp_path / name)  # loads weights-only
    assert isinstance(model, HCFlowSR)
    return model


@pytest.mark.parametrize("config", ["x4", "x8"])
def test_imported_model_samples_what_the_original_samples(tmp_path: Path, config: str) -> None:
    original = tamed_original(**CONFIGS[config], seed=1)
    model = _imported(tmp_path, original)
    assert model.spec["args"] == SPECS[config] and model.scale == 2 ** SPECS[config]["levels"]
    lr = torch.rand(2, 3, 3, 5, generator=_generator(2))  # odd sizes: the inverse needs no padding
    with torch.no_grad():
        features = model.encode(lr)
        expected = original.flow(z=lr, eps_std=0.0, reverse=True)
        assert expected.shape == (2, 3, 3 * model.scale, 5 * model.scale)
        assert (model.sample(features, 0.0) - expected).abs().max() < 1e-5
        torch.manual_seed(5)
        expected = original.flow(z=lr, eps_std=0.8, reverse=True)
        assert 0.05 < (expected - original.flow(z=lr, eps_std=0.0, reverse=True)).abs().max() < 10
        assert (model.sample(features, 0.8, _generator(5)) - expected).abs().max() < 1e-5
        latents = model.random_latents(features, _generator(5))
        assert [tuple(latent.shape[1:]) for latent in latents] == model.latent_shapes(features)
        assert (model.sample(features, 0.8, latents=latents) - expected).abs().max() < 1e-5
        torch.manual_seed(5)
        clamped = original(lr=lr, eps_std=0.8, reverse=True)
        assert (model.sample(features, 0.8, _generator(5)).clamp(0, 1) - clamped).abs().max() < 1e-5


@pytest.mark.parametrize("config", ["x4", "x8"])
def test_imported_model_scores_what_the_original_scores(tmp_path: Path, config: str) -> None:
    original = tamed_original(**CONFIGS[config], seed=3)
    model = _imported(tmp_path, original)
    hr = torch.rand(2, 3, 2 * model.scale, 3 * model.scale, generator=_generator(4))
    pixels = hr.shape[-2] * hr.shape[-1]
    with torch.no_grad():
        torch.manual_seed(6)
        own_lr, _ = original(hr=hr, lr=torch.zeros(2, 3, 2, 3))  # LR^, quantised: the LR the model itself makes
        for lr in (own_lr, torch.rand(2, 3, 2, 3, generator=_generator(7))):
            torch.manual_seed(8)
            fake_lr, expected = original(hr=hr, lr=lr)
            actual = model.nll_bits_per_pixel(hr, lr, generator=_generator(8))
            assert math.isfinite(expected.item()) and actual.item() == pytest.approx(expected.item(), rel=1e-5)
            for image in range(2):  # log_prob: per image, without the dequantisation offset
                torch.manual_seed(8)
                _, nll = original(hr=hr[image : image + 1], lr=lr[image : image + 1])
                noise = torch.rand(1, *hr.shape[1:], generator=_generator(8)) / 64
                log_prob, _ = model.log_prob(hr[image : image + 1] + noise, model.encode(lr[image : image + 1]))
                expected_log_prob = -nll * math.log(2) * pixels + math.log(64) * pixels
                assert log_prob.item() == pytest.approx(expected_log_prob.item(), rel=1e-5, abs=1e-2)
        noise = torch.rand(hr.shape, generator=_generator(8)) / 64
        lr_hat = model.to_latents(hr + noise).lr_hat
        assert torch.equal(((lr_hat.clamp(0, 1) * 255).round() / 255), fake_lr)


def test_data_parallel_prefixes_are_stripped(tmp_path: Path) -> None:
    original = tamed_original(**X4, seed=1)
    state = {"module." + key: value for key, value in original.state_dict().items()}
    torch.save(state, tmp_path / "SR_DF2K_X4_HCFlow+.pth")
    model = convert_original(tmp_path / "SR_DF2K_X4_HCFlow+.pth")
    lr = torch.rand(1, 3, 2, 2)
    with torch.no_grad():
        assert (model.sample(model.encode(lr), 0.0) - original.flow(z=lr, eps_std=0.0, reverse=True)).abs().max() < 1e-5


def test_cli_imports_an_original_hcflow_file(run_cli: CliInvoker, tmp_path: Path) -> None:
    original = tamed_original(**X4, seed=1)
    torch.save(original.state_dict(), tmp_path / "SR_DF2K_X4_HCFlow.pth")
    result = run_cli("models", "import", str(tmp_path / "SR_DF2K_X4_HCFlow.pth"), "--name", "hcflow-original")
    assert result.exit_code == 0, result.output
    assert "imported hcflow-original" in result.stdout and "--scale 4 " in result.stdout
    loaded = load_model(run_cli("models", "path", "hcflow-original").stdout.strip())
    assert isinstance(loaded, HCFlowSR) and loaded.spec["args"] == SPECS["x4"]
    lr = torch.rand(1, 3, 2, 3)
    with torch.no_grad():
        expected = original.flow(z=lr, eps_std=0.0, reverse=True)
        assert (loaded.sample(loaded.encode(lr), 0.0) - expected).abs().max() < 1e-5


@pytest.mark.parametrize(
    "checkpoint",
    [
        {"RRDB.conv_first.weight": torch.zeros(1), "flowUpsamplerNet.layers.1.actnorm.bias": torch.zeros(1)},
        {"model": {"name": "linf", "args": {}, "sd": {"encoder.head.0.weight": torch.zeros(1)}}},
        {"flow.weight": torch.zeros(1), "flowUpsamplerNet.layers.0.x": torch.zeros(1)},
        torch.zeros(3),
        {1: torch.zeros(1)},
    ],
    ids=["srflow", "linf", "near-names", "tensor", "int-keys"],
)
def test_other_files_are_not_claimed(checkpoint: object) -> None:
    assert import_hcflow_checkpoint(checkpoint, Path("other.pth")) is None


@pytest.mark.parametrize(
    "key", ["flow.layers.0.haar_weights", "flow.layers.1.affine.f.conv5.weight", "flow.layers.1.affine.f.conv4.bias"]
)
def test_rescaling_files_go_to_the_rescaling_importer(tmp_path: Path, key: str) -> None:
    """FlowNet_Rescaling_x4: Haar squeezes (``haar_weights``) and dense-block couplings, otherwise the same names
    (its conversion: test_import_rescaling.py)."""
    state = dict(tamed_original(**X4, seed=1).state_dict())
    state[key] = torch.zeros(1)
    torch.save(state, tmp_path / "Rescaling_DF2K_X4_HCFlow.pth")
    with pytest.raises(CheckpointImportError, match="not an HCFlow rescaling checkpoint this flowsr can") as error:
        convert_original(tmp_path / "Rescaling_DF2K_X4_HCFlow.pth")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("removed", "added", "message"),
    [
        ("flow.level1_condFlow.trunk_conv1.bias", None, "missing weights flow.level1_condFlow.trunk_conv1.bias"),
        (None, "flow.layers.1.affine.f.extra.weight", "unexpected flow.layers.1.affine.f.extra.weight"),
        (None, "flow.level0_condFlow.f.logs", "wrong shape: flow.level0_condFlow.f.logs (3,) (expected (12, 1, 1))"),
        (None, "flow.layers.40.actnorm.bias", "flow.layers.40 lies beyond the 2 levels"),
        (None, "flow.level5_condFlow.f.bias", "its conditional flows are levels [0, 1, 5]"),
        (None, "flow.layers.0.actnorm.bias", "flow.layers.0 has weights where level 0's squeeze belongs"),
    ],
    ids=["missing", "unexpected", "wrong-shape", "beyond", "levels", "squeeze"],
)
def test_files_it_cannot_convert_are_refused_in_one_line(
    run_cli: CliInvoker, tmp_path: Path, removed: str | None, added: str | None, message: str
) -> None:
    state = dict(tamed_original(**X4, seed=1).state_dict())
    if removed:
        del state[removed]
    if added:
        state[added] = torch.zeros(3)
    torch.save(state, tmp_path / "bad.pth")
    result = run_cli("models", "import", str(tmp_path / "bad.pth"), "--name", "bad")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not an HCFlow SR checkpoint this flowsr can convert: " + message in lines[0], lines


def test_entries_that_are_not_tensors_are_refused(tmp_path: Path) -> None:
    state: dict[str, object] = dict(tamed_original(**X4, seed=1).state_dict())
    state["flow.layers.1.note"] = [1, 2]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointImportError, match="entries that are not tensors of numbers: flow.layers.1.note"):
        convert_original(tmp_path / "bad.pth")
