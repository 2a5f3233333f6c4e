"""`--backend onnx`: the bundled linf-lp with its plain networks (encoder, conditioning MLP, latent UNet) in ONNX
Runtime gives the PyTorch output, exports each graph once into the cache, rebuilds a corrupt cache file, and falls
back to PyTorch with a note when onnxruntime cannot be imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.conftest import REPO_ROOT, SHARED, CliInvoker

pytestmark = pytest.mark.usefixtures("one_thread")

SOURCE = SHARED / "data" / "eval" / "Set14" / "baboon.png"
LINF_LP_SHA256 = "69e050aeca1ca5234557807ab045cd2f55a1b48ae9ae20678dd4dcdd35900c51"
TOLERANCE = 8 / 65535
"""Largest difference allowed between the two backends' 16-bit outputs. Measured here: ONNX Runtime's encoder
features differ from PyTorch's by about 3e-6 (float32 summation order), the float outputs by at most 2.4e-7
(6.6e-7 for a 128 x 128 crop at x4) with the encoder alone in ONNX Runtime, and the 16-bit files by 1 level of
65535 in 51 of 23,040 samples with the MLP and the UNet there too. 8 levels
(1.2e-4) leave room for other CPUs' kernels and still catch any real change: a wrong or misaligned feature map
moves outputs by far more."""


def _upscale(run_cli: CliInvoker, image: Path, output: str, *backend: str) -> str:
    """Upscale ``image`` x2 with the bundled linf-lp as one tile into ``output`` beside it; the run's stderr."""
    target = image.parent / output
    result = run_cli("upscale", str(image), "-s", "2", "-m", "linf-lp", "--tile", "0", "-o", str(target), *backend)
    assert result.exit_code == 0, result.output
    return result.stderr


def _read(image: Path, output: str) -> np.ndarray:
    return tifffile.imread(image.parent / output).astype(np.float64) / 65535


def _cached_graphs() -> list[Path]:
    return sorted((Path(os.environ["FLOWSR_CACHE_DIR"]) / "onnx").rglob("*.onnx"))


def test_onnx_output_matches_torch_and_its_graph_is_exported_once(run_cli: CliInvoker, image: Path) -> None:
    pytest.importorskip("onnxruntime")
    _upscale(run_cli, image, "torch.tif", "--backend", "torch")
    assert _cached_graphs() == []
    assert run_cli("config", "set", "backend", "onnx").exit_code == 0  # the config key, as a user sets it
    _upscale(run_cli, image, "onnx.tif")
    assert np.abs(_read(image, "onnx.tif") - _read(image, "torch.tif")).max() <= TOLERANCE
    graphs = _cached_graphs()
    assert {graph.parent.name for graph in graphs} == {LINF_LP_SHA256}
    names = sorted(graph.name.split("-opset17-ort")[0] for graph in graphs)
    assert names == ["encoder-1x3x40x48", "latent-unet-1x32x32x32", "mlp-1x864x512"]  # one tile, one band of queries
    written = [graph.stat().st_mtime_ns for graph in graphs]
    _upscale(run_cli, image, "again.tif")
    assert _cached_graphs() == graphs  # reused, not exported again
    assert [graph.stat().st_mtime_ns for graph in graphs] == written
    assert np.array_equal(_read(image, "again.tif"), _read(image, "onnx.tif"))


def test_a_corrupt_cache_file_is_exported_again(run_cli: CliInvoker, image: Path) -> None:
    pytest.importorskip("onnxruntime")
    _upscale(run_cli, image, "first.tif", "--backend", "onnx")
    (graph,) = (graph for graph in _cached_graphs() if graph.name.startswith("encoder-"))
    graph.write_bytes(graph.read_bytes()[:1000])  # cut short, as by a full disk under an older flowsr
    stderr = _upscale(run_cli, image, "second.tif", "--backend", "onnx")
    assert f"ONNX cache file {graph} could not be used: exported again" in " ".join(stderr.split())
    assert graph.stat().st_size > 100_000
    assert np.array_equal(_read(image, "second.tif"), _read(image, "first.tif"))


WITHOUT_ONNXRUNTIME = """
import sys
sys.modules["onnxruntime"] = None  # import onnxruntime now raises ImportError, as when it is not installed
from flowsr_cli.cli import main
sys.argv = ["flowsr", *sys.argv[1:]]
main()
"""


def test_without_onnxruntime_the_run_says_so_and_uses_pytorch(image: Path, isolated_settings: Path) -> None:
    args = ["upscale", str(image), "-s", "2", "-m", "linf-lp", "--tile", "0", "-o", str(image.parent / "out.tif")]
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_ONNXRUNTIME, *args, "--backend", "onnx"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert "note: onnxruntime is not installed (pip install 'flowsr[onnx]'): running with PyTorch" in result.stderr
    assert (image.parent / "out.tif").is_file() and _cached_graphs() == []


def test_a_model_without_onnx_parts_says_it_runs_with_pytorch(run_cli: CliInvoker, image: Path) -> None:
    pytest.importorskip("onnxruntime")
    result = run_cli("upscale", str(image), "-s", "4", "-m", "srflow", "-o", str(image.parent / "out.tif"),
                     "--backend", "onnx")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "srflow has no parts that run with ONNX Runtime: running with PyTorch" in " ".join(result.stderr.split())


def test_eval_notes_a_model_without_onnx_parts(run_cli: CliInvoker, image: Path) -> None:
    pytest.importorskip("onnxruntime")
    dataset = image.parent / "dataset"
    dataset.mkdir()
    Image.open(SOURCE).convert("RGB").crop((0, 0, 48, 48)).save(dataset / "crop.png")
    result = run_cli("eval", str(dataset), "-m", "srflow", "--scales", "4", "--no-lpips", "--baseline", "none",
                     "--backend", "onnx")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "srflow has no parts that run with ONNX Runtime: running with PyTorch" in " ".join(result.stderr.split())
