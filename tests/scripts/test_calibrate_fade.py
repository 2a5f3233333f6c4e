"""scripts/calibrate_fade.py: the fade width is chosen by mean LPIPS on training photos and written
into a copy of the model's spec, weights unchanged."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors import safe_open

from flowsr_cli.engine.pipeline import rgb_tensor
from flowsr_cli.eval.metrics import make_lr
from flowsr_cli.families.linf.prior import LINFLP, LatentFade
from flowsr_cli.families.model_file import load_model, save_model
from flowsr_cli.io.reading import read_image
from tests.conftest import REPO_ROOT, SHARED
from tests.families.linf.test_linf_lp import tiny_linf_lp

SCRIPT = REPO_ROOT / "scripts" / "calibrate_fade.py"


def load_script(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("calibrate_fade", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "calibrate_fade", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_best_width_is_the_finite_positive_one_with_the_lowest_mean_over_scales(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = load_script(monkeypatch)
    means = {
        (0.0, 6.0): 0.10, (0.0, 8.0): 0.10,  # the flow's mode is not a fade width
        (2.0, 6.0): 0.30, (2.0, 8.0): 0.20,
        (3.0, 6.0): 0.20, (3.0, 8.0): 0.26,
        (math.inf, 6.0): 0.15, (math.inf, 8.0): 0.15,  # no fade is not one either
    }  # fmt: skip
    calibration = script.Calibration(4.0, [6.0, 8.0], [0.0, 2.0, 3.0, math.inf], means, images=1)
    assert calibration.overall(3.0) == pytest.approx(0.23)
    assert calibration.best_width() == 3.0
    assert script.fade_gain(4.0, 0.0, 8.0) == 0.0
    assert script.fade_gain(4.0, 0.0, 3.0) == script.fade_gain(4.0, math.inf, 8.0) == 1.0
    assert script.fade_gain(4.0, 2.0, 6.0) == pytest.approx(math.exp(-1))


def test_the_sample_starts_where_asked_and_shrinks_each_photo_before_cropping(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    script = load_script(monkeypatch)
    sources = sorted((SHARED / "data/train/bsds500_train").iterdir())[:4]
    for path in sources:
        shutil.copy(path, tmp_path / path.name)
    as_stored = script.sample_photos([tmp_path], every=2, crop=1000, start=1, downscale=1.0)
    shrunk = script.sample_photos([tmp_path], every=2, crop=1000, start=1, downscale=2.0)
    cropped = script.sample_photos([tmp_path], every=2, crop=64, start=1, downscale=2.0)

    assert len(as_stored) == len(shrunk) == 2
    assert torch.equal(as_stored[0], rgb_tensor(read_image(tmp_path / sources[1].name)))
    for original, small, crop in zip(as_stored, shrunk, cropped, strict=True):
        assert torch.equal(small, make_lr(original, 2.0)[1])
        assert small.shape[-2:] == (original.shape[-2] // 2, original.shape[-1] // 2)
        top, left = (small.shape[-2] - 64) // 2, (small.shape[-1] - 64) // 2
        assert torch.equal(crop, small[..., top : top + 64, left : left + 64])


def test_the_script_writes_a_faded_copy_with_the_width_its_table_ranks_first(tmp_path: Path) -> None:
    torch.manual_seed(0)
    save_model(tiny_linf_lp(3), tmp_path / "prior.safetensors")
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted((SHARED / "data/train/bsds500_train").iterdir())[:2]:
        shutil.copy(path, photos / path.name)
    command = [
        sys.executable, str(SCRIPT), str(tmp_path / "prior.safetensors"), str(photos),
        "--out", str(tmp_path / "faded.safetensors"), "--scales", "6,8", "--widths", "1,3",
        "--every", "1", "--crop", "64", "--threads", "1",
    ]  # fmt: skip
    env = {**os.environ, "FLOWSR_BACKBONE_DIR": str(SHARED / "weights")}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "2 training photos" in result.stdout
    table = {
        float(width): float(value) for width, value in re.findall(r"width +(\S+): mean LPIPS (\S+)", result.stdout)
    }
    assert set(table) == {0.0, 1.0, 3.0, math.inf}
    chosen = min((1.0, 3.0), key=table.__getitem__)

    original, faded = load_model(tmp_path / "prior.safetensors"), load_model(tmp_path / "faded.safetensors")
    assert isinstance(faded, LINFLP) and faded.fade == LatentFade(4.0, chosen)
    assert all(torch.equal(value, faded.state_dict()[name]) for name, value in original.state_dict().items())
    with safe_open(tmp_path / "faded.safetensors", "pt") as handle:
        assert handle.metadata()["fade_calibration"].startswith(f"width {chosen:g} from x4")

    recalibrate = [
        *command[:2],
        str(tmp_path / "faded.safetensors"),
        *command[3:5],
        str(tmp_path / "again.safetensors"),
    ]
    again = subprocess.run([*recalibrate, *command[6:]], capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr  # a faded model is calibrated afresh: its old note is replaced
    recalibrated = load_model(tmp_path / "again.safetensors")
    assert isinstance(recalibrated, LINFLP) and recalibrated.fade == LatentFade(4.0, chosen)
