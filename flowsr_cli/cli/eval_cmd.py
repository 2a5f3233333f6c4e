"""`flowsr eval`: compare models, priors and temperatures with the literature's protocol."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import typer

from flowsr_cli.cli.batch_common import COMPILE, OUTPUT_PANEL
from flowsr_cli.config import BICUBIC, PRIOR_CHOICES, RAY, Settings, choice_flag, integer_flag, model_backend
from flowsr_cli.console import printable, report_error, report_note, stderr_console
from flowsr_cli.errors import FlowsrError, UsageError

if TYPE_CHECKING:
    from flowsr_cli.engine.upscaler import Upscaler
    from flowsr_cli.eval.evaluation import Dataset, Evaluation, Result, Setting, Skip
    from flowsr_cli.eval.metrics import LPIPS

R = TypeVar("R")

NOT_COMPUTED = "not computed (--no-lpips)"
"""What the JSON protocol says of LPIPS when ``--no-lpips`` leaves it out (the rows hold null)."""

EPILOG = """Examples:

flowsr eval Set5 Set14 --model linf-lp --json results.json
flowsr eval B100 --model linf --temperatures 0,0.5,0.9 --runs 3 --markdown results.md
flowsr eval Set5 --no-lpips    (PSNR, SSIM and LR-PSNR only: no AlexNet weights needed)
FLOWSR_BACKBONE_DIR=weights flowsr eval Set5 --offline    (alexnet_features.pth from a folder: backbone_dir)"""
"""The examples at the end of `flowsr eval --help` (registered with the command in ``cli/__init__.py``)."""


def _numbers(text: str, option: str, minimum: float) -> list[float]:
    message = f"{option} takes comma-separated numbers >= {minimum:g}, got {text!r}"
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(message) from None
    if not values or any(not math.isfinite(value) or value < minimum for value in values):
        raise UsageError(message)
    return values


def eval_command(
    datasets: list[Path] = typer.Argument(
        ..., help="Folders of HR images (e.g. Set5, Set14, B100).", show_default=False
    ),
    models: list[str] = typer.Option(
        [],
        "--model",
        "-m",
        help="A model name or .safetensors path (repeatable; default: the configured one; config: model).",
        show_default=False,
    ),
    scales: str = typer.Option("2,3,4", "--scales", help="Comma-separated scales, any number >= 1."),
    prior: str | None = typer.Option(
        None,
        "--prior",
        parser=choice_flag("--prior", PRIOR_CHOICES),
        help="learned or gaussian (default: learned where the model has one, else gaussian).",
    ),
    temperatures: str | None = typer.Option(
        None,
        "--temperatures",
        help="Gaussian-prior temperatures, comma-separated.",
        show_default="each model's own: 0.5, HCFlow 0.9",
    ),
    runs: int = typer.Option(
        1, "--runs", parser=integer_flag("--runs", 1), help="Seeds per image (>= 1) for stochastic settings (τ > 0)."
    ),
    seed: int = typer.Option(0, "--seed", parser=integer_flag("--seed"), help="First seed; run i uses seed + i."),
    baseline: str = typer.Option("bicubic", "--baseline", help="bicubic, or none to leave it out."),
    max_images: int | None = typer.Option(
        None,
        "--max-images",
        parser=integer_flag("--max-images", 1),
        help="Use the first K >= 1 images per dataset (default: all).",
    ),
    device: str | None = typer.Option(
        None, "--device", help="auto, cpu, cuda or cuda:N (default: auto; config: device)."
    ),
    precision: str = typer.Option(
        "fp32",
        "--precision",
        help="fp32 (the protocol's), bf16, fp16 or auto: the models' compute precision, as `upscale --precision` "
        "(the flow inverse stays fp32); compare two runs to see what a precision costs in quality.",
    ),
    backend: str | None = typer.Option(
        None,
        "--backend",
        help="torch, or onnx: the models' encoders run with ONNX Runtime (pip install 'flowsr\\[onnx]'; without it "
        "PyTorch runs, with a note) (default: torch; config: backend).",
        show_default=False,
    ),
    consistency: str | None = typer.Option(
        None,
        "--consistency",
        help="auto, on or off: back-project every output onto its input, as `upscale` does; auto: on for models "
        "flowsr trained, off for bicubic and imported originals (default: auto; config: consistency).",
        show_default=False,
    ),
    compile_parts: bool | None = COMPILE,
    lpips: bool = typer.Option(
        True,
        "--lpips/--no-lpips",
        help="Score LPIPS-alex; it needs torchvision's ImageNet AlexNet (backbone_dir, or downloaded once).",
    ),
    offline: bool | None = typer.Option(
        None,
        "--offline/--online",
        help="Never download models or the LPIPS backbone (default: online; config: offline).",
        show_default=False,
    ),
    json_path: Path | None = typer.Option(
        None, "--json", help="Write the results as JSON.", rich_help_panel=OUTPUT_PANEL
    ),
    csv_path: Path | None = typer.Option(None, "--csv", help="Write the results as CSV.", rich_help_panel=OUTPUT_PANEL),
    markdown_path: Path | None = typer.Option(
        None, "--markdown", help="Write the results as a Markdown table.", rich_help_panel=OUTPUT_PANEL
    ),
    save_images: Path | None = typer.Option(
        None, "--save-images", help="Save every output as PNG under this folder.", rich_help_panel=OUTPUT_PANEL
    ),
) -> None:
    """Score models on folders of HR images: PSNR-Y, SSIM, LPIPS, LR-PSNR, grid, colour shift, inf rate, diversity.

    LR inputs are made with the MATLAB-style bicubic; outputs come from the same engine as
    `flowsr upscale` (with the exploding-inverse guard off, so the inf rate is the model's own), projected
    onto the input as --consistency says; "projected" in a setting's name marks it.

    grid: the share of an output's detail power at the model's patch period over the photo's (1.0: no more
    grid than the photo). colour shift: the largest per-channel mean difference from the photo, in levels of 255.

    An unreadable image, or one too small for a scale, gets one error line and is left out there;
    the tables count the images scored and skipped per dataset and scale. A dataset with nothing
    to score at a scale stops the run before any work.

    LPIPS needs torchvision's ImageNet AlexNet: alexnet_features.pth from the backbone_dir folder, else
    torchvision's checkpoint, downloaded once into flowsr's cache (233 MB). --no-lpips needs neither.

    Exit code: 0 every image scored, 1 some images skipped (the results of the rest are written)
    or nothing to score, 2 usage or configuration error.
    """
    settings = Settings(
        {
            "device": device,
            "backend": backend,
            "offline": offline,
            "consistency": consistency,
            "precision": precision,
            "compile": compile_parts,
        }
    )
    settings.validate()
    if settings["backend"] == RAY:
        report_note("flowsr eval runs on this machine (backend ray is for upscale and rescale): running with PyTorch")
    scale_list = _numbers(scales, "--scales", 1.0)
    temperature_list = None if temperatures is None else _numbers(temperatures, "--temperatures", 0.0)
    if baseline not in ("bicubic", "none"):
        raise UsageError(f"--baseline takes bicubic or none, got {baseline!r}")
    for folder in datasets:
        if not folder.is_dir():
            raise UsageError(f"{printable(folder)}: not a folder of images")

    from flowsr_cli.eval.evaluation import Evaluation, load_dataset

    shown: set[str] = set()
    with_bicubic = baseline == "bicubic"
    if not models:  # the configured model, unless that is the baseline itself
        models = [] if settings["model"] == BICUBIC and with_bicubic else [settings["model"]]
    chosen = _build_settings(models, prior, temperature_list, with_bicubic, settings, shown)
    _check_fixed_scales(chosen, scale_list)
    loaded = [load_dataset(folder, max_images, settings["max_pixels"]) for folder in datasets]
    metric = lpips_metric(settings) if lpips else None
    evaluation = Evaluation(
        settings=chosen,
        scales=scale_list,
        runs=runs,
        seed=seed,
        lpips=metric,
        save_images=save_images,
    )
    skipped = _report_skips(evaluation, loaded)
    scored = run_with_progress(evaluation, loaded)
    _report_new_notes((upscaler for _, upscaler in chosen), shown)  # what running them says (a failed compile)
    results = [result for _, result in scored]
    row_labels = [setting.label for setting, _ in scored]
    _print_table(results, row_labels, [setting.label for setting, _ in evaluation.settings], lpips)
    run_settings: dict[str, object] = {
        "seed": seed,
        "runs": runs,
        "precision": precision,
        **({} if lpips else {"lpips": NOT_COMPUTED}),
        "models": evaluation.models(),
    }
    _write_outputs(results, row_labels, skipped, json_path, csv_path, markdown_path, run_settings)
    if skipped:
        files = sum(dataset.files for dataset in loaded)
        stderr_console().print(
            f"{len(skipped)} of {files} images skipped at one scale or more (named above)", style="bold red"
        )
        raise typer.Exit(1)


def _report_new_notes(upscalers: Iterable[Upscaler], shown: set[str]) -> None:
    """The upscalers' notes not in ``shown`` yet (which they join), each once."""
    for upscaler in upscalers:
        for note in upscaler.notes:
            if note not in shown:
                shown.add(note)
                report_note(note)


