"""`--backend ray` refused in one line: without Ray installed (saying how to install it), with stdin or stdout,
and the cluster flags without it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.conftest import REPO_ROOT, CliInvoker

WITHOUT_RAY = """
import sys
sys.modules["ray"] = None  # import ray now raises ImportError, as when it is not installed
from flowsr_cli.cli import main
sys.argv = ["flowsr", *sys.argv[1:]]
main()
"""


def test_without_ray_the_backend_is_a_usage_error_saying_how_to_install_it(tmp_path: Path) -> None:
    Image.new("RGB", (8, 6)).save(tmp_path / "in.png")
    for command in (["upscale", "-s", "2"], ["rescale", "down", "-s", "2"], ["rescale", "up"]):
        result = subprocess.run(
            [sys.executable, "-c", WITHOUT_RAY, *command, str(tmp_path / "in.png"), "--backend", "ray"],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env={**os.environ, "FLOWSR_MODEL": "bicubic"},
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr == "error: --backend ray needs Ray, which is not installed: pip install 'flowsr[ray]'\n"
    assert [path.name for path in tmp_path.iterdir()] == ["in.png"]


def test_cluster_flags_need_the_ray_backend(run_cli: CliInvoker, tmp_path: Path) -> None:
    Image.new("RGB", (8, 6)).save(tmp_path / "in.png")
    result = run_cli("upscale", str(tmp_path / "in.png"), "-s", "2", "--workers", "2")
    assert result.exit_code == 2
    assert "error: --workers applies to --backend ray only (the backend is torch)" in result.stderr


def test_stdin_and_stdout_run_here(run_cli: CliInvoker, tmp_path: Path) -> None:
    Image.new("RGB", (8, 6)).save(tmp_path / "in.png")
    result = run_cli("upscale", "-", "-s", "2", "--backend", "ray", input=(tmp_path / "in.png").read_bytes())
    assert result.exit_code == 2
    assert "--backend ray reads and writes files: stdin and stdout (-) run with --backend torch" in result.stderr
