"""Running `upscale` (or `rescale`) jobs one after another: one bad input never stops the others.

A run first settles the jobs that need no work (failed before starting, or skipped: e.g. their output
exists, written by flowsr with the same settings) and reports them, before any model is loaded; then it
runs the rest. Imaging and torch are imported only when a job needs them, so a rerun that skips everything
is fast. What a run does to each image is its :class:`Work` (`upscale`'s is :class:`UpscaleWork`); reading,
writing (atomically, with the provenance mark), skipping and reporting are the same for every command.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from flowsr_cli.console import discard_stdout
from flowsr_cli.errors import FlowsrError, ImageError, UsageError
from flowsr_cli.io.atomic import atomic_write_bytes, remove_leftovers
from flowsr_cli.io.formats import FORMAT_EXTENSIONS, format_from_suffix
from flowsr_cli.io.outputs import FALLBACK_FORMAT, Job, Skip
from flowsr_cli.io.provenance import MarkedRun, read_mark, unmarked_file_problem
from flowsr_cli.io.sizing import Size, SizeRequest

if TYPE_CHECKING:
    from flowsr_cli.engine.upscaler import ProgressCallback, Upscaler, UpscaleReport
    from flowsr_cli.io.image import Image

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
    skip: Skip | None = None
    """Why a skipped job was skipped (``reason`` is its text)."""
    consistency: str | None = None
    """The run's consistency, resolved (``on``/``off``; None if its model was never looked at)."""
    temperature: float | None = None
    """The run's temperature: ``-t``, or the model's default (None if its model was never looked at)."""

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
            "consistency": self.consistency,
            "temperature": self.temperature,
        }


class BatchObserver(Protocol):
    """Receives progress events (the CLI turns them into bars, lines and JSON)."""

    def image_started(self, job: Job) -> None: ...

    def image_progress(self, fraction: float) -> None: ...

    def image_finished(self, outcome: Outcome) -> None: ...

    def note(self, message: str) -> None: ...


@dataclass
class Rendered:
    """What a run's work made of one input: one image per seed, how they were made, and what their marks
    record of this input besides the run's settings."""

    images: list[Image]
    report: UpscaleReport
    mark: dict[str, object] = field(default_factory=dict)


class Work(Protocol):
    """What a run does to each input image; :class:`BatchRunner` settles, reads, writes and reports around it."""

    @property
    def notes(self) -> list[str]:
        """Things to tell the user once per run (e.g. running on the CPU); the work keeps adding to it."""
        ...

    def render(self, image: Image, source: Path | bytes, seeds: Sequence[int], progress: ProgressCallback) -> Rendered:
        """The outputs of ``image`` (decoded from ``source``: its file, or the bytes read from stdin), one per
        seed; ``progress`` gets the finished fraction. Errors the user can act on are FlowsrErrors."""
        ...


@dataclass
class UpscaleWork:
    """`upscale`'s work: each input enlarged to the size ``request`` gives it by one upscaler."""

    upscaler: Upscaler
    request: SizeRequest

    @property
    def notes(self) -> list[str]:
        """The upscaler's notes."""
        return self.upscaler.notes

    def render(self, image: Image, source: Path | bytes, seeds: Sequence[int], progress: ProgressCallback) -> Rendered:
        """One upscaled image per seed."""
        from flowsr_cli.engine.pipeline import upscale_image

        size_out = self.request.target(Size(image.width, image.height))
        images, report = upscale_image(image, size_out, self.upscaler, seeds, progress)
        return Rendered(images, report)


@dataclass(frozen=True)
class BatchOptions:
    """Choices that apply to every job of a run; ``run`` holds the settings its outputs' marks record."""

    request: SizeRequest | None
    """The size `upscale` enlarges to, checked against each input's header before any model loads (None: the
    run's work decides sizes)."""
    run: MarkedRun
    overwrite: bool
    quality: int
    strip_metadata: bool
    max_pixels: int
    debug: bool = False
    lossless: bool = False
    """Write WebP outputs losslessly (`rescale down`'s LRs); other formats are as they always are."""


