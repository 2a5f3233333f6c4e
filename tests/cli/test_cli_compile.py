"""`--compile`: the bundled linf-lp with LINF's Fourier features and its flow's two directions compiled by
torch.compile gives the eager output; without a C++ compiler, or where compiling fails, it runs eagerly and a note
says why; the config key and `--no-compile` choose as the other settings do; a model with nothing to compile says
so."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from flowsr_cli.engine.compiling import CompiledKernel, cpp_compiler
from flowsr_cli.families.common.linear_flow import ConditionalLinearFlow
from tests.conftest import REPO_ROOT, SHARED, CliInvoker

pytestmark = pytest.mark.usefixtures("one_thread")

SOURCE = SHARED / "data" / "eval" / "Set14" / "baboon.png"
TOLERANCE = 8 / 65535
"""Largest difference allowed between compiled and eager 16-bit outputs. The compiled loop computes the same
products and sums, but its vectorised cosines and sines and its fused multiply-adds round differently in the last
bit: measured here on a 512 x 512 x4 output, at most 1.2e-4 of one 8-bit level (5e-7). A wrong neighbour, weight
or frequency moves outputs by far more."""
NO_COMPILER = "/nonexistent/c++"
needs_compiler = pytest.mark.skipif(
    shutil.which(cpp_compiler()) is None, reason=f"torch.compile needs a C++ compiler ({cpp_compiler()} not found)"
)


@pytest.fixture
def inductor_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private, empty torch.compile cache: compiled kernels land here, not in the user's."""
    folder = tmp_path / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(folder))
    return folder


def _upscale(run_cli: CliInvoker, image: Path, output: str, *flags: str, env: dict[str, str] | None = None) -> str:
    """Upscale ``image`` x2 with the bundled linf-lp as one tile into ``output`` beside it; the run's stderr."""
    target = image.parent / output
    result = run_cli("upscale", str(image), "-s", "2", "-m", "linf-lp", "--tile", "0", "-o", str(target), *flags,
                     env=env)  # fmt: skip
    assert result.exit_code == 0, result.output
    return " ".join(result.stderr.split())


def _read(image: Path, output: str) -> np.ndarray:
    return tifffile.imread(image.parent / output).astype(np.float64) / 65535


@needs_compiler
def test_compiled_output_matches_eager(run_cli: CliInvoker, image: Path, inductor_cache: Path) -> None:
    _upscale(run_cli, image, "eager.tif")
    assert not any(inductor_cache.rglob("*.py"))
    stderr = _upscale(run_cli, image, "compiled.tif", "--compile")
    assert "note: linf-lp: compiling with torch.compile as the first image runs (kept for later runs)" in stderr
    assert "not compiling" not in stderr and "running without it" not in stderr
    assert any(inductor_cache.rglob("*.py")), "nothing was compiled"
    assert np.abs(_read(image, "compiled.tif") - _read(image, "eager.tif")).max() <= TOLERANCE


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_flows_compiled_directions_match_eager_on_a_grid_of_either_dtype(
    dtype: torch.dtype, inductor_cache: Path
) -> None:
    """LINF's flow, both directions compiled (``--compile``), on affines read from a conditioning grid stored at
    ``dtype``: bands of whole rows (strided in the grid) and a last, shorter band, as the engines read them."""
    torch.manual_seed(0)
    flow = ConditionalLinearFlow(27, 4).eval()
    raw = torch.randn(1, flow.condition_size, 5, 40)
    grid = flow.prepare(raw.flatten(2)).view_as(raw).to(dtype)
    compiled = ConditionalLinearFlow(27, 4).eval()
    compiled.load_state_dict(flow.state_dict())
    notes: list[str] = []
    compiled.use_compiled(lambda function: CompiledKernel(function, notes))
    with torch.inference_mode():
        for rows in (slice(0, 3), slice(3, 5)):
            affines = grid[:, :, rows].flatten(2)
            x = torch.randn(1, 27, affines.shape[-1])
            z = flow.latents_of_columns(x, affines)
            assert torch.allclose(compiled.latents_of_columns(x, affines), z, atol=1e-5)
            x_again = flow.inverse_of_columns(z, affines)
            assert torch.allclose(compiled.inverse_of_columns(z, affines), x_again, atol=1e-5)
            assert torch.allclose(x_again, x, atol=1e-4)
    assert not notes, notes
    assert any(inductor_cache.rglob("*.py")), "nothing was compiled"


