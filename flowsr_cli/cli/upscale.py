"""`flowsr upscale`: parse the request, plan the jobs, run them, report."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from flowsr_cli.config import PRIOR_CHOICES, Settings, choice_flag, flag_parser, integer_flag, number_flag
from flowsr_cli.console import debug_enabled
from flowsr_cli.errors import FlowsrError, ImageError, UsageError

if TYPE_CHECKING:
    from flowsr_cli.engine.upscaler import Upscaler
    from flowsr_cli.families.upscalers import UpscalerRequest
    from flowsr_cli.io.outputs import Job
    from flowsr_cli.io.sizing import SizeRequest


_OUTPUT = "Output"
_MODEL = "Model"
_BATCH = "Batch"


def _prepare_output_folder(folder: Path | None) -> None:
    """Create ``-o DIR`` and make sure it is writable before any work starts."""
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"-o {folder}: cannot create the folder: {exc.strerror or exc}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"-o {folder}: the folder is not writable")


def _check_samples(samples: int, max_samples: int) -> None:
    """Refuse more samples than the max_samples setting allows, before any job is planned."""
    if samples > max_samples:
        raise UsageError(
            f"--samples {samples}: more than the max_samples limit of {max_samples:,} "
            "(raise it with `flowsr config set max_samples N` or FLOWSR_MAX_SAMPLES)"
        )


def _will_run(job: Job, overwrite: bool) -> bool:
    """True if the batch will run this job (it is not failed or skipped before it starts)."""
    if job.problem is not None or job.skip is not None:
        return False
    return overwrite or job.output is None or not job.output.exists()


def _input_problem(path: Path, request: SizeRequest, max_pixels: int) -> str | None:
    """Why the input file cannot be done, as far as its type, size and header show; None if it may be."""
    from flowsr_cli.io.file_checks import image_size

    try:
        size = image_size(path, max_pixels=max_pixels)
        if size is not None:
            request.target(size)
    except ImageError as exc:
        return str(exc)
    return None


def _check_inputs(jobs: list[Job], request: SizeRequest, max_pixels: int, overwrite: bool) -> list[Job]:
    """Fail each job whose input the header shows cannot be done (not a regular file, not an image, too many
    pixels in or out) before any work starts, so the model loads only if some input can be done."""
    problems: dict[Path, str | None] = {}

    def checked(job: Job) -> Job:
        path = job.input.path
        if path is None or not _will_run(job, overwrite):
            return job
        if path not in problems:
            problems[path] = _input_problem(path, request, max_pixels)
        return replace(job, problem=problems[path])

    return [checked(job) for job in jobs]


def upscale(
    ctx: typer.Context,
    inputs: list[str] = typer.Argument(
        ..., help="Image files, folders, glob patterns, or - for stdin.", show_default=False
    ),
    output: str | None = typer.Option(
        None,
        "--output",
        "-o",
        help="Output file (one input), folder (several), or - for stdout.",
        rich_help_panel=_OUTPUT,
    ),
    scale: float | None = typer.Option(
        None,
        "--scale",
        "-s",
        parser=flag_parser("--scale", float, "a number >= 1"),
        help="Scale factor, any number >= 1 (e.g. 3.5).",
    ),
    width: int | None = typer.Option(
        None, "--width", parser=integer_flag("--width", 1), help="Output width in pixels; keeps the aspect ratio."
    ),
    height: int | None = typer.Option(
        None, "--height", parser=integer_flag("--height", 1), help="Output height in pixels; keeps the aspect ratio."
    ),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Model name or .safetensors path (config: model).", rich_help_panel=_MODEL
    ),
    device: str | None = typer.Option(
        None, "--device", help="auto, cpu, cuda or cuda:N (config: device).", rich_help_panel=_MODEL
    ),
    precision: str | None = typer.Option(
        None,
        "--precision",
        help="auto, fp32, fp16 or bf16 for the encoder (the flow inverse stays fp32) (config: precision).",
        rich_help_panel=_MODEL,
    ),
    tile: str | None = typer.Option(
        None,
        "--tile",
        help="Tile side in input pixels: auto fits free memory, 0 = no tiling (config: tile).",
        rich_help_panel=_MODEL,
    ),
    tile_pad: str | None = typer.Option(
        None,
        "--tile-pad",
        help="Context around tiles in input pixels; auto = the model's reach, 16 for SRFlow (config: tile_pad).",
        rich_help_panel=_MODEL,
    ),
    prior: str | None = typer.Option(
        None,
        "--prior",
        parser=choice_flag("--prior", PRIOR_CHOICES),
        help="learned (deterministic; default for models that have one) or gaussian (z = T * N(0, I)).",
        rich_help_panel=_MODEL,
        show_default=False,
    ),
    temperature: float = typer.Option(
        0.5,
        "--temperature",
        "-t",
        parser=number_flag("--temperature", 0),
        help="Gaussian prior temperature T >= 0; 0 gives the mode-like, sharpest-PSNR output.",
        rich_help_panel=_MODEL,
    ),
    allow_resample: bool = typer.Option(
        False,
        "--allow-resample",
        help="Let a fixed-scale model (SRFlow: ×4) give any size: its own output, resized with bicubic.",
        rich_help_panel=_MODEL,
    ),
    seed: int = typer.Option(
        0,
        "--seed",
        parser=integer_flag("--seed"),
        help="Seed of the Gaussian prior (same seed, same image).",
        rich_help_panel=_MODEL,
    ),
    samples: int = typer.Option(
        1,
        "--samples",
        parser=integer_flag("--samples", 1),
        help="Write N >= 1 different samples per input (NAME_x3.5_s0.png, ...).",
        rich_help_panel=_MODEL,
    ),
    output_format: str | None = typer.Option(
        None, "--format", "-f", help="same, png, jpg, webp, tiff or bmp (config: format).", rich_help_panel=_OUTPUT
    ),
    suffix: str | None = typer.Option(
        None,
        "--suffix",
        help="Added to output names; {size} becomes x3.5, w1920 or h1080 (config: suffix).",
        rich_help_panel=_OUTPUT,
    ),
    quality: str | None = typer.Option(
        None,
        "--quality",
        metavar="<int>",
        help="JPEG/WebP quality 1-100 (config: quality).",
        rich_help_panel=_OUTPUT,
    ),
    strip_metadata: bool | None = typer.Option(
        None,
        "--strip-metadata/--keep-metadata",
        help="Drop or keep ICC, EXIF, DPI and text (config: strip_metadata).",
        rich_help_panel=_OUTPUT,
        show_default=False,
    ),
    recursive: bool = typer.Option(
        False, "--recursive", "-r", help="Descend into sub-folders.", rich_help_panel=_BATCH
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite/--skip-existing",
        help="Replace existing outputs, or skip them (default).",
        rich_help_panel=_BATCH,
    ),
    shard: str | None = typer.Option(
        None,
        "--shard",
        help="Process only slice I of N of the sorted inputs (I/N, 0 <= I < N).",
        rich_help_panel=_BATCH,
    ),
    offline: bool | None = typer.Option(
        None,
        "--offline/--online",
        help="Never use the network (a missing model is reported, not downloaded) (config: offline).",
        rich_help_panel=_MODEL,
        show_default=False,
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="No progress or summary; errors still shown.", rich_help_panel=_BATCH
    ),
    json_lines: bool = typer.Option(
        False, "--json", help="Print one JSON object per image on stdout.", rich_help_panel=_BATCH
    ),
) -> None:
    """Upscale images: [bold]flowsr upscale photo.png --scale 3.5[/]

    Outputs go next to each input as NAME_x3.5.EXT unless -o says otherwise. Existing outputs are
    skipped, so an interrupted batch resumes by running the same command again. Exit code: 0 all
    done, 1 some inputs failed (the rest are written), 2 usage or configuration error.
    """
    from flowsr_cli.io.inputs import discover, parse_shard
    from flowsr_cli.io.outputs import OutputOptions, output_folder, plan_jobs, select_shard
    from flowsr_cli.io.sizing import SizeRequest

    settings = Settings(
        {
            "model": model,
            "device": device,
            "precision": precision,
            "tile": tile,
            "tile_pad": tile_pad,
            "offline": offline,
            "format": output_format,
            "suffix": suffix,
            "quality": quality,
            "strip_metadata": strip_metadata,
        }
    )
    settings.validate()
    _check_samples(samples, settings["max_samples"])
    request = SizeRequest.from_options(
        scale, width, height, samples=samples, max_output_pixels=settings["max_output_pixels"]
    )
    shard_slice = parse_shard(shard) if shard is not None else None
    if json_lines and output == "-":
        raise UsageError("--json writes to stdout, which -o - already uses for the image")
    discovery = discover(inputs, recursive)
    options = OutputOptions(output, settings["format"], settings["suffix"], request.label, samples)
    jobs = plan_jobs(discovery, options)
    if shard_slice is not None:
        jobs = select_shard(jobs, *shard_slice)
    if any(job.output is None for job in jobs):
        if json_lines:
            raise UsageError("--json writes to stdout, which the image output already uses; give -o FILE")
        if sys.stdout is not None and sys.stdout.isatty():
            raise UsageError("refusing to write image data to a terminal; redirect stdout or give -o FILE")
    if not jobs and not discovery.problems:
        raise FlowsrError("no input images found")
    _prepare_output_folder(output_folder(discovery, output))
    _run(
        _check_inputs(jobs, request, settings["max_pixels"], overwrite),
        discovery.problems,
        settings,
        request,
        prior=prior,
        temperature=temperature,
        allow_resample=allow_resample,
        seed=seed,
        samples=samples,
        overwrite=overwrite,
        quiet=quiet,
        json_lines=json_lines,
        debug=debug_enabled(ctx),
    )


def _upscaler_request(settings: Settings, prior: str | None, temperature: float) -> UpscalerRequest:
    from flowsr_cli.engine.bicubic import BICUBIC
    from flowsr_cli.families.upscalers import UpscalerRequest
    from flowsr_cli.hub.catalog import Hub

    return UpscalerRequest(
        model=settings["model"],
        device=settings["device"],
        precision=settings["precision"],
        tile=settings["tile"],
        tile_pad=settings["tile_pad"],
        prior=prior,
        temperature=temperature,
        hub=Hub(settings) if settings["model"] != BICUBIC else None,
    )


def _run(
    jobs: list[Job],
    problems: list[tuple[str, str]],
    settings: Settings,
    request: SizeRequest,
    *,
    prior: str | None,
    temperature: float,
    allow_resample: bool,
    seed: int,
    samples: int,
    overwrite: bool,
    quiet: bool,
    json_lines: bool,
    debug: bool,
) -> None:
    from flowsr_cli.cli.report import ConsoleReporter
    from flowsr_cli.engine.batch import FAILED, BatchOptions, BatchRunner

    batch_options = BatchOptions(
        request=request,
        overwrite=overwrite,
        quality=settings["quality"],
        strip_metadata=settings["strip_metadata"],
        max_pixels=settings["max_pixels"],
        seed=seed,
        debug=debug,
    )
    reporter = ConsoleReporter(len(jobs), quiet=quiet, json_lines=json_lines)
    for argument, reason in problems:
        reporter.report_problem(argument, reason)

    def make_upscaler() -> Upscaler:
        from flowsr_cli.engine.upscaler import ResampledUpscaler, fixed_scale, fixed_scale_error
        from flowsr_cli.families.upscalers import create_upscaler

        upscaler = create_upscaler(_upscaler_request(settings, prior, temperature))
        native = fixed_scale(upscaler)
        if native is not None and allow_resample:
            upscaler = ResampledUpscaler(upscaler, native)
        elif native is not None and request.scale not in (None, native):
            raise fixed_scale_error(upscaler.name, native)
        if samples > 1 and not upscaler.stochastic:
            raise UsageError(
                f"--samples {samples}: {upscaler.name} gives one output per input; sampling needs a flow model "
                "with --prior gaussian and --temperature > 0"
            )
        return upscaler

    with reporter:
        outcomes = BatchRunner(batch_options, make_upscaler, reporter).run(jobs)
    reporter.summary(outcomes, problems)
    if problems or any(outcome.status == FAILED for outcome in outcomes):
        raise typer.Exit(1)