class BatchRunner:
    """Reads, processes (its :class:`Work`) and writes each input once for all its outputs (samples), turning
    per-image errors into failed outcomes.

    Use: :meth:`settle` the jobs (it returns those that need work), :meth:`start` (reports the settled jobs,
    then builds the work if some job needs it), then :meth:`run` the rest."""

    def __init__(self, options: BatchOptions, observer: BatchObserver) -> None:
        self.options = options
        self.observer = observer
        self._work: Work | None = None
        self._notes_shown = 0
        self._jobs: list[Job] = []
        self._settled_jobs: list[Outcome] = []
        self._input_problems: dict[Path, str | None] = {}

    def settle(self, jobs: list[Job]) -> list[Job]:
        """Decide the jobs that need no work: those that failed before starting (also an input whose header
        shows it cannot be done), and those skipped (an input that is an earlier output, an output that
        exists). Returns the other jobs; nothing is reported yet."""
        self._jobs = jobs
        settled = [(job, self._settled(job)) for job in jobs]
        self._settled_jobs = [outcome for _, outcome in settled if outcome is not None]
        return [job for job, outcome in settled if outcome is None]

    def start(self, make_work: Callable[[], Work] | None) -> list[Outcome]:
        """Report the settled jobs (each failure as it is, the skips as one note per kind), then build the
        work with ``make_work`` (None when no job needs one); returns the settled outcomes. Temporary
        files that a killed earlier run left for these outputs are removed first."""
        remove_leftovers(job.output for job in self._jobs if job.output is not None)
        for outcome in self._settled_jobs:
            self.observer.image_started(outcome.job)
            self._finish(outcome, time.perf_counter())
        self._note_skips(self._settled_jobs)
        if make_work is not None:
            self._work = make_work()
            self._show_new_notes()
        return self._settled_jobs

    def resolve_consistency(self, consistency: str) -> None:
        """Take the run's consistency as resolved for its prepared model (``on``/``off``): the outputs' marks
        record it and the jobs still to run are compared with it."""
        self.options = replace(self.options, run=replace(self.options.run, consistency=consistency))

    def run(self) -> list[Outcome]:
        """Process every job :meth:`settle` left, in order; returns their outcomes."""
        outcomes: list[Outcome] = []
        for jobs in self.pending_inputs():
            outcomes.extend(self.run_input(jobs))
            self._show_new_notes()
        return outcomes

    def pending_inputs(self) -> list[list[Job]]:
        """The jobs :meth:`settle` left, grouped by input in order: each group is read once for all its outputs."""
        settled = {id(outcome.job) for outcome in self._settled_jobs}
        pending = [job for job in self._jobs if id(job) not in settled]
        return [list(group) for _, group in itertools.groupby(pending, key=lambda job: job.input)]

    def _settled(self, job: Job) -> Outcome | None:
        if job.problem is not None:
            return Outcome(job, FAILED, job.problem)
        if job.skip is not None:
            return Outcome(job, SKIPPED, job.skip.reason, skip=job.skip)
        if job.output is not None and job.output.exists():
            existing = self._existing(job, job.output)
            if existing is not None:
                return existing
        problem = self._input_problem(job.input.path) if job.input.path is not None else None
        return None if problem is None else Outcome(job, FAILED, problem)

    def _input_problem(self, path: Path) -> str | None:
        """Why the input file cannot be done, as far as its type, size and header show (not a regular file,
        not an image, too many pixels in or out); None if it may be. Checked once per input, before any model
        loads, and only for jobs that will run (a rerun that only skips reads no image)."""
        if path not in self._input_problems:
            from flowsr_cli.io.file_checks import image_size

            problem = None
            try:
                size = image_size(path, max_pixels=self.options.max_pixels)
                if size is not None and self.options.request is not None:
                    self.options.request.target(size)
            except ImageError as exc:
                problem = str(exc)
            self._input_problems[path] = problem
        return self._input_problems[path]

    def _existing(self, job: Job, output: Path) -> Outcome | None:
        """The outcome of a job whose output exists, or None to replace it (``--overwrite`` on flowsr's own
        output). Without ``--overwrite``, an output that flowsr wrote with the same settings is done, one
        written with other settings fails (never taken as done), and a file flowsr did not write is skipped."""
        mark = read_mark(output)
        if mark is None:
            if self.options.overwrite:
                return Outcome(job, FAILED, unmarked_file_problem(output))
            return _skipped(job, _foreign_skip(output))
        if self.options.overwrite:
            return None
        differences = self.options.run.differences(mark, job.sample)
        if differences:
            return Outcome(
                job,
                FAILED,
                f"{output} exists, written by flowsr with other settings ({'; '.join(differences)}); "
                "--overwrite replaces it, or choose another name with --suffix or -o",
            )
        if differences is None:
            return _skipped(
                job,
                Skip(
                    f"{output} exists (written by an earlier flowsr, which did not record its settings); "
                    "--overwrite replaces it",
                    "outputs exist (written by an earlier flowsr, which did not record their settings); "
                    "--overwrite replaces them",
                ),
            )
        return _skipped(
            job,
            Skip(
                f"{output} exists (written by flowsr with the same settings); --overwrite replaces it",
                "outputs exist (written by flowsr with the same settings); --overwrite replaces them",
            ),
        )

    def _note_skips(self, outcomes: list[Outcome]) -> None:
        """One note per kind of skip: the reason itself for one job, a count for several."""
        skips = [outcome.skip for outcome in outcomes if outcome.skip is not None]
        kinds = Counter(skip.many for skip in skips)
        reasons = {skip.many: skip.reason for skip in skips}
        for many, count in kinds.items():
            self.observer.note(f"skipped: {reasons[many]}" if count == 1 else f"skipped {count}: {many}")

    def _show_new_notes(self) -> None:
        """Pass on what the work wants said once (device choice, smaller tiles after OOM)."""
        if self._work is not None:
            notes = self._work.notes
            for message in notes[self._notes_shown :]:
                self.observer.note(message)
            self._notes_shown = len(notes)

    def _finish(self, outcome: Outcome, started: float) -> Outcome:
        outcome.seconds = time.perf_counter() - started
        outcome.consistency = self.options.run.consistency
        outcome.temperature = self.options.run.temperature
        self.observer.image_finished(outcome)
        return outcome

    def run_input(self, jobs: list[Job]) -> list[Outcome]:
        """Process the jobs of one input (settled again first) with the work :meth:`start` built; a failure
        becomes the failed outcome of each job not yet written."""
        outcomes: list[Outcome] = []
        pending: list[Job] = []
        for job in jobs:  # settled again: another run may have written an output since
            settled = self._settled(job)
            if settled is None:
                pending.append(job)
            else:
                self.observer.image_started(job)
                outcomes.append(self._finish(settled, time.perf_counter()))
        self._note_skips(outcomes)
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
        from flowsr_cli.io.file_checks import read_stream
        from flowsr_cli.io.reading import read_image
        from flowsr_cli.io.writing import encode_image

        source = (
            read_stream(sys.stdin.buffer, self.options.max_pixels) if jobs[0].input.path is None else jobs[0].input.path
        )
        image = read_image(source, max_pixels=self.options.max_pixels)
        size_in = Size(image.width, image.height)
        seeds = [self.options.run.seed + (job.sample or 0) for job in jobs]
        if self._work is None:
            raise RuntimeError("BatchRunner.start() builds the work before run()")
        rendered = self._work.render(image, source, seeds, self.observer.image_progress)
        report = rendered.report
        size_out = Size(rendered.images[0].width, rendered.images[0].height)
        notes = [*image.warnings, *report.notes]
        if report.guarded_tiles:
            notes.append(f"{report.guarded_tiles} tile(s) had exploding flow inverses and were re-sampled safely")
        for job, result in zip(jobs, rendered.images):
            output_format = job.format or (image.format if image.format in FORMAT_EXTENSIONS else FALLBACK_FORMAT)
            data, warnings = encode_image(
                result,
                output_format,
                quality=self.options.quality,
                strip_metadata=self.options.strip_metadata,
                settings={**self.options.run.mark(job.sample), **rendered.mark},
                lossless=self.options.lossless,
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


def _skipped(job: Job, skip: Skip) -> Outcome:
    return Outcome(job, SKIPPED, skip.reason, skip=skip)


def _foreign_skip(output: Path) -> Skip:
    """Why a job whose output is a file without flowsr's mark is skipped: BMP cannot carry the mark."""
    if format_from_suffix(output) == "bmp":
        return Skip(
            f"{output} exists and is a BMP, which cannot record that flowsr wrote it; it is never replaced "
            "(delete it to redo it)",
            "outputs exist as BMP files, which cannot record that flowsr wrote them; they are never replaced "
            "(delete them to redo them)",
        )
    return Skip(
        f"{output} exists and was not written by flowsr; it is never replaced (use --suffix or -o)",
        "outputs exist that flowsr did not write; they are never replaced (use --suffix or -o)",
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
        discard_stdout()
        raise StdoutError(f"cannot write to stdout: {exc.strerror or exc}") from exc


def _failure_reason(exc: Exception) -> str:
    if isinstance(exc, FlowsrError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"cannot write: {exc.strerror or exc}"
    if isinstance(exc, MemoryError):
        return "not enough memory for this image (lower max_output_pixels, or use a smaller --tile)"
    return f"unexpected {type(exc).__name__}: {exc}"
