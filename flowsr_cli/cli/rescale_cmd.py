"""`flowsr rescale down` and `flowsr rescale up`: image rescaling with a model that makes the small image itself,
and later restores the full-size image from that exact small image (HCFlow's invertible rescaling).

Kept apart from `upscale`, as the inverse is not super-resolution: it restores only its model's own LRs. Both
commands follow `upscale`'s contract (inputs, output names, skip-existing, atomic writes, marks, --json, exit codes,
progress) through the same batch machinery; what each does to an image is its work in
:mod:`flowsr_cli.families.rescalers`. `flowsr rescale eval` (:mod:`flowsr_cli.cli.rescale_eval_cmd`) scores
rescaling models and the bicubic-down baselines on folders of HR images, as `flowsr eval` does SR.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import typer

from flowsr_cli.cli.batch_common import (
    ADDRESS,
    CPUS_PER_WORKER,
    DEVICE,
    GPUS_PER_WORKER,
    INPUTS,
    JSON_LINES,
    MODEL_PANEL,
    OFFLINE,
    OUTPUT,
    OUTPUT_PANEL,
    OVERWRITE,
    QUALITY,
    QUIET,
    RECURSIVE,
    STRIP_METADATA,
    WORKERS,
    check_planned,
    cluster_request,
    given_flags,
    model_sha256,
    run_batch,
)
from flowsr_cli.cli.rescale_eval_cmd import EVAL_EXAMPLES, eval_command
from flowsr_cli.cli.rescale_models import DEFAULT_RESCALER, SCALES, prepared_rescaler
from flowsr_cli.config import SETTINGS, Settings, choice_flag, flag_parser, integer_flag, number_flag
from flowsr_cli.console import (
    debug_enabled,
    report_warning,
)
from flowsr_cli.errors import UsageError
from flowsr_cli.io.provenance import DEFAULT_SEED
from flowsr_cli.io.rescale_mark import LOSSY_COST, MAX_SEED

if TYPE_CHECKING:
    from flowsr_cli.engine.batch import BatchOptions, Work
    from flowsr_cli.engine.cluster import ClusterRequest
    from flowsr_cli.engine.device import DeviceChoice
    from flowsr_cli.families.rescalers import PreparedRescaler
    from flowsr_cli.io.outputs import Job, OutputOptions, Skip
    from flowsr_cli.io.provenance import MarkedRun

T = TypeVar("T")


EXAMPLES = """[bold]Examples[/]

flowsr rescale down photo.png -s 4       # photo_lr4.png, 1/4 of each side
flowsr rescale up photo_lr4.png          # photo_lr4_up.png, full size
flowsr rescale down photos/ -s 2 -o lr/  # a folder; reruns resume
flowsr rescale up lr/ -o restored/       # every LR in lr/
flowsr rescale eval Set5 -s 4            # the round trip's PSNR-Y/SSIM/LPIPS against the baselines"""

rescale_app = typer.Typer(
    help="Image rescaling: a model shrinks each image itself (rescale down), and later restores the full-size "
    "image from that exact small image (rescale up). Only the model's own, unedited, losslessly stored LRs come "
    "back: it is not super-resolution. rescale eval scores the round trip on folders of photos.",
    epilog=EXAMPLES,
    no_args_is_help=True,
    rich_markup_mode="rich",
)


def _scale(raw: object) -> int:
    if str(raw) not in {str(scale) for scale in SCALES}:
        raise ValueError(raw)
    return int(str(raw))


def _suffix_option(size: str) -> typer.models.OptionInfo:
    """``--suffix``, whose ``{size}`` is ``size`` in a command's output names."""
    return typer.Option(
        SETTINGS["suffix"].default,
        "--suffix",
        metavar="TEXT",
        help=f"Added to output names: {{size}} becomes {size} (config: suffix).",
        rich_help_panel=OUTPUT_PANEL,
    )


BACKEND = typer.Option(
    SETTINGS["backend"].default,
    "--backend",
    metavar="torch|ray",
    help="Where the batch runs: torch (here), or ray (on a Ray cluster's workers; pip install 'flowsr\\[ray]'). "
    "Rescaling models run with PyTorch; onnx runs here too (config: backend).",
    rich_help_panel=MODEL_PANEL,
)


