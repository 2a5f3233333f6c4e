"""`flowsr upscale`: parse the request, plan the jobs, check everything that can be checked before the model
loads, run the jobs, report."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from flowsr_cli.cli.batch_common import (
    ADDRESS,
    BATCH_PANEL,
    COMPILE,
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
    model_location,
    model_sha256,
    run_batch,
)
from flowsr_cli.config import (
    BICUBIC,
    PRIOR_CHOICES,
    SETTINGS,
    Settings,
    choice_flag,
    consistency_default,
    flag_parser,
    integer_flag,
    model_backend,
    number_flag,
)
from flowsr_cli.console import debug_enabled
from flowsr_cli.errors import UsageError
from flowsr_cli.io.provenance import DEFAULT_SEED, DEFAULT_TEMPERATURE, RunSettings

if TYPE_CHECKING:
    from flowsr_cli.cli.report import ConsoleReporter
    from flowsr_cli.engine.batch import UpscaleWork
    from flowsr_cli.engine.cluster import ClusterRequest
    from flowsr_cli.engine.upscaler import Upscaler
    from flowsr_cli.families.upscalers import PreparedModel, UpscalerRequest
    from flowsr_cli.hub.catalog import Hub
    from flowsr_cli.io.outputs import Job
    from flowsr_cli.io.sizing import SizeRequest


EPILOG = """Examples:

flowsr upscale photo.png -s 3.5               # photo_x3.5.png (linf-lp)
flowsr upscale photos/ -s 2 -o big/           # a folder; rerun to resume
flowsr upscale photo.png -s 4 -m linf -t 0.8  # photo_x4_linf_t0.8.png
flowsr upscale 'scans/*.tif' -s 4 -f png      # a quoted glob; PNG outputs
flowsr upscale - -s 2 < in.png > out.png      # stdin to stdout"""
"""The examples at the end of `flowsr upscale --help` (registered with the command in ``cli/__init__.py``)."""


def _check_samples(samples: int, max_samples: int) -> None:
    """Refuse more samples than the max_samples setting allows, before any job is planned."""
    if samples > max_samples:
        raise UsageError(
            f"--samples {samples}: more than the max_samples limit of {max_samples:,} "
            "(raise it with `flowsr config set max_samples N` or FLOWSR_MAX_SAMPLES)"
        )


_MAX_MODEL_HEADER = 100_000_000
"""The longest safetensors header read for its metadata (safetensors' own limit)."""


def _model_metadata(path: Path) -> dict[str, object] | None:
    """A model file's metadata strings, read without torch: a safetensors file starts with its header's length
    (8 bytes) and the header, a JSON object whose ``__metadata__`` holds them. None when the file is not
    there or not readable so (loading it reports why)."""
    try:
        with path.open("rb") as stream:
            (length,) = struct.unpack("<Q", stream.read(8))
            header = json.loads(stream.read(length)) if length <= _MAX_MODEL_HEADER else None
    except (OSError, ValueError, RecursionError, struct.error):
        return None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else None


def _resolved_consistency(hub: Hub, model: str, choice: str) -> str | None:
    """``on`` or ``off``: the ``consistency`` setting, with ``auto`` resolved by the model file's metadata
    (:func:`~flowsr_cli.config.consistency_default`); None when that file is not here to read yet."""
    if choice != "auto":
        return choice
    if model == BICUBIC:
        return _on_off(consistency_default(None))
    metadata = _model_metadata(model_location(hub, model)[1])
    return None if metadata is None else _on_off(consistency_default(metadata))


def _default_temperature(hub: Hub, model: str, temperature: float | None) -> float | None:
    """The temperature ``model`` samples at unless told, where the run needs it before the model is prepared:
    0.5 for bicubic; with ``-t`` (``temperature``; the output name says whether it differs from the default), the
    default of the network the file's header names (looking it up imports torch). None otherwise, so that a rerun
    without -t stays light (the default is resolved when a job needs the model), and when the file is not here
    yet or its header names no network flowsr knows (loading it reports why)."""
    if model == BICUBIC:
        return DEFAULT_TEMPERATURE
    if temperature is None:
        return None
    name = _spec_name(_model_metadata(model_location(hub, model)[1]))
    if name is None:
        return None
    from flowsr_cli.families.registry import ModelSpecError
    from flowsr_cli.families.upscalers import default_temperature

    try:
        return default_temperature(name)
    except ModelSpecError:
        return None


