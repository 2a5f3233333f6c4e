"""How an `upscale` or `rescale` run shows itself: progress bars, error lines, JSON lines and a closing summary."""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from types import TracebackType

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn
from rich.table import Table
from rich.text import Text

from flowsr_cli.console import printable, report_error, report_note, report_warning, stderr_console
from flowsr_cli.engine.batch import DONE, FAILED, SKIPPED, Outcome
from flowsr_cli.io.outputs import Job


class DoneColumn(ProgressColumn):
    """How much of a task is done: images as done/total, a task with the field ``percent`` in percent."""

    def render(self, task: Task) -> Text:
        """``3/10`` or `` 42%``."""
        if task.fields.get("percent"):
            return Text(f"{task.percentage:3.0f}%", style="progress.percentage")
        return Text(f"{int(task.completed)}/{int(task.total or 0)}", style="progress.download")


class TimeLeftColumn(ProgressColumn):
    """The time a task still needs: the time it took so far, scaled by the part still to do. (Rich's own
    estimate needs two updates less than 30 s apart, which a slow image never gives.)"""

    max_refresh = 0.5

    def render(self, task: Task) -> Text:
        """``h:mm:ss``, or ``-:--:--`` before any progress."""
        elapsed, total, done = task.elapsed, task.total, task.completed
        if not elapsed or not total or done <= 0:
            return Text("-:--:--", style="progress.remaining")
        minutes, seconds = divmod(math.ceil(elapsed * max(total - done, 0.0) / done), 60)
        hours, minutes = divmod(minutes, 60)
        return Text(f"{hours}:{minutes:02d}:{seconds:02d}", style="progress.remaining")


class ConsoleReporter:
    """Progress on stderr (an overall bar and a bar for the current image, each with the time left);
    failures as one line each even when quiet; optional JSON lines on stdout."""

    def __init__(self, total: int, *, quiet: bool, json_lines: bool, done: str = "upscaled") -> None:
        self.quiet = quiet
        self.json_lines = json_lines
        self.done = done
        """How the summary counts the images done (``3 upscaled, ...``)."""
        self._progress: Progress | None = None
        self._overall: TaskID | None = None
        self._current: TaskID | None = None
        self._finished = 0
        """Images (outputs) finished so far, for the overall bar."""
        self._said: set[str] = set()
        """Warning and error lines already printed: the samples of one input share theirs."""
        if not quiet:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DoneColumn(),
                TimeLeftColumn(),
                console=stderr_console(),
                transient=True,
                disable=not stderr_console().is_terminal,  # a live display off a terminal only adds blank lines
            )
            self._overall = self._progress.add_task("images", total=total)
            self._current = self._progress.add_task("", total=1.0, visible=False, percent=True)

    def __enter__(self) -> ConsoleReporter:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def image_started(self, job: Job) -> None:
        """Show the image being worked on; its time left counts from now."""
        if self._progress is not None and self._current is not None:
            name = escape(printable(job.input.display))
            self._progress.reset(self._current, description=name, visible=True)

    def image_progress(self, fraction: float) -> None:
        """Advance the current image's bar, and the overall bar by as much of one image."""
        if self._progress is not None and self._current is not None and self._overall is not None:
            self._progress.update(self._current, completed=fraction)
            self._progress.update(self._overall, completed=self._finished + fraction)

    def image_finished(self, outcome: Outcome) -> None:
        """Report failures and warnings at once; count the image."""
        name = outcome.job.input.display
        for warning in outcome.warnings:
            self._say(report_warning, f"{name}: {warning}")
        if outcome.status == FAILED:
            self._say(report_error, f"{name}: {outcome.reason}")
        if self.json_lines:
            # ASCII escapes keep every line valid UTF-8 JSON even for non-UTF-8 file names (as \udcXX,
            # which os.fsencode turns back into the name's bytes).
            self._print_json(json.dumps(outcome.as_record()))
        self._finished += 1
        if self._progress is not None and self._overall is not None:
            self._progress.update(self._overall, completed=self._finished)

    def _print_json(self, line: str) -> None:
        """One JSON line on stdout. While the bars are live on a terminal that stdout writes to as well,
        they are taken down for the line and drawn again under it, so that the line starts on its own line
        (stdout elsewhere, e.g. a pipe, gets the line alone, as always)."""
        progress = self._progress
        if progress is None or not _drawn_where_stdout_goes(progress):
            typer.echo(line)
            return
        progress.stop()
        typer.echo(line)
        progress.start()

    def _say(self, report: Callable[[str], None], line: str) -> None:
        if line not in self._said:
            self._said.add(line)
            report(line)

    def note(self, message: str) -> None:
        """Something worth saying once per run, e.g. which device runs the model."""
        if not self.quiet:
            report_note(message)

    def report_problem(self, argument: str, reason: str) -> None:
        """An argument that named no usable image."""
        report_error(f"{argument}: {reason}")
        if self.json_lines:
            record = {"input": printable(argument), "output": None, "status": FAILED, "error": reason}
            self._print_json(json.dumps(record, ensure_ascii=False))

    def summary(self, outcomes: Sequence[Outcome], problems: Sequence[tuple[str, str]]) -> None:
        """A closing line of counts and a table of every failure with its reason."""
        if self.quiet:
            return
        counts = Counter(outcome.status for outcome in outcomes)
        failed = [(outcome.job.input.display, outcome.reason or "") for outcome in outcomes if outcome.status == FAILED]
        failed.extend(problems)
        console = stderr_console()
        console.print(
            f"{counts[DONE]} {self.done}, {counts[SKIPPED]} skipped, {len(failed)} failed",
            style="bold red" if failed else None,
        )
        if failed:
            table = Table("input", "problem", title="Failed inputs", title_justify="left")
            for name, reason in dict.fromkeys(failed):
                table.add_row(Text(printable(name)), Text(reason))
            console.print(table)


def _drawn_where_stdout_goes(progress: Progress) -> bool:
    """Whether the bars are live on a terminal and stdout is a terminal too (the same one, in practice)."""
    live_on_terminal = progress.live.is_started and progress.console.is_terminal
    return live_on_terminal and sys.stdout is not None and sys.stdout.isatty()
