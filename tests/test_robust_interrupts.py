"""Robustness: SIGINT and SIGKILL during a batch and during training, a full disk and a read-only
output folder. Real processes, real signals and real (tmpfs) file systems."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from flowsr_cli.families.model_file import load_model, save_model
from flowsr_cli.io.atomic import TEMP_SUFFIX
from flowsr_cli.io.reading import read_image
from flowsr_cli.train.state import load_training_state
from tests.conftest import SHARED, default_sigint
from tests.families.linf.test_linf import tiny_linf

pytestmark = pytest.mark.robustness

PHOTOS = 8
TRAINING_STEPS = 40


def _photos(folder: Path, count: int = PHOTOS, size: int = 40) -> list[Path]:
    """Crops of real training photos (so the default model does real work on each)."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((SHARED / "data/train/bsds500_train").iterdir())[:count]
    paths = []
    for index, source in enumerate(sources):
        with PILImage.open(source) as photo:
            path = folder / f"photo{index}.png"
            photo.convert("RGB").crop((0, 0, size, size)).save(path)
            paths.append(path)
    return paths


def _env(**extra: str) -> dict[str, str]:
    """The test's environment without FLOWSR_MODEL=bicubic: these runs use the bundled default model."""
    env = {key: value for key, value in os.environ.items() if key != "FLOWSR_MODEL"}
    return {**env, **extra}


def _flowsr(*args: str) -> list[str]:
    return [sys.executable, "-m", "flowsr_cli", *args]


def _wait_for(condition: object, process: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert process.poll() is None, "the process ended before it could be interrupted"
        assert time.monotonic() < deadline, "timed out waiting for the process"
        time.sleep(0.02)


def _finished_outputs(out: Path) -> list[Path]:
    return sorted(path for path in out.iterdir() if not path.name.startswith("."))


def _assert_complete(outputs: list[Path], scale: int = 2, size: int = 40) -> None:
    """Every file is a whole image of the right size (a partial PNG fails to decode)."""
    for path in outputs:
        image = read_image(path)
        assert (image.width, image.height) == (size * scale, size * scale), path


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_a_signal_mid_batch_leaves_only_whole_outputs_and_a_rerun_finishes_the_rest(
    tmp_path: Path, sig: signal.Signals
) -> None:
    _photos(tmp_path / "in")
    out = tmp_path / "out"
    command = _flowsr("upscale", str(tmp_path / "in"), "--scale", "2", "-o", str(out), "--json")
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), preexec_fn=default_sigint
    )
    _wait_for(lambda: out.is_dir() and len(_finished_outputs(out)) >= 1, process)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=120)

    done_before = _finished_outputs(out)
    assert 1 <= len(done_before) < PHOTOS, "the signal must land mid-batch"
    _assert_complete(done_before)
    if sig == signal.SIGINT:
        assert process.returncode == 130
        assert b"interrupted" in stderr and b"Traceback" not in stderr
        assert [path.name for path in out.iterdir() if path.name.endswith(TEMP_SUFFIX)] == []
    else:
        assert process.returncode == -signal.SIGKILL
        # A killed write leaves its hidden temporary file; plant one for certain, as a kill mid-write would.
        (out / f".photo{PHOTOS - 1}_x2.png.k1ll3d{TEMP_SUFFIX}").write_bytes(stdout[:100] or b"half")

    rerun = subprocess.run(command, capture_output=True, env=_env(), timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    records = [json.loads(line) for line in rerun.stdout.splitlines()]
    assert sorted(record["status"] for record in records) == sorted(
        ["skipped"] * len(done_before) + ["done"] * (PHOTOS - len(done_before))
    )
    assert len(_finished_outputs(out)) == PHOTOS
    _assert_complete(_finished_outputs(out))
    assert sorted(os.listdir(out)) == [path.name for path in _finished_outputs(out)], "leftover temporary files"
    assert all(path.stat().st_mtime <= time.time() for path in done_before)


def test_sigint_during_training_leaves_a_loadable_checkpoint_and_resume_finishes(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    _photos(photos, count=3, size=96)
    save_model(tiny_linf(3), tmp_path / "tiny.safetensors")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text("lr_size = 24\nqueries = 256\nlog_every = 1\ncheckpoint_every = 3\nbatch_size = 2\nworkers = 0\n")
    run = tmp_path / "run"
    args = ["train", "flow", str(photos), "--init", str(tmp_path / "tiny.safetensors"), "--out", str(run)]
    args += ["--recipe", str(recipe), "--steps", str(TRAINING_STEPS)]
    process = subprocess.Popen(
        _flowsr(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), preexec_fn=default_sigint
    )
    _wait_for(lambda: (run / "checkpoint.safetensors").exists(), process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert b"Traceback" not in stderr and not (run / "model.safetensors").exists()

    model = load_model(tmp_path / "tiny.safetensors")
    state = load_training_state(run / "checkpoint.safetensors", model, torch.optim.Adam(model.parameters()))
    assert 0 < state.step < TRAINING_STEPS
    resume = [*args, "--resume", str(run / "checkpoint.safetensors")]
    resumed = subprocess.run(_flowsr(*resume), capture_output=True, env=_env(), timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert set(range(state.step + 1, TRAINING_STEPS + 1)) <= set(steps) and steps[-1] == TRAINING_STEPS
    assert (run / "model.safetensors").is_file()


@contextlib.contextmanager
def _tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A small tmpfs at ``path`` (needs mount rights: root in a container with CAP_SYS_ADMIN)."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); this check did not run")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_a_full_disk_fails_the_image_that_does_not_fit_and_keeps_the_others(tmp_path: Path) -> None:
    small = PILImage.fromarray(np.full((20, 20, 3), 128, np.uint8))
    small.save(tmp_path / "a_flat.png")
    noise = np.random.default_rng(0).integers(0, 256, (150, 150, 3), dtype=np.uint8)
    PILImage.fromarray(noise).save(tmp_path / "b_noise.png")
    small.save(tmp_path / "c_flat.png")
    inputs = [str(tmp_path / name) for name in ("a_flat.png", "b_noise.png", "c_flat.png")]
    with _tmpfs(tmp_path / "disk", "size=96k") as disk:
        command = _flowsr("upscale", *inputs, "--scale", "2", "-o", str(disk), "--model", "bicubic")
        result = subprocess.run(command, capture_output=True, env=_env(), timeout=120)
        names = sorted(os.listdir(disk))
        kept = {name: read_image(disk / name).width for name in names}
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith(b"error:")]
    assert len(errors) == 1 and b"b_noise.png" in errors[0] and b"No space left on device" in errors[0]
    assert b"Traceback" not in result.stderr
    assert names == ["a_flat_x2_bicubic.png", "c_flat_x2_bicubic.png"] and set(kept.values()) == {40}


def test_a_read_only_output_folder_is_refused_before_any_work(tmp_path: Path) -> None:
    _photos(tmp_path / "in", count=2)
    with _tmpfs(tmp_path / "ro", "size=64k,ro") as folder:
        started = time.monotonic()
        result = subprocess.run(
            _flowsr("upscale", str(tmp_path / "in"), "--scale", "2", "-o", str(folder)),
            capture_output=True, env=_env(), timeout=120,
        )  # fmt: skip
        seconds = time.monotonic() - started
        assert os.listdir(folder) == []
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"error: -o {folder}: the folder is not writable".encode()]
    assert b"no CUDA" not in result.stderr, "the model was loaded before the check"
    assert seconds < 60