def lpips_metric(settings: Settings) -> LPIPS:
    """LPIPS-alex with the run's settings (backbone_dir, offline, the model_base_url mirror); a backbone it
    cannot get is one error that also names --no-lpips."""
    from flowsr_cli.eval.metrics import LPIPS

    try:
        return LPIPS(settings=settings)
    except FlowsrError as error:
        raise type(error)(f"{error}; or score without LPIPS: --no-lpips") from error


def _report_skips(evaluation: Evaluation, datasets: list[Dataset]) -> list[Skip]:
    """One error line per image left out (unreadable, or too small for some scales), in file order."""
    skipped = []
    for dataset in datasets:
        skipped.extend(sorted([*dataset.unreadable, *evaluation.too_small(dataset)], key=lambda skip: skip.path))
    for skip in skipped:
        report_error(f"{skip.path}: {skip.reason}")
    return skipped


def _build_settings(
    models: list[str],
    prior: str | None,
    temperatures: list[float] | None,
    with_bicubic: bool,
    settings: Settings,
    shown: set[str],
) -> list[tuple[Setting, Upscaler]]:
    """Each model's settings with its upscaler: one per temperature (None: the model's default) where it samples
    Gaussian latents, else one; the bicubic baseline first when asked for. What loading says is reported once
    per run (``shown``: the notes reported so far)."""
    from flowsr_cli.engine.upscaler import samples_gaussian
    from flowsr_cli.eval.evaluation import Setting
    from flowsr_cli.families.upscalers import UpscalerRequest, create_upscaler, load_upscaler, prepare_model
    from flowsr_cli.hub.catalog import Hub

    hub = Hub(settings) if models else None
    chosen: list[tuple[Setting, Upscaler]] = []
    if with_bicubic:
        request = UpscalerRequest("bicubic", device=settings["device"], tile=0, consistency=settings["consistency"])
        bicubic = create_upscaler(request)
        chosen.append((Setting("bicubic", "bicubic"), bicubic))
    for model in models:
        request = UpscalerRequest(
            model,
            device=settings["device"],
            precision=settings["precision"],
            tile=settings["tile"],
            prior=prior,
            guard=False,
            consistency=settings["consistency"],
            hub=hub,
            backend=model_backend(settings["backend"]),
            compile=settings["compile"],
            cache_dir=settings["cache_dir"],
        )
        prepared = prepare_model(request)
        upscaler = load_upscaler(prepared)
        _report_new_notes([upscaler], shown)  # what loading it says (device, backend)
        if not samples_gaussian(upscaler):
            chosen.append((Setting(model, "bicubic" if model == BICUBIC else "learned"), upscaler))
            continue
        for temperature in [prepared.temperature] if temperatures is None else temperatures:
            chosen.append((Setting(model, "gaussian", temperature), _at_temperature(upscaler, temperature)))
    return chosen