def test_without_a_compiler_it_runs_eagerly_and_says_so(run_cli: CliInvoker, image: Path) -> None:
    _upscale(run_cli, image, "eager.tif")
    note = f"torch.compile needs a C++ compiler on the CPU ({NO_COMPILER} not found; set CXX): not compiling"
    assert note in _upscale(run_cli, image, "flag.tif", "--compile", env={"CXX": NO_COMPILER})
    assert run_cli("config", "set", "compile", "true").exit_code == 0  # the config key, as a user sets it
    assert note in _upscale(run_cli, image, "config.tif", env={"CXX": NO_COMPILER})
    assert "torch.compile" not in _upscale(run_cli, image, "overridden.tif", "--no-compile", env={"CXX": NO_COMPILER})
    for output in ("flag.tif", "config.tif", "overridden.tif"):
        assert np.array_equal(_read(image, output), _read(image, "eager.tif"))


def _flowsr(*args: str, env: dict[str, str] | None = None) -> str:
    """Run the CLI in a fresh process (torch reads CXX once, at import) with ``env`` added; its stderr, one line."""
    result = subprocess.run(
        [sys.executable, "-m", "flowsr_cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    return " ".join(result.stderr.split())


@needs_compiler
def test_a_failing_compile_falls_back_to_eager_with_a_note(image: Path, inductor_cache: Path) -> None:
    """A compiler that exists but fails (as a broken toolchain would): torch.compile raises on the first call;
    upscale and eval both say so and go on uncompiled."""
    failing = shutil.which("false")
    if failing is None:
        pytest.skip("no `false` program to stand in for a failing compiler")
    upscale = ["upscale", str(image), "-s", "2", "-m", "linf-lp", "--tile", "0", "-o"]
    _flowsr(*upscale, str(image.parent / "eager.tif"))
    stderr = _flowsr(*upscale, str(image.parent / "fallback.tif"), "--compile", env={"CXX": failing})
    assert "note: torch.compile failed (" in stderr and "): running without it" in stderr
    assert "Traceback" not in stderr
    assert np.abs(_read(image, "fallback.tif") - _read(image, "eager.tif")).max() <= TOLERANCE
    dataset = image.parent / "dataset"
    dataset.mkdir()
    Image.open(SOURCE).convert("RGB").crop((0, 0, 48, 48)).save(dataset / "crop.png")
    evaluated = _flowsr("eval", str(dataset), "-m", "linf-lp", "--scales", "4", "--no-lpips", "--baseline", "none",
                        "--compile", env={"CXX": failing})  # fmt: skip
    assert "note: torch.compile failed (" in evaluated and "Traceback" not in evaluated


@needs_compiler
def test_a_model_without_compiled_parts_says_so(run_cli: CliInvoker, image: Path) -> None:
    result = run_cli("upscale", str(image), "-s", "4", "-m", "srflow", "-o", str(image.parent / "out.tif"), "--compile")
    assert result.exit_code == 0, result.output
    assert "srflow has no parts that torch.compile speeds up: not compiling" in " ".join(result.stderr.split())


def test_eval_takes_compile_too(run_cli: CliInvoker, image: Path) -> None:
    dataset = image.parent / "dataset"
    dataset.mkdir()
    Image.open(SOURCE).convert("RGB").crop((0, 0, 48, 48)).save(dataset / "crop.png")
    result = run_cli("eval", str(dataset), "-m", "linf-lp", "--scales", "4", "--no-lpips", "--baseline", "none",
                     "--compile", env={"CXX": NO_COMPILER})  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "torch.compile needs a C++ compiler on the CPU" in " ".join(result.stderr.split())