def _spec_name(metadata: dict[str, object] | None) -> str | None:
    """The network name of a model file's spec (a JSON string in its metadata), or None."""
    try:
        spec = json.loads(str(metadata["spec"])) if metadata is not None and "spec" in metadata else None
    except (ValueError, RecursionError):
        return None
    name = spec.get("name") if isinstance(spec, dict) else None
    return name if isinstance(name, str) else None


def _on_off(value: bool) -> str:
    return "on" if value else "off"


def _consistency_tag(choice: str, default: str) -> str:
    """What a default output name adds for a ``--consistency`` other than the configured one (``auto``
    unless set): ``_consistency-on`` or ``_consistency-off``. By the choice, not by what ``auto`` resolves
    to, so that a name never depends on whether the model's file is here yet."""
    return "" if choice == default else f"_consistency-{choice}"


def _check_model_named(hub: Hub, model: str) -> None:
    """Refuse a ``--model`` that names no model and no file, without importing torch (so at once)."""
    from flowsr_cli.hub.catalog import unknown_model, written_as_path

    if model == BICUBIC:
        return
    if written_as_path(model):
        if not Path(model).expanduser().is_file():
            raise UsageError(f"model file {model}: not found")
    elif hub.find(model) is None and not Path(model).is_file():
        raise unknown_model(model, hub)


def _ignored_flags(
    prepared: PreparedModel, run: RunSettings, temperature: float | None, seed: int | None
) -> str | None:
    """A note naming the sampling flags given that the model does not use, or None."""
    flags = [flag for flag, value in (("--temperature", temperature), ("--seed", seed)) if value is not None]
    if prepared.path is None and run.prior == "gaussian":
        flags.insert(0, "--prior gaussian")
    verb = "is" if len(flags) == 1 else "are"
    if prepared.path is None and flags:
        return f"bicubic does not sample: {' and '.join(flags)} {verb} ignored"
    if prepared.learned_prior and flags:
        return (
            f"{run.model} runs its learned prior, which is deterministic: {' and '.join(flags)} {verb} ignored "
            "(add --prior gaussian to sample its flow)"
        )
    if prepared.gaussian and prepared.temperature == 0 and seed is not None:
        return "at temperature 0 the output is deterministic: --seed is ignored"
    return None


