"""Where each input's result goes: output names, formats, and inputs that must not be touched."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path, PurePath

from flowsr_cli.errors import UsageError
from flowsr_cli.io.formats import FORMAT_EXTENSIONS, format_from_suffix
from flowsr_cli.io.inputs import STDIN_ARGUMENT, Discovery, InputFile
from flowsr_cli.io.provenance import (
    DEFAULT_SEED,
    DEFAULT_TEMPERATURE,
    RunSettings,
    is_flowsr_output,
    unmarked_file_problem,
)
from flowsr_cli.io.sizing import format_scale

FALLBACK_FORMAT = "png"
_MODEL_FILE_SUFFIX = ".safetensors"
_MAX_MODEL_TAG = 40
_NOT_IN_TAGS = re.compile(r"[^A-Za-z0-9._-]+")
_WRITABLE = "png, jpg, webp, tiff or bmp"
"""The formats flowsr writes, as --format takes them."""


@dataclass(frozen=True)
class Skip:
    """Why a job is skipped: ``reason`` says it of its file; ``many`` says it of several such files at once."""

    reason: str
    many: str


@dataclass(frozen=True)
class Job:
    """One input and what to do with it.

    ``output`` None means stdout; ``format`` None means the decoded input's own format.
    ``sample`` numbers the outputs when several samples of one input are written (None for one).
    ``skip`` or ``problem`` say why the input is not processed (skipped, or failed before starting).
    """

    input: InputFile
    output: Path | None
    format: str | None
    sample: int | None = None
    skip: Skip | None = None
    problem: str | None = None


def skip_flowsr_output(path: Path, verb: str = "upscale") -> Skip | None:
    """Why an input found in a folder or by a glob is skipped, as `upscale` decides: it carries flowsr's mark (an
    earlier output); None to read it. ``verb`` says what the command does to an input."""
    if not is_flowsr_output(path):
        return None
    return Skip(
        f"{path} is a flowsr output; name it on the command line to {verb} it again",
        f"inputs are flowsr outputs; name one on the command line to {verb} it again",
    )


@dataclass(frozen=True)
class OutputOptions:
    """The output-related command-line choices."""

    output: str | None
    format: str
    suffix: str
    label: str
    samples: int = 1
    verb: str = "upscale"
    """What the command does to an input, as messages say it (``it is not upscaled again``)."""
    skip_found: Callable[[Path], Skip | None] | None = None
    """Why an input found in a folder or by a glob (not named on the command line) is skipped, or None to read
    it; files named like another input's output are decided before. None: :func:`skip_flowsr_output`."""


def _writes_to_folder(discovery: Discovery, output: str | None) -> bool:
    if output is None or not discovery.single_file:
        return True
    return Path(output).is_dir() or output.endswith(("/", os.sep))


def output_folder(discovery: Discovery, output: str | None) -> Path | None:
    """The ``-o`` folder outputs go to; None when they go next to inputs, to one file, or to stdout."""
    if output in (None, STDIN_ARGUMENT) or not _writes_to_folder(discovery, output):
        return None
    return Path(output)


def _check_output_folder(output: str) -> None:
    path = Path(output)
    if path.exists() and not path.is_dir():
        raise UsageError(f"-o {output}: exists and is not a folder; several images need an output folder")
    if not path.exists() and format_from_suffix(path) is not None:
        raise UsageError(f"-o {output}: looks like a file name, but several images are upscaled; give a folder")


