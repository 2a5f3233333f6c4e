"""How an `upscale` run shows itself: progress bars, error lines, JSON lines and a closing summary."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from types import TracebackType

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from flowsr_cli.console import printable, report_error, report_note, report_warning, stderr_console
from flowsr_cli.engine.batch import DONE, FAILED, SKIPPED, Outcome
from flowsr_cli.io.outputs import Job


class ConsoleReporter:
    """Progress on stderr (an overall bar with ETA and a bar for the current image); failures as
    one line each even when quiet; optional JSON lines on stdout."""

    def __init__(self, total: int, *, quiet: bool, json_lines: bool) -> None:
        self.quiet = quiet
        self.json_lines = json_lines
        self._progress: Progress | None = None
        self._overall: TaskID | None = None
        self._current: TaskID | None = None
        self._said: set[str] = set()
        """Warning and error lines already printed: the samples of one input share theirs."""
        if not quiet:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=stderr_console(),
                transient=True,
            )
            self._overall = self._progress.add_task("images", total=total)
            self._current = self._progress.add_task("", total=1.0, visible=False)

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
        """Show the image being worked on."""
        if self._progress is not None and self._current is not None:
            name = escape(printable(job.input.display))
            self._progress.update(self._current, description=name, completed=0.0, visible=True)

    def image_progress(self, fraction: float) -> None:
        """Advance the current image's bar."""
        if self._progress is not None and self._current is not None:
            self._progress.update(self._current, completed=fraction)

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
            typer.echo(json.dumps(outcome.as_record()))
        if self._progress is not None and self._overall is not None:
            self._progress.advance(self._overall)

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
            typer.echo(json.dumps(record, ensure_ascii=False))

    def summary(self, outcomes: Sequence[Outcome], problems: Sequence[tuple[str, str]]) -> None:
        """A closing line of counts and a table of every failure with its reason."""
        if self.quiet:
            return
        counts = Counter(outcome.status for outcome in outcomes)
        failed = [(outcome.job.input.display, outcome.reason or "") for outcome in outcomes if outcome.status == FAILED]
        failed.extend(problems)
        console = stderr_console()
        console.print(
            f"{counts[DONE]} upscaled, {counts[SKIPPED]} skipped, {len(failed)} failed",
            style="bold red" if failed else None,
        )
        if failed:
            table = Table("input", "problem", title="Failed inputs", title_justify="left")
            for name, reason in dict.fromkeys(failed):
                table.add_row(Text(printable(name)), Text(reason))
            console.print(table)
