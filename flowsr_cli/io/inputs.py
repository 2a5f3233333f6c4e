"""Which images a run reads: files, folders, globs or stdin, sorted and de-duplicated."""

from __future__ import annotations

import glob
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from flowsr_cli.errors import UsageError
from flowsr_cli.io.formats import INPUT_EXTENSIONS

STDIN_ARGUMENT = "-"
_NOT_REGULAR = (
    (stat.S_ISFIFO, "a named pipe (FIFO), not a regular file (pipe an image in as - instead)"),
    (stat.S_ISCHR, "a character device, not a regular file"),
    (stat.S_ISBLK, "a block device, not a regular file"),
    (stat.S_ISSOCK, "a socket, not a regular file"),
)


@dataclass(frozen=True)
class InputFile:
    """One image to read: a file (``path``), or stdin when ``path`` is None.

    ``root`` is the folder argument it was found under, so sub-folders can be mirrored in ``-o DIR``.
    ``named`` is True for a file the command line names itself (not found in a folder or by a glob): the
    user asked for it, so it is read even if it is an earlier output of flowsr.
    """

    path: Path | None
    root: Path | None = None
    named: bool = False

    @property
    def display(self) -> str:
        """How the input is named in messages."""
        return "<stdin>" if self.path is None else os.fspath(self.path)


@dataclass
class Discovery:
    """What the command-line arguments name: images, and arguments that named nothing usable."""

    inputs: list[InputFile] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    single_file: bool = False
    """True when the arguments are exactly one file (or stdin), so ``-o`` may name the output file."""


def not_regular_reason(mode: int) -> str | None:
    """Why a file (not a folder) whose ``st_mode`` is ``mode`` is not read: what it is instead; None for a regular
    file."""
    if stat.S_ISREG(mode):
        return None
    return next((reason for is_kind, reason in _NOT_REGULAR if is_kind(mode)), "a special file, not a regular file")


def is_image_name(path: Path) -> bool:
    """True for non-hidden files with an image extension."""
    return path.suffix.lower() in INPUT_EXTENSIONS and not path.name.startswith(".")


def walk_images(folder: Path, recursive: bool) -> Iterator[Path]:
    """Image files in ``folder``; with ``recursive``, in its sub-folders too (symlinked folders
    are followed once, so link loops end)."""
    if not recursive:
        with os.scandir(folder) as entries:
            for entry in entries:
                path = Path(entry.path)
                if is_image_name(path) and entry.is_file():
                    yield path
        return
    seen: set[str] = set()
    for current, subfolders, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(current)
        if real in seen:
            subfolders.clear()
            continue
        seen.add(real)
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for name in files:
            path = Path(current, name)
            if is_image_name(path) and path.is_file():
                yield path


def _file_problem(path: Path) -> str | None:
    """Why the file ``path`` (not a folder) cannot be an input, or None if it can: it is checked without being
    opened, as opening a FIFO waits for a writer and opening a device can have effects."""
    try:
        return not_regular_reason(path.stat().st_mode)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"


def discover(arguments: Sequence[str], recursive: bool) -> Discovery:
    """Expand the arguments into a sorted list of distinct inputs."""
    if STDIN_ARGUMENT in arguments and len(arguments) > 1:
        raise UsageError("'-' (stdin) cannot be combined with other inputs")
    if list(arguments) == [STDIN_ARGUMENT]:
        return Discovery([InputFile(None)], single_file=True)
    found: dict[str, InputFile] = {}
    discovery = Discovery()

    def add(path: Path, root: Path | None, named: bool = False) -> None:
        """Add an input; one found twice keeps its first place and root, and is named if either time named it."""
        key = os.path.realpath(path)
        earlier = found.get(key)
        found[key] = InputFile(path, root, named) if earlier is None else replace(earlier, named=earlier.named or named)

    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            before = len(found)
            for image in walk_images(path, recursive):
                add(image, path)
            if len(found) == before:
                discovery.problems.append((argument, "no images found in this folder"))
        elif path.exists():
            reason = _file_problem(path)
            if reason is None:
                add(path, None, named=True)
            else:
                discovery.problems.append((argument, reason))
        elif glob.has_magic(argument):
            matches = [Path(match) for match in glob.glob(argument, recursive=recursive)]
            images = [match for match in matches if match.is_file() and is_image_name(match)]
            for image in images:
                add(image, None)
            if not images:
                discovery.problems.append((argument, "no image files match this pattern"))
        else:
            discovery.problems.append((argument, "no such file or folder"))
    discovery.inputs = sorted(found.values(), key=lambda item: os.fspath(item.path))
    discovery.single_file = len(arguments) == 1 and _names_one_file(arguments[0])
    return discovery


def _names_one_file(argument: str) -> bool:
    """True for an argument that is a file, or a name of nothing that is no pattern: a missing file is one input
    (failing alone), so ``-o`` may still name its output."""
    path = Path(argument)
    return not path.is_dir() if path.exists() else not glob.has_magic(argument)


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``I/N`` (0 <= I < N) into (I, N)."""
    index_text, _, count_text = text.partition("/")
    try:
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise UsageError(f"--shard takes I/N with 0 <= I < N (e.g. 0/4), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"--shard takes I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return index, count
