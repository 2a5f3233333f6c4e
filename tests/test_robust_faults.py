"""Robustness: a model file whose flow gives NaN everywhere still yields a finite, sensible image through
the real CLI, and says so. (Faults in only some tiles are in test_tiling.py and test_srflow_engine.py.)"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from flowsr_cli.families.model_file import save_model
from flowsr_cli.io.reading import read_image
from tests.conftest import CliInvoker
from tests.families.linf.test_linf import tiny_linf
from tests.image_factory import smooth_rgb

pytestmark = pytest.mark.robustness


def test_a_model_file_that_outputs_nan_is_guarded_and_reported(run_cli: CliInvoker, tmp_path: Path) -> None:
    broken = tiny_linf(3)
    with torch.no_grad():
        broken.flow.last.bias.fill_(float("nan"))
    save_model(broken, tmp_path / "nan.safetensors")
    PILImage.fromarray(smooth_rgb(30, 44)).save(tmp_path / "photo.png")
    args = ["upscale", str(tmp_path / "photo.png"), "-s", "2", "--model", str(tmp_path / "nan.safetensors")]
    result = run_cli(*args, "--tile", "16", "--temperature", "0.8", "--json")

    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["tiles"] > 1 and record["guarded_tiles"] == record["tiles"]
    assert "exploding flow inverses" in result.stderr and "Traceback" not in result.output
    output = read_image(tmp_path / "photo_x2_nan_t0.8.png").pixels.astype(float)
    reference = run_cli("upscale", str(tmp_path / "photo.png"), "-s", "2", "--model", "bicubic", "-o", "-")
    bicubic = np.asarray(PILImage.open(io.BytesIO(reference.stdout_bytes)), dtype=float)
    assert output.shape == bicubic.shape and np.abs(output - bicubic).mean() < 3, "the fallback is a smooth upscale"
