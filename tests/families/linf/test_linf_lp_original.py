"""Importing an original LINF + LINF-LP pair (FlowSR-LP) and reproducing the original code's output.

The reference is ``original_linf_lp``: an independent re-implementation of the original code's test path,
checked bit for bit against the original repository's own code when it was written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from flowsr_cli.families.importing import CheckpointImportError, convert_original
from flowsr_cli.hub.catalog import reimport_command
from flowsr_cli.hub.manifest import ModelEntry
from tests.conftest import CliInvoker
from tests.eval.test_eval import SET5, SHARED
from tests.families.linf.original_linf_lp import (
    natural_image,
    original_output,
    original_output_without_prior,
    psnr,
    save_original_checkpoints,
)

pytestmark = pytest.mark.usefixtures("one_thread")

LR_SIZE = (24, 20)
"""Output sides at x2, x3, x3.5 and x4 cover every remainder mod 3 (48/40, 72/60, 84/70, 96/80)."""
REPRODUCED_DB = 45.0
TALL = (160, 23)
"""An LR whose x4 latent grid (214 rows) is taller than two reaches of the latent module (2 x 83 cells), so
tiles of 40 LR rows predict windows smaller than the image."""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An original-layout EDSR-baseline LINF and its LINF-LP prior (random, tamed weights)."""
    return save_original_checkpoints(tmp_path_factory.mktemp("original"), seed=0)


@pytest.fixture
def imported(run_cli: CliInvoker, checkpoints: tuple[Path, Path]) -> str:
    flow, prior = checkpoints
    result = run_cli("models", "import", str(flow), "--prior", str(prior), "--name", "paper-lp")
    assert result.exit_code == 0, result.output
    assert "imported paper-lp" in result.stdout
    return "paper-lp"


def _lr_file(directory: Path, size: tuple[int, int] = LR_SIZE, seed: int = 3) -> tuple[Path, np.ndarray]:
    pixels = natural_image(*size, seed=seed)
    path = directory / "lr.png"
    PILImage.fromarray(pixels).save(path)
    return path, pixels


def _upscaled(run_cli: CliInvoker, source: Path, out: Path, *args: str) -> np.ndarray:
    result = run_cli("upscale", str(source), "-o", str(out), *args)
    assert result.exit_code == 0, result.output
    return np.asarray(PILImage.open(out).convert("RGB"))


@pytest.mark.parametrize("scale", [2.0, 3.0, 3.5, 4.0])
def test_upscale_reproduces_the_original_code(
    run_cli: CliInvoker, tmp_path: Path, checkpoints: tuple[Path, Path], imported: str, scale: float
) -> None:
    source, pixels = _lr_file(tmp_path)
    ours = _upscaled(run_cli, source, tmp_path / "out.png", "--model", imported, "--scale", f"{scale:g}")
    size = (round(LR_SIZE[0] * scale), round(LR_SIZE[1] * scale))
    assert ours.shape == (*size, 3)
    reference = original_output(*checkpoints, pixels, size)
    assert psnr(ours, reference) >= REPRODUCED_DB
    without_prior = original_output_without_prior(checkpoints[0], pixels, size)
    assert psnr(ours, without_prior) < 35, "the prior must matter, or the check above proves nothing"


def test_tiles_reproduce_the_whole_image_and_the_gaussian_prior_runs_the_original_flow(
    run_cli: CliInvoker, tmp_path: Path, checkpoints: tuple[Path, Path], imported: str
) -> None:
    source, pixels = _lr_file(tmp_path, TALL, seed=5)
    size = (4 * TALL[0], 4 * TALL[1])
    whole = _upscaled(run_cli, source, tmp_path / "whole.png", "--model", imported, "--scale", "4", "--tile", "0")
    tiled = _upscaled(run_cli, source, tmp_path / "tiled.png", "--model", imported, "--scale", "4", "--tile", "40")
    changed = np.abs(whole.astype(int) - tiled.astype(int))
    assert changed.max() <= 1 and (changed > 0).mean() < 1e-3  # float rounding (~1e-6) can flip a rounding
    assert psnr(whole, original_output(*checkpoints, pixels, size)) >= REPRODUCED_DB
    flow_alone = _upscaled(
        run_cli, source, tmp_path / "flow.png", "--model", imported, "--scale", "4", "--prior", "gaussian",
        "--temperature", "0", "--tile", "40",
    )  # fmt: skip
    assert psnr(flow_alone, original_output_without_prior(checkpoints[0], pixels, size)) >= REPRODUCED_DB


