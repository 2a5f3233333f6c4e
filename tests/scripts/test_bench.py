"""The benchmark's naive reference path and the engine compute the same image (what its speed-up
ratio compares), with the engine's tiling, shared conditioning and tuned chunks all in play."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from types import ModuleType

import pytest
import torch

from flowsr_cli.engine.compiling import cpp_compiler
from flowsr_cli.engine.upscaler import Upscaler
from flowsr_cli.eval.evaluation import super_resolve
from flowsr_cli.families.model_file import save_model
from flowsr_cli.families.registry import make
from flowsr_cli.families.upscalers import UpscalerRequest, create_upscaler
from flowsr_cli.io.sizing import Size
from tests.conftest import REPO_ROOT

SCRIPTS = REPO_ROOT / "scripts"


def load_reference(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(SCRIPTS))
    spec = importlib.util.spec_from_file_location("naive_reference", SCRIPTS / "naive_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_naive_matches_engine(
    upscaler: Upscaler, naive_path: Callable[..., torch.Tensor], lr: torch.Tensor, size: Size, *, tiled: bool
) -> None:
    """The naive path's output equals the engine's (unprojected) to 1e-4; a tiled engine really ran in tiles."""
    engine = super_resolve(upscaler, lr, size, 0)
    naive = naive_path(upscaler.model, lr, size)
    assert naive.shape == engine.shape == (1, 3, size.height, size.width)
    assert (engine - naive).abs().max().item() <= 1e-4
    if tiled:
        assert upscaler.upscale(lr, size, lambda *_: None).tiles > 1


@pytest.mark.parametrize(("tile", "scale"), [(0, 4.0), (24, 3.5), (24, 6.0)])
def test_naive_reference_path_matches_the_engine(monkeypatch: pytest.MonkeyPatch, tile: int, scale: float) -> None:
    reference = load_reference(monkeypatch)
    path = str(resources.files("flowsr_cli") / "weights" / "linf-lp.safetensors")
    upscaler = create_upscaler(UpscalerRequest(path, device="cpu", tile=tile, consistency="off"))
    base = torch.rand(1, 3, 12, 15, generator=torch.Generator().manual_seed(4))
    lr = torch.nn.functional.interpolate(base, size=(40, 50), mode="bilinear", align_corners=False)
    size = Size(round(50 * scale), round(40 * scale))
    assert_naive_matches_engine(upscaler, reference.naive_upscale, lr, size, tiled=bool(tile))


@pytest.mark.parametrize(("tile", "side", "scale"), [(0, 40, 4.0), (24, 40, 4.0), (24, 37, 3.5)])
def test_naive_original_path_matches_the_engine_on_an_imported_style_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tile: int, side: int, scale: float
) -> None:
    """An original-variant LINF-LP (as `models import` makes, small random weights): its zero-padded block past
    the image (x4 of 40 is 160, a multiple of 3 plus one), queried at the centre, and its whole-map LR stretch."""
    reference = load_reference(monkeypatch)
    flow = {
        "name": "linf",
        "args": {
            "encoder": {"name": "edsr-baseline", "args": {"channels": 16, "blocks": 2}},
            "patch_size": 3,
            "hidden": 32,
            "mlp_layers": 2,
            "query_geometry": "original",
        },
    }
    latent = {"name": "lp-latent-original", "args": {"in_chans": 27, "dim": 16, "depth": 2}}
    torch.manual_seed(3)
    model = make({"name": "linf-lp-original", "args": {"flow": flow, "latent": latent}}).eval()
    with torch.no_grad():  # at PyTorch's init the UNet's coarse levels hardly reach the output; doubled, they do
        for conv in (module for module in model.latent.modules() if isinstance(module, torch.nn.Conv2d)):
            conv.weight.mul_(2.0)
    model_file = tmp_path / "original.safetensors"
    save_model(model, model_file)
    upscaler = create_upscaler(UpscalerRequest(str(model_file), device="cpu", tile=tile, consistency="off"))
    lr = torch.rand(1, 3, side, side + 3, generator=torch.Generator().manual_seed(5))
    size = Size(round((side + 3) * scale), round(side * scale))
    assert_naive_matches_engine(upscaler, reference.naive_original_upscale, lr, size, tiled=bool(tile))


def test_the_naive_hcflow_path_is_the_original_networks_reverse_pass(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``--model paper-hcflow-original-random``: the paper-size original-layout HCFlow, imported; the bench's
    unprojected path (heat 0) and the original network's own reverse pass give the same image, to float32
    rounding (flowsr runs the flow channels-last, whose convolutions sum in another order): within 1e-4 of the
    image's range, as LINF-LP's naive path is within 1e-4 of [0, 1] (these random weights reach about 1600, and 52
    flow steps amplify rounding: 1.3e-5 of it measured)."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    bench = importlib.import_module("bench")
    model = bench.materialise("paper-hcflow-original-random", tmp_path)
    assert Path(model).with_suffix(".pth").is_file()
    lr = torch.rand(1, 3, 12, 16, generator=torch.Generator().manual_seed(6))
    size = Size(64, 48)
    engine = bench.runner("unprojected", model)(lr, size)
    naive = bench.runner("naive", model)(lr, size)
    assert engine.shape == naive.shape == (1, 3, 48, 64)
    assert (engine - naive).abs().max() <= 1e-4 * naive.abs().max()


def test_the_per_model_table_times_each_precision_in_its_own_process(tmp_path: Path) -> None:
    """Each precision, and with a C++ compiler also fp32 under --compile: its warm-up then includes a cold compile,
    which the table sets against the uncompiled fp32 run's warm-up and speed."""
    report = tmp_path / "speed.json"
    command = [sys.executable, str(SCRIPTS / "bench.py"), "--only-models", "--compare", "linf", "--compare-size", "24"]
    precisions = ["fp32", "bf16"] + (["fp32+compile"] if shutil.which(cpp_compiler()) else [])
    result = subprocess.run(
        [*command, "--precisions", *precisions, "--json", str(report)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(report.read_text())["models"]
    assert [(row["model"], row["precision"]) for row in rows] == [("linf", entry) for entry in precisions]
    assert rows[0]["speedup_over_fp32"] == 1.0 and rows[1]["speedup_over_fp32"] > 0
    assert all(row["seconds_per_input_mp"] > 0 and row["peak_rss_mb"] > 0 for row in rows)
    assert all(isinstance(row["guarded_tiles"], int) and row["guarded_tiles"] >= 0 for row in rows)
    if len(rows) == 3:
        compiled = rows[2]
        assert compiled["compile_seconds"] > 1  # a cold compile takes seconds; a 24² image's run does not
        assert compiled["compile_seconds"] == compiled["warm_up_seconds"] - rows[0]["warm_up_seconds"]
        assert f"fp32+compile: compile {compiled['compile_seconds']:.1f} s" in result.stdout