@rescale_app.command("down", no_args_is_help=True)
def down_command(
    ctx: typer.Context,
    inputs: list[str] = INPUTS,
    output: str | None = OUTPUT,
    scale: int = typer.Option(
        ...,
        "--scale",
        "-s",
        parser=flag_parser("--scale", _scale, "2 or 4"),
        metavar="2|4",
        help="How many times smaller each side of the LR is.",
        show_default=False,
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        metavar="NAME|FILE",
        help="An image rescaling model (flowsr models list) or its .safetensors file.",
        rich_help_panel=MODEL_PANEL,
        show_default="hcflow-rescale-x2 or -x4, by --scale",
    ),
    seed: int = typer.Option(
        DEFAULT_SEED,
        "--seed",
        parser=integer_flag("--seed", 0, MAX_SEED),
        metavar="N",
        help="Seed recorded in each LR: `rescale up` draws its latents from it.",
        rich_help_panel=MODEL_PANEL,
    ),
    device: str = DEVICE,
    output_format: str | None = typer.Option(
        None,
        "--format",
        "-f",
        parser=choice_flag("--format", ("png", "webp", "tiff", "jpg")),
        metavar="FORMAT",
        help="png, webp or tiff (all lossless), or jpg with --allow-lossy.",
        rich_help_panel=OUTPUT_PANEL,
        show_default="-o's extension, else png",
    ),
    allow_lossy: bool = typer.Option(
        False,
        "--allow-lossy",
        help="Let the LR be a JPEG, which changes its pixels: `rescale up` then needs --force and restores less "
        "than plain bicubic would.",
        rich_help_panel=OUTPUT_PANEL,
    ),
    suffix: str = _suffix_option("lr2 or lr4"),
    quality: str = QUALITY,
    strip_metadata: bool | None = STRIP_METADATA,
    recursive: bool = RECURSIVE,
    overwrite: bool = OVERWRITE,
    backend: str = BACKEND,
    address: str | None = ADDRESS,
    workers: int | None = WORKERS,
    cpus_per_worker: float | None = CPUS_PER_WORKER,
    gpus_per_worker: float | None = GPUS_PER_WORKER,
    offline: bool | None = OFFLINE,
    quiet: bool = QUIET,
    json_lines: bool = JSON_LINES,
) -> None:
    """Shrink images with a rescaling model: [bold]flowsr rescale down photo.png --scale 4[/]

    Each LR is the model's own 8-bit image, written next to its input as NAME_lr4.png (lossless PNG, or WebP)
    unless -o says otherwise. Its flowsr chunk records the model and its sha256, the scale, the original size and
    the padding that made it a multiple of the scale (mirrored in, cropped again by `rescale up`), the seed and a
    hash of the LR's pixels. Greyscale images go through the model as RGB (the LR is RGB) and come back grey;
    16-bit images get an 8-bit LR and come back at 16 bits; alpha is averaged down apart from the model. The LR
    does not depend on tiling or memory: the model runs in fixed blocks. Existing outputs made with the same
    settings are skipped. Exit code: 0 all done, 1 some inputs failed (the rest are written), 2 usage or
    configuration error.
    """
    from flowsr_cli.hub.catalog import Hub
    from flowsr_cli.io.outputs import OutputOptions
    from flowsr_cli.io.rescale_mark import DOWN, RescaleSettings

    given = given_flags(ctx)
    settings = _settings(
        given,
        device,
        quality,
        strip_metadata,
        offline,
        suffix=given(suffix, "suffix"),
        backend=given(backend, "backend"),
    )
    cluster = cluster_request(settings["backend"], address, workers, cpus_per_worker, gpus_per_worker)
    hub = Hub(settings)
    name = model or DEFAULT_RESCALER.format(scale=scale)
    run = RescaleSettings(DOWN, name, model_sha256(hub, name), scale, seed)
    fmt = _lr_format(output_format, output)
    naming = OutputOptions(output, fmt, settings["suffix"], f"lr{scale}", verb="rescale")
    jobs, problems = _plan(inputs, naming, recursive, json_lines)
    _check_lr_formats(jobs, allow_lossy)

    def check() -> tuple[PreparedRescaler, DeviceChoice]:
        return prepared_rescaler(hub, name, scale=scale), _device(settings)

    def make_work(checked: tuple[PreparedRescaler, DeviceChoice]) -> Work:
        from flowsr_cli.families.rescalers import DownWork, load_rescaler

        prepared, choice = checked
        notes = [choice.note] if choice.note else []
        rescaler = load_rescaler(prepared, choice.device, "auto", "auto", notes)
        return DownWork(rescaler, name, run.model_sha256 or model_sha256(hub, name), seed)

    options = _batch_options(settings, run, overwrite, ctx, lossless=True)
    _run_batch(
        jobs, problems, options, check, make_work, cluster, done="downscaled", quiet=quiet, json_lines=json_lines
    )


