"""What the image-writing commands (`upscale`, `rescale down`, `rescale up`) share: their common flags, the checks
of a planned batch before any work, the model-file lookups they make without torch, and the run of the batch
itself (settle, check the model, report, work, summarise, exit code)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import typer

from flowsr_cli.config import BICUBIC, RAY, SETTINGS, flag_parser, integer_flag, number_flag
from flowsr_cli.engine.cluster import parse_address
from flowsr_cli.errors import FlowsrError, UsageError

if TYPE_CHECKING:
    from flowsr_cli.cli.report import ConsoleReporter
    from flowsr_cli.engine.batch import BatchRunner, Work
    from flowsr_cli.engine.cluster import ClusterRequest
    from flowsr_cli.hub.catalog import Hub
    from flowsr_cli.hub.manifest import ModelEntry
    from flowsr_cli.io.inputs import Discovery
    from flowsr_cli.io.outputs import Job

T = TypeVar("T")

OUTPUT_PANEL = "Output"
MODEL_PANEL = "Model"
BATCH_PANEL = "Batch"
CLUSTER_PANEL = "Cluster (--backend ray)"

INPUTS = typer.Argument(
    ..., help="Image files, folders, glob patterns, or - for stdin.", metavar="INPUT", show_default=False
)
OUTPUT = typer.Option(
    None,
    "--output",
    "-o",
    metavar="PATH",
    help="Output file (one input; its extension sets the format), folder (several), or - for stdout.",
    rich_help_panel=OUTPUT_PANEL,
)
DEVICE = typer.Option(
    SETTINGS["device"].default,
    "--device",
    metavar="DEVICE",
    help="auto, cpu, cuda or cuda:N (config: device).",
    rich_help_panel=MODEL_PANEL,
)
QUALITY = typer.Option(
    str(SETTINGS["quality"].default),
    "--quality",
    metavar="1-100",
    help="JPEG/WebP quality of lossy outputs (config: quality).",
    rich_help_panel=OUTPUT_PANEL,
)
STRIP_METADATA = typer.Option(
    None,
    "--strip-metadata/--keep-metadata",
    help="Drop or keep ICC, EXIF, DPI and text (config: strip_metadata); flowsr's own mark is always written.",
    rich_help_panel=OUTPUT_PANEL,
    show_default=False,
)
RECURSIVE = typer.Option(False, "--recursive", "-r", help="Descend into sub-folders.", rich_help_panel=BATCH_PANEL)
OVERWRITE = typer.Option(
    False,
    "--overwrite/--skip-existing",
    help="Replace flowsr's existing outputs, or skip those made with the same settings (default).",
    rich_help_panel=BATCH_PANEL,
)
OFFLINE = typer.Option(
    None,
    "--offline/--online",
    help="Never use the network (a missing model is reported, not downloaded) (config: offline).",
    rich_help_panel=MODEL_PANEL,
    show_default=False,
)
COMPILE = typer.Option(
    None,
    "--compile/--no-compile",
    help="torch.compile the parts of the model eager PyTorch runs slowly (LINF's Fourier features): faster for "
    "long batches, the first image waits for the compile; needs a C++ compiler on the CPU (config: compile).",
    rich_help_panel=MODEL_PANEL,
    show_default=False,
)
QUIET = typer.Option(
    False, "--quiet", "-q", help="No progress or summary; errors still shown.", rich_help_panel=BATCH_PANEL
)
JSON_LINES = typer.Option(
    False, "--json", help="Print one JSON object per image on stdout.", rich_help_panel=BATCH_PANEL
)
ADDRESS = typer.Option(
    None,
    "--address",
    parser=flag_parser("--address", parse_address, "auto, HOST:PORT or ray://HOST:PORT"),
    metavar="auto|HOST:PORT",
    help="With --backend ray: join this running Ray cluster (auto: the one this machine belongs to); without it, "
    "a cluster is started on this machine for the run.",
    rich_help_panel=CLUSTER_PANEL,
    show_default=False,
)
WORKERS = typer.Option(
    None,
    "--workers",
    parser=integer_flag("--workers", 1),
    metavar="N",
    help="With --backend ray: how many workers, each loading the model once.",
    rich_help_panel=CLUSTER_PANEL,
    show_default="as many as the cluster's CPUs (or GPUs) hold",
)
CPUS_PER_WORKER = typer.Option(
    None,
    "--cpus-per-worker",
    parser=number_flag("--cpus-per-worker", 0, exclusive=True),
    metavar="N",
    help="With --backend ray: CPUs each worker reserves (and its PyTorch threads).",
    rich_help_panel=CLUSTER_PANEL,
    show_default="1",
)
GPUS_PER_WORKER = typer.Option(
    None,
    "--gpus-per-worker",
    parser=number_flag("--gpus-per-worker", 0),
    metavar="N",
    help="With --backend ray: GPUs each worker reserves (0.5: two workers share one).",
    rich_help_panel=CLUSTER_PANEL,
    show_default="0",
)


def cluster_request(
    backend: str, address: str | None, workers: int | None, cpus: float | None, gpus: float | None
) -> ClusterRequest | None:
    """Where the batch runs: on a Ray cluster (its request) when ``backend`` is ray, else None (here). The
    cluster flags without ray are a UsageError, and so is ray without its extra installed."""
    from flowsr_cli.engine.cluster import ClusterRequest, require_ray

    if backend != RAY:
        flags = ("--address", address), ("--workers", workers), ("--cpus-per-worker", cpus), ("--gpus-per-worker", gpus)
        given = [flag for flag, value in flags if value is not None]
        if given:
            raise UsageError(f"{given[0]} applies to --backend ray only (the backend is {backend})")
        return None
    require_ray()
    return ClusterRequest(address, workers, 1.0 if cpus is None else cpus, 0.0 if gpus is None else gpus)


def given_flags(ctx: typer.Context) -> Callable[[T, str], T | None]:
    """``given(value, name)``: the value of the parameter ``name`` if the command line gave it, else None (a
    setting then comes from the environment, the config file or its default; the help shows the default)."""

    def given(value: T, name: str) -> T | None:
        source = ctx.get_parameter_source(name)  # an enum of the click that Typer bundles: compared by name
        return value if source is not None and source.name == "COMMANDLINE" else None

    return given


def prepare_output_folder(folder: Path | None) -> None:
    """Create ``-o DIR`` and make sure it is writable before any work starts."""
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"-o {folder}: cannot create the folder: {exc.strerror or exc}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"-o {folder}: the folder is not writable")


def check_planned(jobs: list[Job], discovery: Discovery, output: str | None, json_lines: bool) -> None:
    """The checks of a planned batch before any work: stdout is not shared by --json and images, nor written to a
    terminal; some input exists; the output folder (``-o``) exists and can be written."""
    from flowsr_cli.io.outputs import output_folder

    if json_lines and output == "-":
        raise UsageError("--json writes to stdout, which -o - already uses for the image")
    if any(job.output is None for job in jobs):
        if json_lines:
            raise UsageError("--json writes to stdout, which the image output already uses; give -o FILE")
        if sys.stdout is not None and sys.stdout.isatty():
            raise UsageError("refusing to write image data to a terminal; redirect stdout or give -o FILE")
    if not jobs and not discovery.problems:
        raise FlowsrError("no input images found")
    prepare_output_folder(output_folder(discovery, output))


def model_location(hub: Hub, model: str) -> tuple[ModelEntry | None, Path]:
    """The hub's entry for the (non-bicubic) ``model`` (None for a path) and where its file is or will be."""
    from flowsr_cli.hub.catalog import written_as_path

    entry = None if written_as_path(model) else hub.find(model)
    return entry, hub.local_path(entry) if entry is not None else Path(model).expanduser()