def settings_suffix(run: RunSettings, default_model: str) -> str:
    """What a default output name adds after its size so that runs with other settings get other names:
    ``_MODEL`` (a model other than ``default_model``: its name, or its file's stem), ``_gaussian`` (``--prior
    gaussian``; ``learned`` is the default of every model that has one), ``_tT`` (a temperature other than the
    model's default: 0.5 unless its network has another, e.g. HCFlow's 0.9; 0.5 while the model's file is not
    here to tell) and ``_seedN`` (a seed other than 0); empty for the default model with its defaults."""
    tags = [_model_tag(run.model)] if run.model != default_model else []
    if run.prior == "gaussian":
        tags.append("gaussian")
    default_temperature = DEFAULT_TEMPERATURE if run.default_temperature is None else run.default_temperature
    if run.temperature is not None and run.temperature != default_temperature:
        tags.append("t" + format_scale(run.temperature))
    if run.seed != DEFAULT_SEED:
        tags.append(f"seed{run.seed}")
    return "".join("_" + tag for tag in tags)


def _model_tag(model: str) -> str:
    """A model in file names: a name as it is, a file by its stem; other characters than letters, digits and
    ``._-`` become ``-``, and a long stem is cut (the outputs' marks tell such models apart)."""
    name = PurePath(model).name
    if name.lower().endswith(_MODEL_FILE_SUFFIX):
        name = name[: -len(_MODEL_FILE_SUFFIX)]
    return _NOT_IN_TAGS.sub("-", name).strip("-.")[:_MAX_MODEL_TAG] or "model"


def _file_format(path: Path, requested: str) -> str | None:
    named = format_from_suffix(path)
    if requested == "same":
        return named
    if named is not None and named != requested:
        raise UsageError(f"-o {path} has a .{path.suffix.lstrip('.')} name but --format is {requested}")
    return requested


def _target_format(target: Path, requested: str) -> str:
    """The format of the output file ``-o`` names: its extension's, or ``--format``'s; an extension that names
    no format flowsr writes (or none) needs ``--format``."""
    chosen = _file_format(target, requested)
    if chosen is None:
        problem = (
            f"{target.suffix} is not an image format flowsr writes"
            if target.suffix
            else "no extension names the format"
        )
        raise UsageError(
            f"-o {target}: {problem}; end the name with .png, .jpg, .webp, .tif or .bmp, or give --format ({_WRITABLE})"
        )
    return chosen


def _output_name(source: Path, requested: str, options: OutputOptions) -> tuple[str, str]:
    source_format = format_from_suffix(source)
    if requested == "same":
        output_format = source_format or FALLBACK_FORMAT
    else:
        output_format = requested
    extension = source.suffix if output_format == source_format else FORMAT_EXTENSIONS[output_format][0]
    return source.stem + options.suffix.format(size=options.label) + extension, output_format


def _plan_one(item: InputFile, options: OutputOptions, to_folder: bool) -> Job:
    if item.path is None:
        if options.output in (None, STDIN_ARGUMENT):
            return Job(item, None, None if options.format == "same" else options.format)
        target = Path(options.output)
        return Job(item, target, _target_format(target, options.format))
    if options.output == STDIN_ARGUMENT:
        return Job(item, None, _file_format(item.path, options.format) or FALLBACK_FORMAT)
    if not to_folder:
        target = Path(options.output)
        return Job(item, target, _target_format(target, options.format))
    name, output_format = _output_name(item.path, options.format, options)
    folder = item.path.parent
    if options.output is not None:
        folder = Path(options.output)
        if item.root is not None:
            folder = folder / item.path.parent.relative_to(item.root)
    return Job(item, folder / name, output_format)


def _with_samples(job: Job, samples: int) -> list[Job]:
    if samples == 1:
        return [job]
    if job.output is None:
        raise UsageError("--samples writes several files; it cannot write to stdout (give -o)")
    output = job.output
    return [
        replace(job, output=output.with_name(f"{output.stem}_s{index}{output.suffix}"), sample=index)
        for index in range(samples)
    ]


def _key(path: Path) -> str:
    return os.path.realpath(path)


def _is_output_of_another(job: Job, producers: dict[str, Job]) -> bool:
    producer = producers.get(_key(job.input.path)) if job.input.path is not None else None
    return producer is not None and producer is not job


