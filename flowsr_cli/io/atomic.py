"""Atomic file writes: a target is either its old content or the complete new content, never partial.

A write holds an exclusive ``flock`` on its hidden temporary file for as long as the file exists. The kernel
drops the lock when the process ends, however it ends (even by SIGKILL), so a temporary file that can be
locked belongs to no live write: only such files are cleaned up, and a concurrent run's write in progress
is left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

TEMP_SUFFIX = ".part"
LEFTOVER_RETRY = 0.05
"""Seconds between tries of a locked temporary file that :func:`remove_leftovers` is patient with."""


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a hidden, locked temporary file in the same folder and a rename.

    On any failure the temporary file is removed and the exception propagates; an existing
    file at ``path`` keeps its old content.
    """
    target = Path(path)
    fd, temp_name = _locked_temp_file(target)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            os.fchmod(handle.fileno(), 0o666 & ~_current_umask())
            os.replace(temp_name, target)  # still locked: no cleanup can take the file before the rename
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise


def _locked_temp_file(target: Path) -> tuple[int, str]:
    """Create and lock a temporary file for ``target``; a cleanup that deleted it before the lock was
    taken makes us start again with a new one."""
    while True:
        fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TEMP_SUFFIX)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            return fd, temp_name  # no locks on this file system: cleanup cannot lock the file either, so keeps it
        if _names_file(temp_name, fd):
            return fd, temp_name
        os.close(fd)


def _names_file(path: str, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        named, opened = os.stat(path, follow_symlinks=False), os.fstat(fd)
    except OSError:
        return False
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def remove_leftovers(targets: Iterable[Path], patience: float = 0.0) -> int:
    """Delete the temporary files that writes of ``targets`` left behind when their process was killed
    (SIGKILL or power loss skip the cleanup above); returns how many were removed.

    Each folder is listed once. A temporary file whose lock is held belongs to a write in progress (of
    this or another process) and is kept; with ``patience`` (seconds) it is tried again until then, for a
    caller that has just killed the writers and waits for them to be gone."""
    wanted: dict[Path, set[str]] = {}
    for target in targets:
        wanted.setdefault(target.parent, set()).add(target.name)
    candidates: list[str] = []
    for folder, names in wanted.items():
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        candidates += [
            entry.path
            for entry in entries
            if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX) and _target_of(entry.name) in names
        ]
    removed = 0
    deadline = time.monotonic() + patience
    while True:
        kept = [path for path in candidates if not _remove_if_unlocked(path)]
        removed += len(candidates) - len(kept)
        candidates = [path for path in kept if os.path.lexists(path)]
        if not candidates or time.monotonic() >= deadline:
            return removed
        time.sleep(LEFTOVER_RETRY)


def _remove_if_unlocked(path: str) -> bool:
    """Delete the file at ``path`` (never a symlink's target) if no live process holds its lock; True if deleted."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if not _names_file(path, fd):
            return False
        os.unlink(path)  # while locked, so no writer can take this file meanwhile
        return True
    except OSError:  # locked by a live write, or no locks on this file system
        return False
    finally:
        os.close(fd)


def _target_of(temp_name: str) -> str:
    """``.photo.png.k3j2x9.part`` -> ``photo.png`` (the random part never contains a dot)."""
    return temp_name[1 : -len(TEMP_SUFFIX)].rsplit(".", 1)[0]