def _at_temperature(upscaler: Upscaler, temperature: float) -> Upscaler:
    """A copy of a Gaussian-sampling upscaler at ``temperature``; a projecting wrapper gets a copy of its inner
    upscaler at that temperature."""
    import dataclasses

    from flowsr_cli.engine.consistent import ConsistentUpscaler

    if isinstance(upscaler, ConsistentUpscaler):
        return dataclasses.replace(upscaler, inner=_at_temperature(upscaler.inner, temperature))
    return dataclasses.replace(upscaler, temperature=temperature)


def _check_fixed_scales(chosen: list[tuple[Setting, Upscaler]], scales: list[float]) -> None:
    """A fixed-scale model (SRFlow: x4) is scored at its own scale only: the others are skipped with a note,
    so one run still compares it with any-scale models; with its scale missing from --scales, a usage error."""
    from flowsr_cli.engine.upscaler import fixed_scale
    from flowsr_cli.io.sizing import format_scale

    natives = {setting.model: fixed_scale(upscaler) for setting, upscaler in chosen}
    for model, native in natives.items():
        if native is None:
            continue
        if native not in scales:
            raise UsageError(f"{model} is a fixed ×{native} model: include {native} in --scales")
        skipped = [f"×{format_scale(scale)}" for scale in scales if scale != native]
        if skipped:
            report_note(f"{model} is a fixed ×{native} model: skipped at {', '.join(skipped)}")