def model_sha256(hub: Hub, model: str) -> str | None:
    """The sha256 of the model file ``model`` names, when it is known without downloading: a named model's
    published or recorded one, else the file's own; None for bicubic and for a file not there (yet)."""
    if model == BICUBIC:
        return None
    entry, path = model_location(hub, model)
    if entry is not None and entry.sha256:
        return entry.sha256.lower()
    if not path.is_file():
        return None
    from flowsr_cli.hub.download import sha256_of

    return sha256_of(path)


def run_batch(
    jobs: list[Job],
    problems: list[tuple[str, str]],
    runner: BatchRunner,
    reporter: ConsoleReporter,
    prepare: Callable[[], Callable[[], Work]],
    cluster: ClusterRequest | None = None,
) -> None:
    """Settle the jobs that need no work; if some job needs it, ``prepare`` the model (its usage errors come
    before any report) into a factory of the batch's work; report the settled jobs and the arguments that named
    no image (``problems``), run the rest under the progress display (here, or on the workers of the ``cluster``
    asked for, each building the work itself), summarise, and exit 1 if anything failed."""
    from flowsr_cli.engine.batch import FAILED

    if cluster is not None and any(job.input.path is None or job.output is None for job in jobs):
        raise UsageError("--backend ray reads and writes files: stdin and stdout (-) run with --backend torch")
    make_work = prepare() if runner.settle(jobs) else None
    for argument, reason in problems:
        reporter.report_problem(argument, reason)
    if cluster is None or make_work is None:
        settled = runner.start(make_work)
        with reporter:
            outcomes = [*settled, *runner.run()]
    else:
        from flowsr_cli.engine.cluster import connected
        from flowsr_cli.engine.ray_batch import run_on_cluster

        with connected(cluster) as workers:
            settled = runner.start(None)
            with reporter:
                outcomes = [*settled, *run_on_cluster(runner, make_work, cluster, workers, reporter)]
    reporter.summary(outcomes, problems)
    if problems or any(outcome.status == FAILED for outcome in outcomes):
        raise typer.Exit(1)