def upscale(
    ctx: typer.Context,
    inputs: list[str] = INPUTS,
    output: str | None = OUTPUT,
    scale: float | None = typer.Option(
        None,
        "--scale",
        "-s",
        parser=flag_parser("--scale", float, "a number >= 1"),
        metavar="FLOAT",
        help="Scale factor, any number >= 1 (e.g. 3.5).",
    ),
    width: int | None = typer.Option(
        None,
        "--width",
        parser=integer_flag("--width", 1),
        metavar="PIXELS",
        help="Output width in pixels; keeps the aspect ratio.",
    ),
    height: int | None = typer.Option(
        None,
        "--height",
        parser=integer_flag("--height", 1),
        metavar="PIXELS",
        help="Output height in pixels; keeps the aspect ratio.",
    ),
    model: str = typer.Option(
        SETTINGS["model"].default,
        "--model",
        "-m",
        metavar="NAME|FILE",
        help="A model name (flowsr models list), bicubic, or a .safetensors file (config: model).",
        rich_help_panel=MODEL_PANEL,
    ),
    device: str = DEVICE,
    precision: str = typer.Option(
        SETTINGS["precision"].default,
        "--precision",
        metavar="PRECISION",
        help="auto (fp16 on CUDA, fp32 on the CPU), fp32, fp16 or bf16 for the encoder, the conditioning network "
        "and the learned prior; the flow stays fp32 (config: precision).",
        rich_help_panel=MODEL_PANEL,
    ),
    backend: str = typer.Option(
        SETTINGS["backend"].default,
        "--backend",
        metavar="torch|onnx|ray",
        help="What runs the model: torch; onnx (its plain networks in ONNX Runtime; pip install 'flowsr\\[onnx]'; "
        "without it PyTorch runs, with a note); or ray (the batch on a Ray cluster's workers, with PyTorch; "
        "pip install 'flowsr\\[ray]') (config: backend).",
        rich_help_panel=MODEL_PANEL,
    ),
    tile: str = typer.Option(
        SETTINGS["tile"].default,
        "--tile",
        metavar="auto|N",
        help="Tile side in input pixels: auto fits free memory, 0 = no tiling (config: tile).",
        rich_help_panel=MODEL_PANEL,
    ),
    tile_pad: str = typer.Option(
        SETTINGS["tile_pad"].default,
        "--tile-pad",
        metavar="auto|N",
        help="Context around tiles in input pixels; auto = the model's reach, 16 for SRFlow and HCFlow (config: "
        "tile_pad).",
        rich_help_panel=MODEL_PANEL,
    ),
    prior: str | None = typer.Option(
        None,
        "--prior",
        parser=choice_flag("--prior", PRIOR_CHOICES),
        metavar="learned|gaussian",
        help="learned (deterministic; the default of models that have one, e.g. linf-lp) or gaussian "
        "(z = T * N(0, I); the default of the others, e.g. linf).",
        rich_help_panel=MODEL_PANEL,
        show_default=False,
    ),
    temperature: float | None = typer.Option(
        None,
        "--temperature",
        "-t",
        parser=number_flag("--temperature", 0),
        metavar="T",
        help="Temperature T >= 0 for --prior gaussian (0 gives the mode-like, highest-PSNR output); the learned "
        "prior (linf-lp's default) ignores it.",
        rich_help_panel=MODEL_PANEL,
        show_default="the model's: 0.5, HCFlow 0.9 as in its paper",
    ),
    allow_resample: bool = typer.Option(
        False,
        "--allow-resample",
        help="Let a fixed-scale model (SRFlow: ×4, HCFlow: ×4 or ×8) give any size: its own output, resized with "
        "bicubic.",
        rich_help_panel=MODEL_PANEL,
    ),
    consistency: str = typer.Option(
        SETTINGS["consistency"].default,
        "--consistency",
        metavar="auto|on|off",
        help="Back-project the output so that its MATLAB-bicubic shrink matches the input: on, off, or auto: on "
        "for models flowsr trained, off for bicubic and imported original checkpoints (config: consistency).",
        rich_help_panel=MODEL_PANEL,
    ),
    seed: int = typer.Option(
        DEFAULT_SEED,
        "--seed",
        parser=integer_flag("--seed"),
        metavar="N",
        help="Seed for --prior gaussian (same seed, same image); the learned prior ignores it.",
        rich_help_panel=MODEL_PANEL,
    ),
    samples: int = typer.Option(
        1,
        "--samples",
        parser=integer_flag("--samples", 1),
        metavar="N",
        help="Write N >= 1 different samples per input (NAME_x3.5_s0.png, ...); needs sampling (gaussian, T > 0).",
        rich_help_panel=MODEL_PANEL,
    ),
    output_format: str = typer.Option(
        SETTINGS["format"].default,
        "--format",
        "-f",
        metavar="FORMAT",
        help="same, png, jpg, webp, tiff or bmp (config: format).",
        rich_help_panel=OUTPUT_PANEL,
    ),
    suffix: str = typer.Option(
        SETTINGS["suffix"].default,
        "--suffix",
        metavar="TEXT",
        help="Added to output names instead of the default: {size} becomes x3.5, w1920 or h1080 (config: "
        "suffix). The default also names a model, prior, -t, --seed or --consistency other than the defaults: "
        "_x4_linf_t0.8.",
        rich_help_panel=OUTPUT_PANEL,
    ),
    quality: str = QUALITY,
    strip_metadata: bool | None = STRIP_METADATA,
    recursive: bool = RECURSIVE,
    overwrite: bool = OVERWRITE,
    shard: str | None = typer.Option(
        None,
        "--shard",
        metavar="I/N",
        help="Process only slice I of N of the sorted inputs (0 <= I < N).",
        rich_help_panel=BATCH_PANEL,
    ),
    address: str | None = ADDRESS,
    workers: int | None = WORKERS,
    cpus_per_worker: float | None = CPUS_PER_WORKER,
    gpus_per_worker: float | None = GPUS_PER_WORKER,
    offline: bool | None = OFFLINE,
    compile_parts: bool | None = COMPILE,
    quiet: bool = QUIET,
    json_lines: bool = JSON_LINES,
) -> None:
    """Upscale images: [bold]flowsr upscale photo.png --scale 3.5[/]

    Outputs go next to each input as NAME_x3.5.EXT unless -o says otherwise; a model or sampling settings
    other than the defaults add to the name (NAME_x4_linf_t0.8.EXT). Outputs of flowsr-trained models are
    back-projected onto the input (--consistency). Existing outputs made with the same settings are skipped,
    so an interrupted batch resumes by running the same command again; earlier outputs found in a folder are
    not upscaled again. Exit code: 0 all done, 1 some inputs failed (the rest are
    written), 2 usage or configuration error.
    """
    from flowsr_cli.hub.catalog import Hub
    from flowsr_cli.io.inputs import discover, parse_shard
    from flowsr_cli.io.outputs import OutputOptions, plan_jobs, select_shard, settings_suffix
    from flowsr_cli.io.sizing import SizeRequest

    given = given_flags(ctx)
    settings = Settings(
        {
            "model": given(model, "model"),
            "device": given(device, "device"),
            "precision": given(precision, "precision"),
            "backend": given(backend, "backend"),
            "tile": given(tile, "tile"),
            "tile_pad": given(tile_pad, "tile_pad"),
            "consistency": given(consistency, "consistency"),
            "offline": offline,
            "compile": compile_parts,
            "format": given(output_format, "output_format"),
            "suffix": given(suffix, "suffix"),
            "quality": given(quality, "quality"),
            "strip_metadata": strip_metadata,
        }
    )
    settings.validate()
    cluster = cluster_request(settings["backend"], address, workers, cpus_per_worker, gpus_per_worker)
    _check_samples(samples, settings["max_samples"])
    request = SizeRequest.from_options(
        scale, width, height, samples=samples, max_output_pixels=settings["max_output_pixels"]
    )
    shard_slice = parse_shard(shard) if shard is not None else None
    hub = Hub(settings)
    model_name, choice = settings["model"], settings["consistency"]
    default_temperature = _default_temperature(hub, model_name, temperature)
    run = RunSettings(
        model_name,
        model_sha256(hub, model_name),
        request.label,
        prior,
        temperature=default_temperature if temperature is None else temperature,
        seed=seed,
        consistency=_resolved_consistency(hub, model_name, choice),
        default_temperature=default_temperature,
    )
    name_suffix = settings["suffix"]
    if name_suffix == SETTINGS["suffix"].default:
        defaults = Settings()
        name_suffix += settings_suffix(run, defaults["model"]) + _consistency_tag(choice, defaults["consistency"])
    discovery = discover(inputs, recursive)
    options = OutputOptions(output, settings["format"], name_suffix, request.label, samples)
    jobs = plan_jobs(discovery, options)
    if shard_slice is not None:
        jobs = select_shard(jobs, *shard_slice)
    check_planned(jobs, discovery, output, json_lines)
    _run(
        jobs,
        discovery.problems,
        _RunChoices(settings, hub, request, run, temperature, given(seed, "seed"), allow_resample, samples),
        cluster,
        overwrite=overwrite,
        quiet=quiet,
        json_lines=json_lines,
        debug=debug_enabled(ctx),
    )