def test_json_report_and_eval(
    run_cli: CliInvoker, tmp_path: Path, imported: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWSR_BACKBONE_DIR", str(SHARED / "weights"))
    source, _ = _lr_file(tmp_path)
    result = run_cli(
        "upscale", str(source), "-o", str(tmp_path / "out.png"), "--model", imported, "-s", "3.5", "--json"
    )
    assert result.exit_code == 0, result.output
    (report,) = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert report["status"] == "done" and report["size_out"] == [70, 84] and report["consistency"] == "off"
    table = tmp_path / "eval.json"
    result = run_cli(
        "eval", str(SET5), "--model", imported, "--baseline", "none", "--scales", "2,3.5", "--max-images", "1",
        "--json", str(table),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(table.read_text())["results"]
    assert [row["scale"] for row in rows] == [2.0, 3.5]
    assert all(row["prior"] == "learned" and row["inf_rate"] == 0.0 and row["psnr_y"] > 20 for row in rows)


def test_an_image_too_small_for_the_unet_is_one_clear_error(run_cli: CliInvoker, tmp_path: Path, imported: str) -> None:
    source, _ = _lr_file(tmp_path, (5, 9))
    result = run_cli("upscale", str(source), "-o", str(tmp_path / "out.png"), "--model", imported, "-s", "2")
    assert result.exit_code != 0
    assert "too small for the original LINF-LP" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "out.png").exists()


def _prior_checkpoint(path: Path, **changes: object) -> dict[str, object]:
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["prior_model"] = {**checkpoint["prior_model"], **changes}
    return checkpoint


def test_unusable_priors_are_refused_in_one_line(
    run_cli: CliInvoker, tmp_path: Path, checkpoints: tuple[Path, Path]
) -> None:
    flow, prior = checkpoints
    state = torch.load(prior, weights_only=True)["prior_model"]["sd"]
    cases = {
        "not an original LINF-LP prior": torch.load(flow, weights_only=True),
        "SRFlow-LP prior": _prior_checkpoint(prior, sd={**state, "input_proj0.conv1.weight": torch.zeros(1)}),
        "does not match the flow's 27": _prior_checkpoint(prior, args={"in_chans": 12, "depth": 3, "dim": 8}),
        "unrecognised weights: extra.weight": _prior_checkpoint(prior, sd={**state, "extra.weight": torch.zeros(1)}),
        "do not fit": _prior_checkpoint(prior, args={"in_chans": 27, "depth": 3, "dim": 16}),
        "transposed convolutions": _prior_checkpoint(prior, args={"in_chans": 27, "bilinear": False}),
    }
    for expected, checkpoint in cases.items():
        path = tmp_path / "bad-prior.pth"
        torch.save(checkpoint, path)
        with pytest.raises(CheckpointImportError, match=expected):
            convert_original(flow, path)
        result = run_cli("models", "import", str(flow), "--prior", str(path), "--name", "bad")
        assert result.exit_code == 2 and str(path) in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = run_cli("models", "import", str(prior), "--prior", str(prior), "--name", "bad")
    assert result.exit_code == 2 and "not an original LINF checkpoint" in result.stderr


def test_the_import_record_names_the_prior(run_cli: CliInvoker, imported: str) -> None:
    listing = run_cli("models", "list", env={"COLUMNS": "200"})
    assert listing.exit_code == 0 and "imported checkpoint with its learned prior" in listing.stdout
    entry = ModelEntry(imported, source="imported", checkpoint="/m/linf.pth", prior="/m/my lp.pth")
    assert (
        reimport_command(entry) == f"flowsr models import /m/linf.pth --prior '/m/my lp.pth' --name {imported} --force"
    )