def _taken_as_earlier_output(path: Path) -> bool:
    """Whether a file named like another input's output is that input's earlier output: it carries
    flowsr's mark, or it is a BMP, which cannot carry one (such a BMP is skipped as an input and never
    replaced, so reruns do not upscale earlier BMP outputs again)."""
    return format_from_suffix(path) == "bmp" or is_flowsr_output(path)


def _earlier_outputs(
    jobs: list[Job],
    producers: dict[str, Job],
    colliding: dict[str, Path],
    skip_found: Callable[[Path], Skip | None],
    verb: str,
) -> dict[str, Skip]:
    """Inputs that are skipped, by key, with why: a file named like another input's output that is that output
    (:func:`_taken_as_earlier_output`), and any file found in a folder or by a glob that ``skip_found`` skips
    (`upscale`: one that carries flowsr's mark, whatever its name); a file named on the command line is read."""
    skips = {
        key: Skip(
            f"{path} is the output of {producers[key].input.display}; it is not {verb}d again",
            f"inputs are the outputs of other inputs; they are not {verb}d again",
        )
        for key, path in colliding.items()
        if _taken_as_earlier_output(path)
    }
    found = {_key(job.input.path): job.input.path for job in jobs if job.input.path is not None and not job.input.named}
    for key, path in found.items():
        skip = None if key in colliding else skip_found(path)
        if skip is not None:
            skips[key] = skip
    return skips


def _guard_inputs(jobs: list[Job], skip_found: Callable[[Path], Skip | None], verb: str) -> list[Job]:
    """Mark inputs that are flowsr's earlier outputs (its provenance mark says so), or found ones that
    ``skip_found`` skips, as skipped, and outputs that would hit an input or another output as problems.

    An input named like another input's output but without the mark is the user's file: it is processed
    like any other input, and the job whose output it would be fails instead of replacing it. Only the
    first bytes of each input found in a folder or by a glob are read."""
    producers = {_key(job.output): job for job in reversed(jobs) if job.output is not None}
    colliding = {_key(job.input.path): job.input.path for job in jobs if _is_output_of_another(job, producers)}
    earlier = _earlier_outputs(jobs, producers, colliding, skip_found, verb)
    guarded: list[Job] = []
    claimed: dict[str, Job] = {}
    for job in jobs:
        if job.input.path is not None and _key(job.input.path) in earlier:
            guarded.append(replace(job, skip=earlier[_key(job.input.path)]))
            continue
        if job.output is not None:
            key = _key(job.output)
            if job.input.path is not None and key == _key(job.input.path):
                job = replace(job, problem="the output would overwrite the input; use --suffix, --format or -o")
            elif key in colliding and key not in earlier:
                job = replace(job, problem=unmarked_file_problem(job.output))
            elif key in claimed:
                job = replace(job, problem=f"same output file as {claimed[key].input.display}")
            else:
                claimed[key] = job
        guarded.append(job)
    return guarded


def plan_jobs(discovery: Discovery, options: OutputOptions) -> list[Job]:
    """One job per discovered input, in input order."""
    if options.output == STDIN_ARGUMENT and not discovery.single_file:
        raise UsageError("-o - (stdout) takes exactly one input file")
    to_folder = _writes_to_folder(discovery, options.output)
    if to_folder and options.output not in (None, STDIN_ARGUMENT):
        _check_output_folder(options.output)
    planned = [_plan_one(item, options, to_folder) for item in discovery.inputs]
    skip_found = options.skip_found or partial(skip_flowsr_output, verb=options.verb)
    jobs = [job for one in planned for job in _with_samples(one, options.samples)]
    return _guard_inputs(jobs, skip_found, options.verb)


def select_shard(jobs: list[Job], index: int, count: int) -> list[Job]:
    """The jobs of the ``index``-th of ``count`` interleaved slices of the inputs (the same on every
    machine); all samples of one input stay in one shard."""
    inputs = list(dict.fromkeys(job.input for job in jobs))
    chosen = set(inputs[index::count])
    return [job for job in jobs if job.input in chosen]