@rescale_app.command("up", no_args_is_help=True)
def up_command(
    ctx: typer.Context,
    inputs: list[str] = INPUTS,
    output: str | None = OUTPUT,
    model: str | None = typer.Option(
        None,
        "--model",
        "-m",
        metavar="NAME|FILE",
        help="Restore with this model instead of the one each LR's chunk names (its sha256 must still match).",
        rich_help_panel=MODEL_PANEL,
        show_default="the LR's",
    ),
    temperature: float | None = typer.Option(
        None,
        "--temperature",
        "-t",
        parser=number_flag("--temperature", 0),
        metavar="T",
        help="Heat of the latents the inverse draws (0: their means, deterministic).",
        rich_help_panel=MODEL_PANEL,
        show_default="the LR's: 1 for HCFlow, as in its paper",
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Restore LRs that cannot come back well (no chunk, changed pixels, a lossy file, another model), "
        "warning what suffers.",
        rich_help_panel=MODEL_PANEL,
    ),
    device: str = DEVICE,
    tile: str = typer.Option(
        SETTINGS["tile"].default,
        "--tile",
        metavar="auto|N",
        help="Tile side in LR pixels: auto fits free memory, 0 = no tiling (config: tile).",
        rich_help_panel=MODEL_PANEL,
    ),
    tile_pad: str = typer.Option(
        SETTINGS["tile_pad"].default,
        "--tile-pad",
        metavar="auto|N",
        help="Context around tiles in LR pixels; auto = the model's reach, 24 for HCFlow (config: tile_pad).",
        rich_help_panel=MODEL_PANEL,
    ),
    output_format: str = typer.Option(
        SETTINGS["format"].default,
        "--format",
        "-f",
        metavar="FORMAT",
        help="same (the LR's), png, jpg, webp, tiff or bmp (config: format).",
        rich_help_panel=OUTPUT_PANEL,
    ),
    suffix: str = _suffix_option("up"),
    quality: str = QUALITY,
    strip_metadata: bool | None = STRIP_METADATA,
    recursive: bool = RECURSIVE,
    overwrite: bool = OVERWRITE,
    backend: str = BACKEND,
    address: str | None = ADDRESS,
    workers: int | None = WORKERS,
    cpus_per_worker: float | None = CPUS_PER_WORKER,
    gpus_per_worker: float | None = GPUS_PER_WORKER,
    offline: bool | None = OFFLINE,
    quiet: bool = QUIET,
    json_lines: bool = JSON_LINES,
) -> None:
    """Restore images from the LRs `rescale down` made: [bold]flowsr rescale up photo_lr4.png[/]

    Each LR's flowsr chunk names the model that made it (its sha256 is checked), the seed and the original size:
    the restored image is written next to the LR as NAME_up.png (the LR's format) unless -o says otherwise,
    cropped to the original size, greyscale and bit depth. An LR without the chunk, whose pixels changed, stored
    lossily (JPEG, lossy WebP) or made by another model is refused in one line; --force restores it anyway. In
    folders, only files with the chunk are read. Exit code: 0 all done, 1 some inputs failed (the rest are
    written), 2 usage or configuration error.
    """
    from flowsr_cli.hub.catalog import Hub
    from flowsr_cli.io.outputs import OutputOptions
    from flowsr_cli.io.rescale_mark import UP, RescaleSettings

    given = given_flags(ctx)
    settings = _settings(
        given,
        device,
        quality,
        strip_metadata,
        offline,
        tile=given(tile, "tile"),
        tile_pad=given(tile_pad, "tile_pad"),
        format=given(output_format, "output_format"),
        suffix=given(suffix, "suffix"),
        backend=given(backend, "backend"),
    )
    cluster = cluster_request(settings["backend"], address, workers, cpus_per_worker, gpus_per_worker)
    hub = Hub(settings)
    run = RescaleSettings(UP, temperature=temperature)
    naming = OutputOptions(
        output, settings["format"], settings["suffix"], "up", verb="restore", skip_found=_skip_unless_lr
    )
    jobs, problems = _plan(inputs, naming, recursive, json_lines)

    def check() -> DeviceChoice:
        if model is not None:
            prepared_rescaler(hub, model)
        return _device(settings)

    def make_work(choice: DeviceChoice) -> Work:
        from flowsr_cli.families.rescalers import UpWork

        return UpWork(
            hub,
            choice.device,
            settings["tile"],
            settings["tile_pad"],
            settings["max_output_pixels"],
            partial(model_sha256, hub),
            model,
            force,
            temperature,
            notes=[choice.note] if choice.note else [],
        )

    options = _batch_options(settings, run, overwrite, ctx)
    _run_batch(jobs, problems, options, check, make_work, cluster, done="restored", quiet=quiet, json_lines=json_lines)


def _settings(
    given: Callable[[str, str], str | None],
    device: str,
    quality: str,
    strip_metadata: bool | None,
    offline: bool | None,
    **flags: object,
) -> Settings:
    """The run's settings (flags given on the command line first), every one checked before work starts."""
    settings = Settings(
        {
            "device": given(device, "device"),
            "quality": given(quality, "quality"),
            "strip_metadata": strip_metadata,
            "offline": offline,
            **flags,
        }
    )
    settings.validate()
    return settings


