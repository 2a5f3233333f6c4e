"""The CLI answers help and config commands without importing torch, offers shell completion, and ends
quietly when the reader of its text output goes away."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CliInvoker

PROBE = """
import runpy, sys
sys.argv = ["flowsr", *sys.argv[1:]]
try:
    runpy.run_module("flowsr_cli", run_name="__main__")
except SystemExit as exit:
    code = exit.code
heavy = sorted(name for name in ("torch", "numpy", "PIL", "lpips") if name in sys.modules)
print("HEAVY=" + ",".join(heavy), "CODE=" + str(code), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["upscale", "--help"],
        ["config", "--help"],
        ["config", "path"],
        ["config", "show"],
        ["config", "get", "device"],
        ["config", "set", "quality", "90"],
        ["--version"],
    ],
)
def test_light_commands_do_not_import_torch(args: list[str], isolated_settings: Path) -> None:
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True)
    last = result.stderr.strip().splitlines()[-1]
    assert "CODE=0" in last or "CODE=None" in last, result.stderr
    assert last.startswith("HEAVY= "), f"{args} imported {last}"


def test_upscale_that_only_skips_does_not_import_torch(tmp_path: Path, isolated_settings: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"placeholder")
    (tmp_path / "a_x2.png").write_bytes(b"already there")
    result = subprocess.run(
        [sys.executable, "-c", PROBE, "upscale", str(tmp_path / "a.png"), "--scale", "2"],
        capture_output=True,
        text=True,
    )
    assert "torch" not in result.stderr.strip().splitlines()[-1], result.stderr


def test_help_lists_the_commands_and_completion(run_cli: CliInvoker) -> None:
    result = run_cli("--help")
    assert result.exit_code == 0
    for word in ("upscale", "config", "--install-completion", "--version"):
        assert word in result.stdout


def test_show_completion_script() -> None:
    """Typer finds the shell from the process tree unless told (a test runner's tree may hold none): its
    documented test switch makes ``--show-completion`` take the shell by name, in a fresh process."""
    environment = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    command = [str(Path(sys.executable).with_name("flowsr")), "--show-completion", "bash"]
    result = subprocess.run(command, capture_output=True, text=True, env=environment)
    assert result.returncode == 0, result.stderr
    assert "complete" in result.stdout and "_FLOWSR_COMPLETE" in result.stdout.upper()


def test_console_script_and_module_entry_points_agree() -> None:
    module = subprocess.run([sys.executable, "-m", "flowsr_cli", "--version"], capture_output=True, text=True)
    script = Path(sys.executable).with_name("flowsr")
    console = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert module.returncode == console.returncode == 0
    assert module.stdout == console.stdout and module.stdout.startswith("flowsr ")


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["upscale", "--help"],
        ["models", "--help"],
        ["--version"],
        ["config", "path"],
        ["config", "get", "device"],
        ["config", "show"],
        ["models", "path"],
        ["models", "list"],
    ],
)
def test_a_reader_that_closes_stdout_early_ends_the_run_quietly(args: list[str], isolated_settings: Path) -> None:
    """`flowsr upscale --help | head -5`: the reader is gone before flowsr writes (its end of the pipe is
    closed at once), so every write fails with EPIPE."""
    process = subprocess.Popen(
        [sys.executable, "-m", "flowsr_cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 1
    assert stderr == ""


def test_an_error_is_still_reported_when_stdout_is_gone(isolated_settings: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "flowsr_cli", "config", "get", "no_such_key"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 2
    assert stderr.startswith("error: ") and "no_such_key" in stderr and "unexpected" not in stderr
