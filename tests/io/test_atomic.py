"""Atomic writes: a target holds its old content or all of the new one, and no temp file is left."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flowsr_cli.io.atomic import TEMP_SUFFIX, atomic_write_bytes, remove_leftovers


def _temp_files(directory: Path) -> list[Path]:
    return [path for path in directory.iterdir() if path.name.endswith(TEMP_SUFFIX)]


def test_new_file_gets_umask_permissions_and_content(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"payload")
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.read_bytes() == b"payload"
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert _temp_files(tmp_path) == []


def test_replace_failure_keeps_target_and_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "occupied"
    target.mkdir()
    (target / "keep.txt").write_text("inside")
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new data")
    assert (target / "keep.txt").read_text() == "inside"
    assert _temp_files(tmp_path) == []


def test_missing_folder_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write_bytes(tmp_path / "no" / "such" / "file.bin", b"data")


def test_leftovers_of_a_killed_write_are_removed_for_the_named_targets_only(tmp_path: Path) -> None:
    target, other = tmp_path / "photo_x2.png", tmp_path / "other_x2.png"
    stale = [tmp_path / ".photo_x2.png.k3j2x9.part", tmp_path / ".photo_x2.png.a_b1c.part"]
    kept = [tmp_path / ".other_x2.png.zz9.part", tmp_path / ".photo_x2.png.keep", tmp_path / "photo_x2.png.x.part"]
    for path in [*stale, *kept]:
        path.write_bytes(b"half an image")
    assert remove_leftovers([target, tmp_path / "missing" / "a.png"]) == 2
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept) and not other.exists()


def test_a_temporary_file_whose_lock_is_held_is_kept_until_the_lock_is_gone(tmp_path: Path) -> None:
    live = tmp_path / ".photo_x2.png.live1.part"
    live.write_bytes(b"being written")
    with live.open("rb") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # as a write in progress holds it
        assert remove_leftovers([tmp_path / "photo_x2.png"]) == 0
        assert live.exists()
    assert remove_leftovers([tmp_path / "photo_x2.png"]) == 1
    assert not live.exists()


HOLD_LOCK = """
import fcntl, sys, time
with open(sys.argv[1], "rb") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_with_patience_a_lock_that_goes_soon_is_waited_for(tmp_path: Path) -> None:
    """As after killing a Ray worker mid-write: its process, holding the lock, is gone a moment later."""
    live = tmp_path / ".photo_x2.png.live2.part"
    live.write_bytes(b"being written")
    writer = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(live), "0.5"], stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None and writer.stdout.readline() == "locked\n"
    assert remove_leftovers([tmp_path / "photo_x2.png"]) == 0  # no patience: a live write is kept
    started = time.monotonic()
    assert remove_leftovers([tmp_path / "photo_x2.png"], patience=10.0) == 1
    assert not live.exists() and time.monotonic() - started < 5  # removed once the writer was gone
    writer.wait(timeout=10)
