"""Importing the original HCFlow rescaling state dict (``Rescaling_DF2K_X4_HCFlow.pth``): fidelity through the real
CLI against an independent re-implementation of the original (:mod:`tests.families.hcflow.original_rescaling`),
and the files it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from flowsr_cli.families.hcflow.rescaling import HCFlowRescaler
from flowsr_cli.families.importing import CheckpointImportError, convert_original
from flowsr_cli.families.model_file import load_model
from tests.conftest import CliInvoker
from tests.families.hcflow.original_rescaling import quantise, tamed_original_rescaling

pytestmark = pytest.mark.usefixtures("one_thread")

SPLIT_OPT = {"RRDB_nf": 8, "RRDB_gc": 4, "RRDB_nb": [1, 1], "hidden_channels": 6}
ORIGINAL = {"K": [4, 3], "after": [2, 1], "hidden": 8, "split_opt": SPLIT_OPT}
"""Different step counts per level and different widths, so the importer must read each from the file. Its layout:
level 0 is flow.layers.0 (Haar), 1-2 (steps), 3 (split); level 1 is flow.layers.4 (Haar), 5-6 (steps), 7 (split)."""
SPEC = {
    "levels": 2,
    "steps": [2, 2],
    "cond_steps": [2, 1],
    "hidden": 8,
    "cond_hidden": 6,
    "rrdb_blocks": [1, 1],
    "rrdb_channels": 8,
    "growth": 4,
}
FILE = "Rescaling_DF2K_X4_HCFlow.pth"


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _cli_import(run_cli: CliInvoker, path: Path, name: str) -> HCFlowRescaler:
    result = run_cli("models", "import", str(path), "--name", name)
    assert result.exit_code == 0, result.output
    assert f"imported {name}: 0.10 M parameters" in result.stdout
    model = load_model(run_cli("models", "path", name).stdout.strip())
    assert isinstance(model, HCFlowRescaler) and model.spec["args"] == SPEC and model.scale == 4
    return model


def test_imported_model_downscales_and_upscales_as_the_original(run_cli: CliInvoker, tmp_path: Path) -> None:
    original = tamed_original_rescaling(**ORIGINAL, seed=1)
    torch.save(original.state_dict(), tmp_path / FILE)
    model = _cli_import(run_cli, tmp_path / FILE, "rescale-original")
    hr = torch.rand(2, 3, 8, 12, generator=_generator(2))
    with torch.no_grad():
        lr, z1, z2 = original.flow(hr=hr)
        assert 0.1 < (lr - F.avg_pool2d(hr, 4)).abs().max() < 1  # the weights do act, tamely
        ours, latents = model.to_latents(hr)
        assert (ours - lr).abs().max() < 1e-5 and (model.downscale(hr) - lr).abs().max() < 1e-5
        assert (latents[0] - z2).abs().max() < 1e-5 and (latents[1] - z1).abs().max() < 1e-5
        assert (ours.clamp(0, 1) - original(hr=hr)[0]).abs().max() < 1e-5
        quantised = quantise(lr)
        for heat in (1.0, 0.0, 0.6):  # 1.0: the original's test heat
            torch.manual_seed(5)
            expected = original.flow(z=quantised, eps_std=heat, reverse=True)
            assert (model.upscale(quantised, heat, _generator(5)) - expected).abs().max() < 1e-5
            torch.manual_seed(5)
            clamped = original(lr=quantised, eps_std=heat, reverse=True)
            assert (model.upscale(quantised, heat, _generator(5)).clamp(0, 1) - clamped).abs().max() < 1e-5
        hot, cold = (original.flow(z=quantised, eps_std=heat, reverse=True) for heat in (1.0, 0.0))
        assert (hot - cold).abs().max() > 0.5  # the latents matter: the draws must be the same
        restored = model.upscale(ours, 1.0, latents=latents)
    assert (restored - hr).abs().max() < 1e-5


def test_data_parallel_prefixes_are_stripped(tmp_path: Path) -> None:
    original = tamed_original_rescaling(**ORIGINAL, seed=3)
    torch.save({"module." + key: value for key, value in original.state_dict().items()}, tmp_path / FILE)
    model = convert_original(tmp_path / FILE)
    hr = torch.rand(1, 3, 4, 8, generator=_generator(4))
    with torch.no_grad():
        assert isinstance(model, HCFlowRescaler)
        assert (model.downscale(hr) - original.flow(hr=hr)[0]).abs().max() < 1e-5


def test_upscale_refuses_a_rescaler_in_one_line(run_cli: CliInvoker, tmp_path: Path) -> None:
    torch.save(tamed_original_rescaling(**ORIGINAL, seed=1).state_dict(), tmp_path / FILE)
    _cli_import(run_cli, tmp_path / FILE, "rescaler")
    Image.new("RGB", (8, 8), (90, 120, 200)).save(tmp_path / "photo.png")
    result = run_cli("upscale", str(tmp_path / "photo.png"), "--scale", "4", "--model", "rescaler")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'rescaler' is a hcflow-rescale, which `upscale` cannot run" in lines[0], lines


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"flow.layers.0.haar_weights": -torch.ones(12, 1, 2, 2)}, "flow.layers.0.haar_weights are not the Haar"),
        ({"flow.layers.4.haar_weights": torch.ones(12, 1, 2, 2)}, "wrong shape: flow.layers.4.haar_weights (12, 1,"),
        ({"flow.layers.4.haar_weights": None}, "flow.layers.4.haar_weights is missing (level 1's Haar squeeze)"),
        ({"flow.layers.6.affine.f.conv5.bias": None}, "missing weights flow.layers.6.affine.f.conv5.bias"),
        ({"flow.layers.1.affine.f.conv6.bias": torch.zeros(3)}, "unexpected flow.layers.1.affine.f.conv6.bias"),
        ({"flow.layers.1.permute.weight": torch.eye(12)}, "unexpected flow.layers.1.permute.weight"),
        ({"flow.layers.2.affine.f.conv5.bias": torch.zeros(5)}, "wrong shape: flow.layers.2.affine.f.conv5.bias (5,)"),
        ({"flow.layers.14.actnorm.bias": torch.zeros(1)}, "flow.layers.14 lies beyond the 2 levels"),
        ({"flow.layers.3.haar_weights": torch.ones(12, 1, 2, 2)}, "flow.layers.3.haar_weights where no level's"),
        ({"flow.level5_condFlow.f.bias": torch.zeros(1)}, "its conditional flows are levels [0, 1, 5], not 0 to L - 1"),
    ],
    ids=["not-haar", "haar-shape", "no-haar", "missing", "unexpected", "permute", "shape", "beyond", "stray", "levels"],
)
def test_files_it_cannot_convert_are_refused_in_one_line(
    run_cli: CliInvoker, tmp_path: Path, change: dict[str, torch.Tensor | None], message: str
) -> None:
    state = dict(tamed_original_rescaling(**ORIGINAL, seed=1).state_dict())
    for key, value in change.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    torch.save(state, tmp_path / "bad.pth")
    result = run_cli("models", "import", str(tmp_path / "bad.pth"), "--name", "bad")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not an HCFlow rescaling checkpoint this flowsr can convert: " + message in lines[0]


def test_entries_that_are_not_tensors_are_refused(tmp_path: Path) -> None:
    state: dict[str, object] = dict(tamed_original_rescaling(**ORIGINAL, seed=1).state_dict())
    state["flow.layers.1.note"] = "x"
    torch.save(state, tmp_path / FILE)
    with pytest.raises(CheckpointImportError, match="entries that are not tensors of numbers: flow.layers.1.note"):
        convert_original(tmp_path / FILE)
