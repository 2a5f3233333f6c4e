"""Compute precision: which parts of LINF run in bfloat16, that every LINF engine honours its dtype, and the
note when a precision is slow on this CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from flowsr_cli.engine import device as device_module
from flowsr_cli.families.linf.engine import FlowUpscaler
from flowsr_cli.families.linf.prior_engine import LearnedPriorUpscaler
from flowsr_cli.families.model_file import save_model
from flowsr_cli.io.sizing import Size
from tests.conftest import CliInvoker
from tests.engine.test_tiling import linf, linf_lp
from tests.families.linf.test_linf import collect

CPU = torch.device("cpu")


@pytest.fixture
def lr() -> torch.Tensor:
    return torch.rand(1, 3, 40, 36, generator=torch.Generator().manual_seed(1))


def test_under_bf16_autocast_only_the_mlps_hidden_layers_run_in_bf16(lr: torch.Tensor) -> None:
    model = linf(3)
    seen: dict[str, tuple[torch.dtype, torch.dtype]] = {}

    def record(name: str):  # type: ignore[no-untyped-def]
        def hook(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            seen.setdefault(name, (inputs[0].dtype, output.dtype))

        return hook

    for name, module in model.mlp.named_children():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(record(name))
    points = torch.rand(1, 50, 2) * 2 - 1
    with torch.inference_mode():
        exact = model.condition(model.encode(lr * 2 - 1), points, (2 / 120, 2 / 108))
        seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features = model.encode(lr * 2 - 1)
            mixed = model.condition(features, points, (2 / 120, 2 / 108))
    layers = sorted(seen, key=int)
    assert features.encoded.dtype == torch.bfloat16
    assert seen[layers[0]] == (torch.float32, torch.bfloat16), "Fourier features in fp32, the first layer in bf16"
    assert all(seen[layer][1] == torch.bfloat16 for layer in layers[:-1])
    assert seen[layers[-1]][1] == torch.float32, "the layer making the flow's parameters stays fp32"
    assert mixed.dtype == torch.float32
    assert 0 < (mixed - exact).abs().max() < 0.05 * exact.abs().max()


@pytest.mark.parametrize("engine", ["flow", "learned prior"])
def test_linf_engines_run_at_their_dtype(lr: torch.Tensor, engine: str) -> None:
    size = Size(120, 108)

    def upscaler(dtype: torch.dtype) -> FlowUpscaler | LearnedPriorUpscaler:
        if engine == "flow":
            return FlowUpscaler(linf(3), CPU, dtype, 0.0, "t", tile=0)
        return LearnedPriorUpscaler(linf_lp([8, 16]), CPU, "t", tile=0, dtype=dtype)

    exact = collect(upscaler(torch.float32), lr, size, [0])[0]
    mixed = collect(upscaler(torch.bfloat16), lr, size, [0])[0]
    assert torch.isfinite(mixed).all()
    assert 0 < (mixed - exact).abs().mean() < 0.01, "bf16 must change the output a little, not much"


def test_a_bfloat16_grid_holds_the_float32_affines_rounded(lr: torch.Tensor) -> None:
    model = linf(3)
    size, rows, columns = (120, 108), range(40), range(36)
    with torch.inference_mode():
        features = model.encode(lr * 2 - 1)
        exact = model.condition_grid(features, size, rows, columns, chunk_queries=300)
        out = torch.empty(1, model.flow.condition_size, len(rows), len(columns), dtype=torch.bfloat16)
        stored = model.condition_grid(features, size, rows, columns, chunk_queries=300, out=out)
        with pytest.raises(ValueError, match="cannot go into one of shape"):
            model.condition_grid(features, size, rows, range(30), out=out)
    assert stored.values is out
    assert torch.equal(out, exact.values.to(torch.bfloat16)), "formed in float32, then rounded once"


def test_the_learned_prior_stores_its_grid_at_its_dtype(lr: torch.Tensor) -> None:
    for dtype in (torch.float32, torch.bfloat16):
        upscaler = LearnedPriorUpscaler(linf_lp([8, 16]), CPU, "t", tile=0, dtype=dtype)
        collect(upscaler, lr, Size(120, 108), [0])
        assert upscaler._grid_memory is not None and upscaler._grid_memory.dtype == dtype


@pytest.mark.parametrize(
    ("precision", "native", "note"),
    [
        ("fp16", True, "fp16 on the CPU is emulated and slower than fp32"),
        ("bf16", False, "this CPU has no native bf16 (AMX or AVX-512 BF16): bf16 is emulated and slower than fp32"),
        ("bf16", True, None),
        ("fp32", False, None),
    ],
)
def test_a_precision_that_is_slow_on_this_cpu_gets_a_note(
    run_cli: CliInvoker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, precision: str, native: bool, note: str | None
) -> None:
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: native)
    save_model(linf(3), tmp_path / "m.safetensors")
    PILImage.fromarray(np.full((12, 10, 3), 90, dtype=np.uint8)).save(tmp_path / "in.png")
    result = run_cli("upscale", str(tmp_path / "in.png"), "--model", str(tmp_path / "m.safetensors"), "-s", "2",
                     "--device", "cpu", "--precision", precision, "-o", str(tmp_path / "out.png"))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out.png").is_file()
    if note is None:
        assert "emulated" not in result.stderr
    else:
        assert note in " ".join(result.stderr.split())