def _plan(
    inputs: list[str], naming: OutputOptions, recursive: bool, json_lines: bool
) -> tuple[list[Job], list[tuple[str, str]]]:
    """The jobs of the inputs, named as ``naming`` says, and the arguments that named no image, after the checks
    `upscale` makes (:func:`~flowsr_cli.cli.batch_common.check_planned`)."""
    from flowsr_cli.io.inputs import discover
    from flowsr_cli.io.outputs import plan_jobs

    discovery = discover(inputs, recursive)
    jobs = plan_jobs(discovery, naming)
    check_planned(jobs, discovery, naming.output, json_lines)
    return jobs, discovery.problems


def _lr_format(requested: str | None, output: str | None) -> str:
    """The LR's format: ``--format``'s, else the extension of the file ``-o`` names, else PNG."""
    from flowsr_cli.io.formats import format_from_suffix

    if requested is not None:
        return "jpeg" if requested == "jpg" else requested
    return (format_from_suffix(output) if output is not None else None) or "png"


def _check_lr_formats(jobs: list[Job], allow_lossy: bool) -> None:
    """Refuse LRs in formats that cannot hold them (BMP: no place for the mark) or, without ``allow_lossy``, that
    change their pixels (JPEG); with it, warn what a JPEG LR costs."""
    formats = {job.format for job in jobs}
    unusable = formats - {"png", "webp", "tiff", "jpeg", None}
    if unusable:
        raise UsageError(
            f"rescale down writes PNG, WebP or TIFF LRs (lossless, with the mark `rescale up` reads), "
            f"not {', '.join(sorted(unusable))}"
        )
    if "jpeg" in formats and not allow_lossy:
        raise UsageError(
            "a JPEG LR loses what the model hid in its exact pixels (" + LOSSY_COST + "); write PNG, WebP or TIFF, "
            "or add --allow-lossy"
        )
    if "jpeg" in formats:
        report_warning(
            f"--allow-lossy: JPEG changes the LR's pixels, so `rescale up` refuses it without --force and restores "
            f"it badly even then ({LOSSY_COST})"
        )


def _skip_unless_lr(path: Path) -> Skip | None:
    """Why an input found in a folder or by a glob is not restored: it has no `rescale down` chunk."""
    from flowsr_cli.io.outputs import Skip
    from flowsr_cli.io.rescale_mark import is_rescaled_lr

    if is_rescaled_lr(path):
        return None
    return Skip(
        f"{path} has no flowsr rescale chunk (not an LR of `flowsr rescale down`); name it on the command line "
        "to restore it anyway",
        "inputs have no flowsr rescale chunk (not LRs of `flowsr rescale down`); name one on the command line "
        "to restore it anyway",
    )


def _device(settings: Settings) -> DeviceChoice:
    """The device the run's models run on (a note says when it is not what one might expect)."""
    from flowsr_cli.engine.device import resolve_device

    return resolve_device(settings["device"])


def _batch_options(
    settings: Settings, run: MarkedRun, overwrite: bool, ctx: typer.Context, lossless: bool = False
) -> BatchOptions:
    """What every job of a rescale run shares; its work decides the sizes."""
    from flowsr_cli.engine.batch import BatchOptions

    return BatchOptions(
        request=None,
        run=run,
        overwrite=overwrite,
        quality=settings["quality"],
        strip_metadata=settings["strip_metadata"],
        max_pixels=settings["max_pixels"],
        debug=debug_enabled(ctx),
        lossless=lossless,
    )


def _run_batch(
    jobs: list[Job],
    problems: list[tuple[str, str]],
    options: BatchOptions,
    check: Callable[[], T],
    make_work: Callable[[T], Work],
    cluster: ClusterRequest | None,
    *,
    done: str,
    quiet: bool,
    json_lines: bool,
) -> None:
    """As `upscale` runs its jobs (:func:`~flowsr_cli.cli.batch_common.run_batch`): ``check`` the model if some job
    needs it, then build the work from what the check returned (here, or on each of the ``cluster``'s workers)."""
    from flowsr_cli.cli.report import ConsoleReporter
    from flowsr_cli.engine.batch import BatchRunner

    reporter = ConsoleReporter(len(jobs), quiet=quiet, json_lines=json_lines, done=done)
    runner = BatchRunner(options, reporter)
    run_batch(jobs, problems, runner, reporter, lambda: partial(make_work, check()), cluster)


rescale_app.command("eval", no_args_is_help=True, epilog=EVAL_EXAMPLES)(eval_command)
