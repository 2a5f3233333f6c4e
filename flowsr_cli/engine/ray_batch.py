"""Running a batch's pending inputs on a Ray cluster (`--backend ray`): one actor per worker loads the model once
and runs each input it is given exactly as the local path does (:meth:`BatchRunner.run_input`: settled again,
read with flowsr's reader, written atomically with the mark), so every promise of the local path holds.

The driver hands each worker one input at a time (two queued, so a worker never waits for the driver) and
reports outcomes as they come back. Faults are Ray's to handle: a worker that dies (killed, out of memory, its
node lost) is restarted and the inputs it held are retried there (``max_task_retries``); an input whose worker
died on it every time fails alone, naming it. An atomic write cut short leaves only a hidden temporary file,
which the driver removes once the batch is over."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flowsr_cli.engine.batch import FAILED, BatchObserver, BatchOptions, BatchRunner, Outcome, Work
from flowsr_cli.engine.cluster import ClusterRequest
from flowsr_cli.io.atomic import remove_leftovers

if TYPE_CHECKING:
    from flowsr_cli.io.outputs import Job

TASK_RETRIES = 2
"""How many more times an input is tried after its worker died running it (each time on the restarted worker)."""
QUEUED_PER_WORKER = 2
"""Inputs handed to each worker at once: the one it runs and the next."""
STOP_TIMEOUT = 10.0
"""Seconds to wait, when a batch stops early (Ctrl-C, an error), for its killed workers' inputs to fail."""
LOCK_PATIENCE = 2.0
"""Seconds, after that, for the locks of the temporary files those workers held to be released."""


class _NoteCollector:
    """A worker's observer: keeps the notes for the driver (outcomes go back as results)."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def image_started(self, job: Job) -> None:
        """Nothing: the driver counts finished inputs."""

    def image_progress(self, fraction: float) -> None:
        """Nothing: the driver's bar counts finished inputs."""

    def image_finished(self, outcome: Outcome) -> None:
        """Nothing: the outcome goes back to the driver as the task's result."""

    def note(self, message: str) -> None:
        """Keep ``message`` for the driver."""
        self.notes.append(message)


class BatchWorker:
    """One worker of a batch (a Ray actor): builds the work with ``make_work`` once, on its first input (again
    after a restart), and runs inputs with it."""

    def __init__(self, options: BatchOptions, make_work: Callable[[], Work]) -> None:
        self._observer = _NoteCollector()
        self._runner = BatchRunner(options, self._observer)
        self._make_work: Callable[[], Work] | None = make_work

    def load(self) -> list[str]:
        """Build the work (load the model) if not yet done; returns the notes said since the last call."""
        if self._make_work is not None:
            self._runner.start(self._make_work)
            self._make_work = None
        return self._take_notes()

    def run(self, jobs: list[Job]) -> tuple[list[Outcome], list[str]]:
        """The outcomes of one input's jobs, and the notes said meanwhile."""
        self.load()
        return self._runner.run_input(jobs), self._take_notes()

    def _take_notes(self) -> list[str]:
        notes, self._observer.notes = self._observer.notes, []
        return notes


def run_on_cluster(
    runner: BatchRunner, make_work: Callable[[], Work], request: ClusterRequest, workers: int, observer: BatchObserver
) -> list[Outcome]:
    """Run the inputs :meth:`BatchRunner.settle` left on ``workers`` actors of the connected cluster, each
    reserving the CPUs and GPUs ``request`` gives; ``observer`` hears of each outcome and of each note once."""
    import ray

    pending = runner.pending_inputs()
    if not pending:
        return []
    groups = deque(pending)
    actor_class = ray.remote(BatchWorker).options(
        num_cpus=request.cpus_per_worker,
        num_gpus=request.gpus_per_worker,
        max_restarts=-1,
        max_task_retries=TASK_RETRIES,
    )
    actors = [actor_class.remote(runner.options, make_work) for _ in range(min(workers, len(groups)))]
    said: set[str] = set()

    def tell(notes: list[str]) -> None:
        for note in notes:
            if note not in said:
                said.add(note)
                observer.note(note)

    in_flight: dict[Any, tuple[Any, list[Job]]] = {}

    def hand_next(actor: Any) -> None:
        if groups:
            jobs = groups.popleft()
            in_flight[actor.run.remote(jobs)] = (actor, jobs)

    try:
        for notes in _results(ray, [actor.load.remote() for actor in actors]):
            tell(notes)
        for _ in range(QUEUED_PER_WORKER):
            for actor in actors:
                hand_next(actor)
        outcomes: list[Outcome] = []
        while in_flight:
            (ready,), _ = ray.wait(list(in_flight), num_returns=1)
            actor, jobs = in_flight.pop(ready)
            finished, notes = _input_result(ray, ready, jobs)
            tell(notes)
            for outcome in finished:
                observer.image_finished(outcome)
            outcomes.extend(finished)
            hand_next(actor)
        return outcomes
    finally:
        for actor in actors:
            ray.kill(actor)
        # a worker killed mid-write holds its temporary file's lock until its process is gone: wait for its inputs
        # to fail, then for the locks to go
        if in_flight:
            ray.wait(list(in_flight), num_returns=len(in_flight), timeout=STOP_TIMEOUT)
        outputs = [job.output for jobs in pending for job in jobs if job.output is not None]
        remove_leftovers(outputs, patience=LOCK_PATIENCE if in_flight else 0.0)


def _results(ray: Any, refs: list[Any]) -> list[Any]:
    """``ray.get(refs)``, with an error raised in a worker re-raised as itself (so a FlowsrError is one line)."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, BaseException):
            raise exc.cause from None
        raise


def _input_result(ray: Any, ref: Any, jobs: list[Job]) -> tuple[list[Outcome], list[str]]:
    """What a worker made of one input; if its worker died on it every time it was tried, each job fails with
    that reason."""
    try:
        (result,) = _results(ray, [ref])
        return result
    except ray.exceptions.RayActorError:
        tries = TASK_RETRIES + 1
        reason = f"the worker running it died {tries} times (killed, out of memory, or its node was lost)"
        return [Outcome(job, FAILED, reason) for job in jobs], []
