"""`flowsr upscale --backend ray` on a local Ray cluster: the same files, JSON lines, summary and exit code as
the local path; a worker SIGKILLed mid-batch loses nothing; a rerun after the driver died finishes the rest."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, CliInvoker, default_sigint
from tests.image_factory import gradient8, save_pillow

pytestmark = pytest.mark.usefixtures("ray_cluster", "one_thread")  # one torch thread, as in a 1-CPU worker


def _records(stdout: str) -> list[dict[str, object]]:
    """The JSON lines of a run by input, without what differs between two runs (times, output folders)."""
    records = [json.loads(line) for line in stdout.splitlines()]
    for record in records:
        record.pop("seconds")
        record["output"] = Path(str(record["output"])).name
    return sorted(records, key=lambda record: str(record["input"]))


def _outputs(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.mark.parametrize("model", ["bicubic", "linf-lp"])
def test_ray_writes_what_the_local_path_writes(run_cli: CliInvoker, images: Path, model: str) -> None:
    runs = {}
    for backend in ("torch", "ray"):
        out = images.parent / backend
        runs[backend] = run_cli("upscale", str(images), "-s", "2", "-m", model, "-o", str(out), "--json",
                                "--backend", backend)  # fmt: skip
    local, ray = runs["torch"], runs["ray"]
    assert local.exit_code == ray.exit_code == 1, ray.output  # the broken PNG fails alone
    assert _records(ray.stdout) == _records(local.stdout)
    assert "broken.png: truncated PNG data" in ray.stderr
    assert ray.stderr.splitlines()[-7:] == local.stderr.splitlines()[-7:]  # "4 upscaled, 0 skipped, 1 failed" + table
    assert _outputs(images.parent / "ray") == _outputs(images.parent / "torch")  # pixels, metadata, marks
    assert len(_outputs(images.parent / "ray")) == 4


def test_a_rerun_skips_what_is_done_without_starting_workers(run_cli: CliInvoker, images: Path) -> None:
    (images / "broken.png").unlink()
    out = images.parent / "out"
    assert run_cli("upscale", str(images), "-s", "2", "-o", str(out), "--backend", "ray").exit_code == 0
    again = run_cli("upscale", str(images), "-s", "2", "-o", str(out), "--backend", "ray")
    assert again.exit_code == 0
    assert "0 upscaled, 4 skipped, 0 failed" in again.stderr


def _busy_workers() -> list[int]:
    """The processes of flowsr's Ray workers that are running an input now (Ray titles them so)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            title = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if entry.name.isdigit() and title.startswith(b"ray::BatchWorker.run"):
            found.append(int(entry.name))
    return found


def _kill_a_busy_worker(killed: list[int], deadline: float) -> None:
    while time.monotonic() < deadline and not killed:
        for pid in _busy_workers():
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.01)


def _many_images(folder: Path, count: int) -> None:
    folder.mkdir()
    for index in range(count):
        save_pillow(folder / f"img{index}.png", gradient8(3, 32 + index, 40), "PNG")


def test_a_worker_killed_mid_batch_loses_nothing(
    run_cli: CliInvoker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLOWSR_MODEL")  # the default model: slow enough to be killed while it works
    images = tmp_path / "in"
    _many_images(images, 6)
    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_busy_worker, args=(killed, time.monotonic() + 60))
    killer.start()
    result = run_cli("upscale", str(images), "-s", "2", "-o", str(tmp_path / "ray"), "--backend", "ray", "--json")
    killer.join()
    assert killed, "no worker was seen running an input"
    assert result.exit_code == 0, result.output
    assert "0 failed" in result.stderr
    assert len([json.loads(line) for line in result.stdout.splitlines()]) == 6  # Ray's own messages kept out
    local = run_cli("upscale", str(images), "-s", "2", "-o", str(tmp_path / "torch"))
    assert local.exit_code == 0
    assert _outputs(tmp_path / "ray") == _outputs(tmp_path / "torch")  # complete and the same, no temporary files


DRIVER = "from flowsr_cli.cli import main; import sys; sys.argv[0] = 'flowsr'; main()"


def test_a_rerun_after_the_driver_died_finishes_the_rest(
    run_cli: CliInvoker, tmp_path: Path, ray_cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLOWSR_MODEL")
    images = tmp_path / "in"
    _many_images(images, 12)
    out = tmp_path / "out"
    args = ["upscale", str(images), "-s", "2", "-o", str(out), "--backend", "ray"]
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, *args, "--address", ray_cluster], cwd=REPO_ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(out.glob("*.png")) and driver.poll() is None:
        time.sleep(0.01)
    driver.send_signal(signal.SIGKILL)
    assert driver.wait() == -signal.SIGKILL
    done = len(list(out.glob("*.png")))
    rerun = run_cli(*args)
    assert rerun.exit_code == 0, rerun.output
    upscaled, skipped = map(int, re.search(r"(\d+) upscaled, (\d+) skipped, 0 failed", rerun.stderr).groups())
    assert upscaled > 0 and skipped >= done > 0 and upscaled + skipped == 12
    assert sorted(path.name for path in out.iterdir()) == sorted(f"img{index}_x2.png" for index in range(12))


def _descendants(pid: int) -> set[int]:
    """The live processes below ``pid`` (a cluster the CLI started: its GCS, raylet and workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def test_ctrl_c_shuts_down_the_cluster_the_run_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWSR_MODEL")
    images = tmp_path / "in"
    _many_images(images, 12)
    out = tmp_path / "out"
    args = ["upscale", str(images), "-s", "2", "-o", str(out), "--backend", "ray", "--json"]
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, *args], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(out.glob("*.png")) and driver.poll() is None:
        time.sleep(0.01)
    cluster = _descendants(driver.pid)
    driver.send_signal(signal.SIGINT)
    stdout, stderr = driver.communicate(timeout=60)
    assert driver.returncode == 130, stderr
    assert (
        stderr.splitlines()[-1] == "error: interrupted; finished outputs are kept, rerun the same command to continue"
    )
    assert all(json.loads(line)["status"] == "done" for line in stdout.splitlines())  # nothing of Ray's on stdout
    assert cluster and not any(Path(f"/proc/{pid}").exists() for pid in cluster)
    assert not [path for path in out.iterdir() if not path.name.endswith("_x2.png")]  # no temporary files
