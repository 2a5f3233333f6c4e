"""Running `upscale` jobs one after another: one bad input never stops the others.

Imaging and torch are imported only when a job needs them, so a rerun that skips everything is fast.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from flowsr_cli.errors import FlowsrError, UsageError
from flowsr_cli.io.atomic import atomic_write_bytes, remove_leftovers
from flowsr_cli.io.formats import FORMAT_EXTENSIONS
from flowsr_cli.io.outputs import FALLBACK_FORMAT, Job
from flowsr_cli.io.provenance import is_flowsr_output, unmarked_file_problem
from flowsr_cli.io.sizing import Size, SizeRequest

if TYPE_CHECKING:
    from flowsr_cli.engine.upscaler import Upscaler

DONE, SKIPPED, FAILED = "done", "skipped", "failed"


class StdoutError(FlowsrError):
    """Image data could not be written to stdout: the run stops (exit 1), as nothing more can go there."""


@dataclass
class Outcome:
    """What happened to one job."""

    job: Job
    status: str
    reason: str | None = None
    size_in: Size | None = None
    size_out: Size | None = None
    seconds: float = 0.0
    tiles: int = 0
    guarded_tiles: int = 0
    warnings: list[str] = field(default_factory=list)

    def as_record(self) -> dict[str, Any]:
        """A JSON-ready description (the `--json` line for this image)."""
        output = self.job.output
        return {
            "input": self.job.input.display,
            "output": "<stdout>" if output is None else str(output),
            "status": self.status,
            "error": self.reason if self.status == FAILED else None,
            "reason": self.reason if self.status == SKIPPED else None,
            "size_in": list(self.size_in) if self.size_in else None,
            "size_out": list(self.size_out) if self.size_out else None,
            "seconds": round(self.seconds, 4),
            "tiles": self.tiles,
            "guarded_tiles": self.guarded_tiles,
            "warnings": self.warnings,
        }


class BatchObserver(Protocol):
    """Receives progress events (the CLI turns them into bars, lines and JSON)."""

    def image_started(self, job: Job) -> None: ...

    def image_progress(self, fraction: float) -> None: ...

    def image_finished(self, outcome: Outcome) -> None: ...

    def note(self, message: str) -> None: ...


@dataclass(frozen=True)
class BatchOptions:
    """Choices that apply to every job of a run."""

    request: SizeRequest
    overwrite: bool
    quality: int
    strip_metadata: bool
    max_pixels: int
    seed: int = 0
    debug: bool = False


class BatchRunner:
    """Reads, upscales and writes each input once for all its outputs (samples), turning per-image
    errors into failed outcomes."""

    def __init__(self, options: BatchOptions, make_upscaler: Callable[[], Upscaler], observer: BatchObserver) -> None:
        self.options = options
        self._make_upscaler = make_upscaler
        self._upscaler: Upscaler | None = None
        self._notes_shown = 0
        self.observer = observer

    def _settled(self, job: Job) -> Outcome | None:
        if job.problem is not None:
            return Outcome(job, FAILED, job.problem)
        if job.skip is not None:
            return Outcome(job, SKIPPED, job.skip)
        if job.output is not None and job.output.exists():
            if not self.options.overwrite:
                return Outcome(job, SKIPPED, "output exists (use --overwrite to replace it)")
            if not is_flowsr_output(job.output):
                return Outcome(job, FAILED, unmarked_file_problem(job.output))
        return None

    def _get_upscaler(self) -> Upscaler:
        if self._upscaler is None:
            self._upscaler = self._make_upscaler()
        return self._upscaler

    def _show_new_notes(self) -> None:
        """Pass on what the upscaler wants said once (device choice, smaller tiles after OOM)."""
        if self._upscaler is not None:
            for message in self._upscaler.notes[self._notes_shown :]:
                self.observer.note(message)
            self._notes_shown = len(self._upscaler.notes)

    def run(self, jobs: list[Job]) -> list[Outcome]:
        """Process every job in order; the upscaler is built only if some job needs it. Temporary files
        that a killed earlier run left for these outputs are removed first."""
        remove_leftovers(job.output for job in jobs if job.output is not None)
        if any(self._settled(job) is None for job in jobs):
            self._get_upscaler()
            self._show_new_notes()
        outcomes: list[Outcome] = []
        for _, group in itertools.groupby(jobs, key=lambda job: job.input):
            outcomes.extend(self._run_input(list(group)))
            self._show_new_notes()
        return outcomes

    def _finish(self, outcome: Outcome, started: float) -> Outcome:
        outcome.seconds = time.perf_counter() - started
        self.observer.image_finished(outcome)
        return outcome

    def _run_input(self, jobs: list[Job]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        pending: list[Job] = []
        for job in jobs:
            settled = self._settled(job)
            if settled is None:
                pending.append(job)
            else:
                self.observer.image_started(job)
                outcomes.append(self._finish(settled, time.perf_counter()))
        if not pending:
            return outcomes
        self.observer.image_started(pending[0])
        started = time.perf_counter()
        written = 0
        try:
            for outcome in self._process(pending):
                outcomes.append(self._finish(outcome, started))
                written += 1
                started = time.perf_counter()
        except (UsageError, StdoutError):
            raise
        except Exception as exc:
            if self.options.debug and not isinstance(exc, (FlowsrError, OSError)):
                raise
            reason = _failure_reason(exc)
            outcomes.extend(self._finish(Outcome(job, FAILED, reason), started) for job in pending[written:])
        return outcomes

    def _process(self, jobs: list[Job]) -> Iterator[Outcome]:
        from flowsr_cli.engine.pipeline import upscale_image
        from flowsr_cli.io.file_checks import read_stream
        from flowsr_cli.io.reading import read_image
        from flowsr_cli.io.writing import encode_image

        source = (
            read_stream(sys.stdin.buffer, self.options.max_pixels) if jobs[0].input.path is None else jobs[0].input.path
        )
        image = read_image(source, max_pixels=self.options.max_pixels)
        size_in = Size(image.width, image.height)
        size_out = self.options.request.target(size_in)
        seeds = [self.options.seed + (job.sample or 0) for job in jobs]
        results, report = upscale_image(image, size_out, self._get_upscaler(), seeds, self.observer.image_progress)
        notes = [*image.warnings, *report.notes]
        if report.guarded_tiles:
            notes.append(f"{report.guarded_tiles} tile(s) had exploding flow inverses and were re-sampled safely")
        for job, result in zip(jobs, results):
            output_format = job.format or (image.format if image.format in FORMAT_EXTENSIONS else FALLBACK_FORMAT)
            data, warnings = encode_image(
                result, output_format, quality=self.options.quality, strip_metadata=self.options.strip_metadata
            )
            if job.output is None:
                _write_stdout(data)
            else:
                job.output.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(job.output, data)
            yield Outcome(
                job,
                DONE,
                None,
                size_in,
                size_out,
                tiles=report.tiles,
                guarded_tiles=report.guarded_tiles,
                warnings=[*notes, *warnings],
            )


def _write_stdout(data: bytes) -> None:
    """Write all of ``data`` to stdout, or raise ``StdoutError``: a reader that went away (a closed or
    broken pipe, e.g. ``| head -c 10``), a full disk and a short write are errors, never a silent success."""
    try:
        if sys.stdout is None:
            raise OSError("stdout is closed")
        stream = sys.stdout.buffer
        remaining = memoryview(data)
        while remaining:
            written = stream.write(remaining)  # a pipe whose reader closes mid-write takes only a part
            if not written:
                raise OSError(f"short write, {len(data) - len(remaining)} of {len(data)} bytes")
            remaining = remaining[written:]
        stream.flush()
    except OSError as exc:
        _discard_stdout()
        raise StdoutError(f"cannot write to stdout: {exc.strerror or exc}") from exc


def _discard_stdout() -> None:
    """Send what is left in stdout's buffer to /dev/null, so Python's flush at exit cannot fail again
    (it would print "Exception ignored ... BrokenPipeError")."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # no stdout, or not a file (a test's capture)
        stdout = sys.stdout.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stdout)
        os.close(devnull)


def _failure_reason(exc: Exception) -> str:
    if isinstance(exc, FlowsrError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"cannot write: {exc.strerror or exc}"
    if isinstance(exc, MemoryError):
        return "not enough memory for this image (lower max_output_pixels, or use a smaller --tile)"
    return f"unexpected {type(exc).__name__}: {exc}"
