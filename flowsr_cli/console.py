"""Where the CLI talks to people: a Rich console on stderr, so stdout stays free for data."""

from __future__ import annotations

import contextlib
import os
import sys
from functools import lru_cache

import typer
from rich.console import Console
from rich.markup import escape


@lru_cache(maxsize=1)
def stderr_console() -> Console:
    """The console for progress, tables, warnings and errors."""
    return Console(stderr=True, highlight=False)


def printable(text: str | os.PathLike[str]) -> str:
    """Text safe to print whatever bytes a file name holds (undecodable bytes shown as escapes)."""
    return os.fspath(text).encode("utf-8", "backslashreplace").decode("utf-8")


def report_error(message: str) -> None:
    """One line on stderr starting with ``error:``."""
    stderr_console().print(f"[bold red]error:[/] {escape(printable(message))}", markup=True, soft_wrap=True)


def report_warning(message: str) -> None:
    """One line on stderr starting with ``warning:``."""
    stderr_console().print(f"[yellow]warning:[/] {escape(printable(message))}", markup=True, soft_wrap=True)


def report_note(message: str) -> None:
    """One dim line on stderr starting with ``note:`` (information, not a problem)."""
    stderr_console().print(f"[dim]note: {escape(printable(message))}[/]", markup=True, soft_wrap=True)


def debug_enabled(context: typer.Context) -> bool:
    """True when ``--debug`` was given or FLOWSR_DEBUG is set: errors then show their traceback."""
    flag = bool(context.find_root().params.get("debug"))
    return flag or os.environ.get("FLOWSR_DEBUG", "") not in ("", "0")


def discard_stdout() -> None:
    """Point stdout at /dev/null once its reader is gone, so what is still buffered cannot fail again when
    Python exits (it would print "Exception ignored ... BrokenPipeError")."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # no stdout, or not a file (a test's capture)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