class StepwiseEvaluation(Protocol[R]):
    """An evaluation that knows its steps over some datasets and calls back after each one."""

    def steps(self, datasets: list[Dataset]) -> int: ...

    def run(self, datasets: list[Dataset], advance: Callable[[], None]) -> R: ...


def run_with_progress(evaluation: StepwiseEvaluation[R], datasets: list[Dataset]) -> R:
    """The evaluation's results, with a progress bar over its steps on stderr while it runs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("evaluating"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=stderr_console(),
        transient=True,
    ) as progress:
        task = progress.add_task("", total=evaluation.steps(datasets))
        return evaluation.run(datasets, lambda: progress.advance(task))


def _print_table(results: list[Result], row_labels: list[str], setting_labels: list[str], lpips: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    from flowsr_cli.eval.report import HIGHER_IS_BETTER

    columns = (
        ("psnr_y", "PSNR-Y", 2), ("ssim", "SSIM", 4), ("lpips", "LPIPS", 4), ("lr_psnr", "LR-PSNR", 2),
        ("grid", "grid ×", 2), ("colour_shift", "shift", 2),
    )  # fmt: skip
    shown = [column for column in columns if lpips or column[0] != "lpips"]
    table = Table(title="flowsr eval", title_justify="left")
    table.add_column("dataset", no_wrap=True)
    table.add_column("scale", justify="right")
    table.add_column("images", justify="right")
    table.add_column("skipped", justify="right")
    for label in setting_labels:
        for _, name, _ in shown:
            table.add_column(f"{label}\n{name}", justify="right")
        table.add_column(f"{label}\ninf %", justify="right")
    groups: dict[tuple[str, float], dict[str, Result]] = {}
    for result, label in zip(results, row_labels):
        groups.setdefault((result.dataset, result.scale), {})[label] = result
    for (dataset, scale), by_label in groups.items():
        best = {
            key: (max if HIGHER_IS_BETTER[key] else min)(getattr(result, key) for result in by_label.values())
            for key, _, _ in shown
            if key in HIGHER_IS_BETTER
        }
        counts = next(iter(by_label.values()))
        cells = [dataset, f"×{scale:g}", str(counts.images), str(counts.skipped)]
        for label in setting_labels:
            result = by_label.get(label)
            if result is None:  # a fixed-scale model at another scale
                cells.extend(["–"] * (len(shown) + 1))
                continue
            for key, _, digits in shown:
                value = getattr(result, key)
                text = "–" if value is None else f"{value:.{digits}f}"
                cells.append(f"[bold green]{text}[/]" if len(by_label) > 1 and value == best.get(key) else text)
            cells.append(f"{100 * result.inf_rate:.1f}")
        table.add_row(*cells)
    console = Console()
    needed = 40 + len(setting_labels) * (len(shown) + 1) * 11
    Console(width=max(console.width, needed)).print(table)


def _write_outputs(
    results: list[Result],
    row_labels: list[str],
    skipped: list[Skip],
    json_path: Path | None,
    csv_path: Path | None,
    markdown_path: Path | None,
    run_settings: dict[str, object],
) -> None:
    from flowsr_cli.eval import report as eval_report

    write_reports(
        (
            (json_path, lambda: eval_report.to_json(results, run_settings, skipped)),
            (csv_path, lambda: eval_report.to_csv(results)),
            (markdown_path, lambda: eval_report.to_markdown(results, row_labels)),
        )
    )


def write_reports(outputs: Iterable[tuple[Path | None, Callable[[], str]]]) -> None:
    """Render and atomically write each report whose path was given; one that cannot be written is a usage error."""
    from flowsr_cli.io.atomic import atomic_write_bytes

    for path, render in outputs:
        if path is not None:
            try:
                atomic_write_bytes(path, render().encode("utf-8"))
            except OSError as exc:
                raise UsageError(f"{printable(path)}: cannot write: {exc.strerror or exc}") from None
