"""What `flowsr upscale` shows on a real terminal (a pseudo-terminal): bars that move with an ETA, and
JSON lines that each start on their own line; on a pipe, stdout holds the JSON lines and nothing else."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import SHARED

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BUTTERFLY = SHARED / "data/eval/Set5/butterfly.png"
TIMEOUT = 120.0


def run_on_terminal(args: list[str], cwd: Path, stdout_pipe: bool = False) -> tuple[str, bytes]:
    """Run ``flowsr`` with stderr (and stdout, unless ``stdout_pipe``) on a pseudo-terminal, as in an
    interactive shell: what the terminal received, and what the stdout pipe received."""
    controller, terminal = pty.openpty()
    env = {**os.environ, "COLUMNS": "100", "LINES": "30", "TERM": "xterm-256color"}
    process = subprocess.Popen(
        [sys.executable, "-m", "flowsr_cli", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if stdout_pipe else terminal,
        stderr=terminal,
        cwd=cwd,
        env=env,
    )
    os.close(terminal)
    screen = bytearray()
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # the process closed the terminal
                    break
                if not chunk:
                    break
                screen += chunk
        piped = process.stdout.read() if process.stdout is not None else b""
        assert process.wait(timeout=TIMEOUT) == 0, screen.decode(errors="replace")
    finally:
        process.kill()
        os.close(controller)
    return screen.decode(errors="replace"), piped


def plain_lines(screen: str) -> list[str]:
    """The terminal's output without ANSI codes, cut at every carriage return and line feed."""
    return [line for line in re.split(r"[\r\n]+", ANSI.sub("", screen)) if line.strip()]


def copies_of_butterfly(folder: Path, count: int) -> list[str]:
    names = [f"butterfly{index}.png" for index in range(count)]
    for name in names:
        shutil.copy(BUTTERFLY, folder / name)
    return names


def test_json_lines_start_on_their_own_line_under_a_live_bar(tmp_path: Path) -> None:
    names = copies_of_butterfly(tmp_path, 3)
    screen, _ = run_on_terminal(["upscale", *names, "--scale", "2", "-o", "out", "--json"], tmp_path)
    assert "images" in screen  # the bar really rendered
    lines = [line for line in plain_lines(screen) if '"input"' in line]
    assert len(lines) == len(names), screen
    records = [json.loads(line) for line in lines]
    assert [record["input"] for record in records] == names
    assert all(record["status"] == "done" for record in records)


def test_json_on_a_pipe_is_exactly_one_json_dump_per_line(tmp_path: Path) -> None:
    names = copies_of_butterfly(tmp_path, 2)
    _, piped = run_on_terminal(["upscale", *names, "--scale", "2", "-o", "out", "--json"], tmp_path, stdout_pipe=True)
    lines = piped.decode("ascii").split("\n")
    assert lines[-1] == "" and len(lines) == len(names) + 1, piped
    assert [json.dumps(json.loads(line)) for line in lines[:-1]] == lines[:-1]


def test_the_image_bar_moves_with_an_eta_on_an_untiled_image(tmp_path: Path) -> None:
    """The default model does this image in one tile: the bar of the image still shows a percentage
    between 0 and 100 and a time left while it runs."""
    (name,) = copies_of_butterfly(tmp_path, 1)
    args = ["upscale", name, "--model", "linf-lp", "--scale", "2", "-o", "out.png", "--json"]
    screen, piped = run_on_terminal(args, tmp_path, stdout_pipe=True)
    assert json.loads(piped)["tiles"] == 1
    bar = re.compile(rf"^{re.escape(name)} .*?(\d+)% +(\d+:\d\d:\d\d)")
    moving = [match for line in plain_lines(screen) if (match := bar.match(line)) and 0 < int(match[1]) < 100]
    assert moving, screen


def test_off_a_terminal_stderr_has_no_blank_lines(tmp_path: Path) -> None:
    """Rich's live display prints an empty line when it stops; off a terminal it is not started at all."""
    shutil.copy(BUTTERFLY, tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    result = subprocess.run(
        [sys.executable, "-m", "flowsr_cli", "upscale", str(tmp_path), "-s", "2"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert "" not in lines, result.stderr
    assert any(line.startswith("1 upscaled") for line in lines)
