"""Running `upscale` jobs one after another: one bad input never stops the others.

Imaging and torch are imported only when a job needs them, so a rerun that skips everything is fast.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from flowsr_cli.atomic import atomic_write_bytes
from flowsr_cli.errors import FlowsrError, UsageError
from flowsr_cli.formats import FORMAT_EXTENSIONS
from flowsr_cli.outputs import FALLBACK_FORMAT, Job
from flowsr_cli.sizing import Size, SizeRequest

if TYPE_CHECKING:
    from flowsr_cli.engine import Upscaler

DONE, SKIPPED, FAILED = "done", "skipped", "failed"


@dataclass
class Outcome:
    """What happened to one job."""

    job: Job
    status: str
    reason: str | None = None
    size_in: Size | None = None
    size_out: Size | None = None
    seconds: float = 0.0
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
            "warnings": self.warnings,
        }


class BatchObserver(Protocol):
    """Receives progress events (the CLI turns them into bars, lines and JSON)."""

    def image_started(self, job: Job) -> None: ...

    def image_progress(self, fraction: float) -> None: ...

    def image_finished(self, outcome: Outcome) -> None: ...


@dataclass(frozen=True)
class BatchOptions:
    """Choices that apply to every job of a run."""

    request: SizeRequest
    overwrite: bool
    quality: int
    strip_metadata: bool
    max_pixels: int
    debug: bool = False


class BatchRunner:
    """Reads, upscales and writes each job, turning per-image errors into failed outcomes."""

    def __init__(self, options: BatchOptions, make_upscaler: Callable[[], Upscaler], observer: BatchObserver) -> None:
        self.options = options
        self._make_upscaler = make_upscaler
        self._upscaler: Upscaler | None = None
        self.observer = observer

    def _pending_reason(self, job: Job) -> tuple[str, str] | None:
        if job.problem is not None:
            return FAILED, job.problem
        if job.skip is not None:
            return SKIPPED, job.skip
        if job.output is not None and job.output.exists() and not self.options.overwrite:
            return SKIPPED, "output exists (use --overwrite to replace it)"
        return None

    def run(self, jobs: list[Job]) -> list[Outcome]:
        """Process every job in order; the upscaler is built only if some job needs it."""
        if any(self._pending_reason(job) is None for job in jobs):
            self._get_upscaler()
        return [self._run_one(job) for job in jobs]

    def _run_one(self, job: Job) -> Outcome:
        self.observer.image_started(job)
        started = time.perf_counter()
        settled = self._pending_reason(job)
        if settled is not None:
            outcome = Outcome(job, settled[0], settled[1])
        else:
            outcome = Outcome(job, DONE)
            try:
                self._process(job, outcome)
            except UsageError:
                raise
            except FlowsrError as exc:
                outcome.status, outcome.reason = FAILED, str(exc)
            except OSError as exc:
                outcome.status, outcome.reason = FAILED, f"cannot write: {exc.strerror or exc}"
            except Exception as exc:
                if self.options.debug:
                    raise
                outcome.status, outcome.reason = FAILED, f"unexpected {type(exc).__name__}: {exc}"
        outcome.seconds = time.perf_counter() - started
        self.observer.image_finished(outcome)
        return outcome

    def _get_upscaler(self) -> Upscaler:
        if self._upscaler is None:
            self._upscaler = self._make_upscaler()
        return self._upscaler

    def _process(self, job: Job, outcome: Outcome) -> None:
        from flowsr_cli.imageio import encode_image, read_image
        from flowsr_cli.pipeline import upscale_image

        source = sys.stdin.buffer.read() if job.input.path is None else job.input.path
        image = read_image(source, max_pixels=self.options.max_pixels)
        outcome.warnings.extend(image.warnings)
        outcome.size_in = Size(image.width, image.height)
        outcome.size_out = self.options.request.target(outcome.size_in)
        result = upscale_image(image, outcome.size_out, self._get_upscaler(), self.observer.image_progress)
        output_format = job.format or (image.format if image.format in FORMAT_EXTENSIONS else FALLBACK_FORMAT)
        data, warnings = encode_image(
            result, output_format, quality=self.options.quality, strip_metadata=self.options.strip_metadata
        )
        outcome.warnings.extend(warnings)
        if job.output is None:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:
            job.output.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(job.output, data)
