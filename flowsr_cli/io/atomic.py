"""Atomic file writes: a target is either its old content or the complete new content, never partial."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

TEMP_SUFFIX = ".part"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a hidden temporary file in the same folder and a rename.

    On any failure the temporary file is removed and the exception propagates; an existing
    file at ``path`` keeps its old content.
    """
    target = Path(path)
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp_name, 0o666 & ~_current_umask())
        os.replace(temp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise


def remove_leftovers(targets: Iterable[Path]) -> int:
    """Delete the temporary files that writes of ``targets`` left behind when their process was killed
    (SIGKILL or power loss skip the cleanup above); returns how many were removed.

    Each folder is listed once. Call it before writing, so no write of this process is in flight."""
    wanted: dict[Path, set[str]] = {}
    for target in targets:
        wanted.setdefault(target.parent, set()).add(target.name)
    removed = 0
    for folder, names in wanted.items():
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            name = entry.name
            if name.startswith(".") and name.endswith(TEMP_SUFFIX) and _target_of(name) in names:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


def _target_of(temp_name: str) -> str:
    """``.photo.png.k3j2x9.part`` -> ``photo.png`` (the random part never contains a dot)."""
    return temp_name[1 : -len(TEMP_SUFFIX)].rsplit(".", 1)[0]