@dataclass(frozen=True)
class _RunChoices:
    """What a run was asked for beyond its jobs: the settings, the model, the size and how to sample."""

    settings: Settings
    hub: Hub
    request: SizeRequest
    run: RunSettings
    temperature: float | None
    """``-t`` as given (None: not given)."""
    seed: int | None
    """``--seed`` as given (None: not given)."""
    allow_resample: bool
    samples: int

    def upscaler_request(self) -> UpscalerRequest:
        """The model, device, tiling and sampling the upscaler is built for."""
        from flowsr_cli.families.upscalers import UpscalerRequest

        return UpscalerRequest(
            model=self.run.model,
            device=self.settings["device"],
            precision=self.settings["precision"],
            tile=self.settings["tile"],
            tile_pad=self.settings["tile_pad"],
            prior=self.run.prior,
            temperature=self.temperature,
            consistency=self.settings["consistency"],
            hub=self.hub,
            backend=model_backend(self.settings["backend"]),
            compile=self.settings["compile"],
            cache_dir=self.settings["cache_dir"],
        )


def _prepare_model(choices: _RunChoices, reporter: ConsoleReporter) -> PreparedModel:
    """Check the model before it loads: its name (before torch is imported), the device, its file and header
    (a fixed scale, a learned prior, whether it samples); notes the sampling flags it ignores."""
    _check_model_named(choices.hub, choices.run.model)
    from flowsr_cli.engine.upscaler import fixed_scale_error
    from flowsr_cli.families.upscalers import prepare_model

    prepared = prepare_model(choices.upscaler_request())
    native = prepared.fixed_scale
    if native is not None and not choices.allow_resample and choices.request.scale not in (None, native):
        raise fixed_scale_error(choices.run.model, native)
    if choices.samples > 1 and not prepared.stochastic:
        raise UsageError(
            f"--samples {choices.samples}: {choices.run.model} gives one output per input; sampling needs a flow "
            "model with --prior gaussian and --temperature > 0"
        )
    note = _ignored_flags(prepared, choices.run, choices.temperature, choices.seed)
    if note is not None:
        reporter.note(note)
    return prepared


def _load_work(prepared: PreparedModel, choices: _RunChoices) -> UpscaleWork:
    """The batch's work: the prepared model loaded (:func:`_load_upscaler`), enlarging to the size asked for."""
    from flowsr_cli.engine.batch import UpscaleWork

    return UpscaleWork(_load_upscaler(prepared, choices), choices.request)


def _load_upscaler(prepared: PreparedModel, choices: _RunChoices) -> Upscaler:
    """Load the prepared model; a fixed-scale model is resampled to any size under ``--allow-resample``."""
    from flowsr_cli.engine.upscaler import fixed_scale, fixed_scale_error
    from flowsr_cli.families.upscalers import load_upscaler

    upscaler = load_upscaler(prepared)
    native = fixed_scale(upscaler)
    if native is not None and choices.allow_resample:
        return _resampled(upscaler, native)
    if native is not None and choices.request.scale not in (None, native):
        raise fixed_scale_error(upscaler.name, native)
    return upscaler


def _resampled(upscaler: Upscaler, native: int) -> Upscaler:
    """``upscaler`` resampled from its ``native`` scale to any size; a consistency projection moves after the
    resampling, so that the output at the size asked for is the one that agrees with the input."""
    from flowsr_cli.engine.consistent import ConsistentUpscaler
    from flowsr_cli.engine.upscaler import ResampledUpscaler

    if isinstance(upscaler, ConsistentUpscaler):
        return ConsistentUpscaler(ResampledUpscaler(upscaler.inner, native), upscaler.iterations)
    return ResampledUpscaler(upscaler, native)


def _resolved_temperature(run: RunSettings, prepared: PreparedModel) -> RunSettings:
    """The run's settings with the temperature the prepared model samples at, and its default: the outputs'
    marks record them and the jobs still to run are compared with them."""
    return replace(run, temperature=prepared.temperature, default_temperature=prepared.default_temperature)


def _run(
    jobs: list[Job],
    problems: list[tuple[str, str]],
    choices: _RunChoices,
    cluster: ClusterRequest | None,
    *,
    overwrite: bool,
    quiet: bool,
    json_lines: bool,
    debug: bool,
) -> None:
    """Settle the jobs that need no work, check the model if some job needs it (usage errors come first),
    report the settled jobs, load the model, and run the rest under the progress display (here, or on the
    ``cluster``'s workers)."""
    from flowsr_cli.cli.report import ConsoleReporter
    from flowsr_cli.engine.batch import BatchOptions, BatchRunner

    settings = choices.settings
    batch_options = BatchOptions(
        request=choices.request,
        run=choices.run,
        overwrite=overwrite,
        quality=settings["quality"],
        strip_metadata=settings["strip_metadata"],
        max_pixels=settings["max_pixels"],
        debug=debug,
    )
    reporter = ConsoleReporter(len(jobs), quiet=quiet, json_lines=json_lines)
    runner = BatchRunner(batch_options, reporter)

    def prepare() -> Callable[[], UpscaleWork]:
        prepared = _prepare_model(choices, reporter)
        runner.resolve_consistency(_on_off(prepared.consistency))
        runner.options = replace(runner.options, run=_resolved_temperature(runner.options.run, prepared))
        return partial(_load_work, prepared, choices)

    run_batch(jobs, problems, runner, reporter, prepare, cluster)
