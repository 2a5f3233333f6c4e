"""`flowsr rescale eval`: score image rescaling models, and the bicubic-down baselines, on folders of HR images
as `flowsr eval` scores SR (the protocol: :mod:`flowsr_cli.eval.rescale_evaluation`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from flowsr_cli.cli.batch_common import MODEL_PANEL, OUTPUT_PANEL, model_sha256
from flowsr_cli.cli.eval_cmd import NOT_COMPUTED, lpips_metric, run_with_progress, write_reports
from flowsr_cli.cli.rescale_models import DEFAULT_RESCALER, SCALES, prepared_rescaler
from flowsr_cli.config import Settings, flag_parser, integer_flag
from flowsr_cli.console import printable, report_error, report_note, stderr_console
from flowsr_cli.errors import UsageError
from flowsr_cli.io.provenance import DEFAULT_SEED
from flowsr_cli.io.rescale_mark import MAX_SEED

if TYPE_CHECKING:
    from flowsr_cli.eval.evaluation import Dataset
    from flowsr_cli.eval.evaluation import Skip as LeftOut
    from flowsr_cli.eval.rescale_evaluation import Method, ModelRescaling, RescaleEvaluation, RescaleResult
    from flowsr_cli.families.rescalers import PreparedRescaler
    from flowsr_cli.families.upscalers import PreparedModel
    from flowsr_cli.hub.catalog import Hub

BASELINES = ("bicubic", "sr")
"""`rescale eval`'s baselines: bicubic down and up; bicubic down, then the SR model."""

EVAL_EXAMPLES = """[bold]Examples[/]

flowsr rescale eval Set5 DIV2K_valid --json results.json         # hcflow-rescale-x2 and -x4, and the baselines
flowsr rescale eval Set5 -m mine_x4.safetensors -s 4 --no-lpips  # a model of yours; no AlexNet weights needed
flowsr rescale eval B100 --baseline none --markdown results.md   # the rescaling models only"""


def _scale_list(raw: object) -> str:
    """``--scale``: 2, 4 or both, comma-separated; normalised (``4,2`` -> ``2,4``)."""
    parts = {part.strip() for part in str(raw).split(",")}
    if not parts <= {str(scale) for scale in SCALES}:
        raise ValueError(raw)
    return ",".join(sorted(parts, key=int))


def _baseline_list(raw: object) -> str:
    """``--baseline``: some of :data:`BASELINES`, comma-separated, or none; normalised to their order."""
    parts = {part.strip() for part in str(raw).split(",")}
    if parts == {"none"}:
        return "none"
    if not parts <= set(BASELINES):
        raise ValueError(raw)
    return ",".join(name for name in BASELINES if name in parts)


def eval_command(
    datasets: list[Path] = typer.Argument(
        ..., metavar="DATASET", help="Folders of HR images (e.g. Set5, DIV2K_valid).", show_default=False
    ),
    models: list[str] = typer.Option(
        [],
        "--model",
        "-m",
        metavar="NAME|FILE",
        help="An image rescaling model (repeatable), scored at its own scale.",
        rich_help_panel=MODEL_PANEL,
        show_default="hcflow-rescale-x2 and -x4, by --scale",
    ),
    scales: str = typer.Option(
        "2,4",
        "--scale",
        "-s",
        parser=flag_parser("--scale", _scale_list, "2, 4 or 2,4"),
        metavar="2,4",
        help="The scales to score at, comma-separated.",
    ),
    baseline: str = typer.Option(
        ",".join(BASELINES),
        "--baseline",
        parser=flag_parser("--baseline", _baseline_list, "bicubic, sr, both comma-separated, or none"),
        metavar="LIST",
        help="bicubic: bicubic down, bicubic up; sr: bicubic down, then --sr-model; none: neither.",
    ),
    sr_model: str | None = typer.Option(
        None,
        "--sr-model",
        metavar="NAME|FILE",
        help="The super-resolution model of the sr baseline, run as `flowsr upscale` runs it.",
        rich_help_panel=MODEL_PANEL,
        show_default="config: model, linf-lp",
    ),
    seed: int = typer.Option(
        DEFAULT_SEED,
        "--seed",
        parser=integer_flag("--seed", 0, MAX_SEED),
        metavar="N",
        help="Seed of the latents the inverses (and the SR model) draw.",
        rich_help_panel=MODEL_PANEL,
    ),
    max_images: int | None = typer.Option(
        None,
        "--max-images",
        parser=integer_flag("--max-images", 1),
        metavar="K",
        help="Use the first K >= 1 images per dataset (default: all).",
    ),
    device: str | None = typer.Option(
        None, "--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N (default: auto; config: device)."
    ),
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
) -> None:
    """Score image rescaling on folders of HR images: [bold]flowsr rescale eval Set5 --scale 4[/]

    Each HR is cropped to a multiple of the scale s. A rescaling model makes its LR with the `rescale down` engine
    (8 bits, as its PNG) and restores the HR from it with the `rescale up` engine (its default heat, --seed). The
    baselines shrink the HR with the MATLAB-style bicubic and enlarge it with the bicubic, or with --sr-model as
    `flowsr upscale` runs it. Restored images are clamped and rounded to 8 bits.

    Scores: PSNR-Y and SSIM on Y with s pixels shaved, LPIPS-alex, and the LR's PSNR against the bicubic LR of the
    same HR (LR vs bicubic: is the thumbnail faithful? blank for the baselines, whose LR it is). A model is
    scored at its own scale only (a note names the scales it skips).

    An unreadable image, or one too small for a scale, gets one error line and is left out there. Exit code: 0
    every image scored, 1 some images skipped (the results of the rest are written) or nothing to score, 2 usage or
    configuration error.
    """
    from flowsr_cli.eval.evaluation import load_dataset
    from flowsr_cli.eval.rescale_evaluation import RescaleEvaluation
    from flowsr_cli.hub.catalog import Hub

    settings = Settings({"device": device, "offline": offline, "model": sr_model})
    settings.validate()
    scale_list = [int(scale) for scale in scales.split(",")]
    for folder in datasets:
        if not folder.is_dir():
            raise UsageError(f"{printable(folder)}: not a folder of images")
    hub = Hub(settings)
    baselines = _prepared_baselines([] if baseline == "none" else baseline.split(","), settings, hub)
    rescalers = _rescalers_to_score(hub, models, scale_list)
    loaded = [load_dataset(folder, max_images, settings["max_pixels"]) for folder in datasets]
    metric = lpips_metric(settings) if lpips else None
    rescaling = _rescaling_methods(rescalers, settings, seed)
    evaluation = RescaleEvaluation([*_baseline_methods(baselines, seed), *rescaling], scale_list, metric)
    skipped = _report_rescale_skips(evaluation, loaded)
    results = run_with_progress(evaluation, loaded)
    _print_rescale_table(results, lpips)
    run_settings = _run_settings(hub, scale_list, seed, lpips, rescaling, baselines)
    _write_rescale_outputs(results, skipped, json_path, csv_path, markdown_path, run_settings)
    if skipped:
        files = sum(dataset.files for dataset in loaded)
        stderr_console().print(
            f"{len(skipped)} of {files} images skipped at one scale or more (named above)", style="bold red"
        )
        raise typer.Exit(1)


def _run_settings(
    hub: Hub,
    scales: list[int],
    seed: int,
    lpips: bool,
    rescaling: list[ModelRescaling],
    baselines: list[PreparedModel],
) -> dict[str, object]:
    """What the JSON's protocol records of the run: scales, seed, LPIPS left out, each rescaling model's scale,
    heat and sha256, and the SR baseline's model and whether it was projected."""
    sr_model = next(
        ({"name": one.request.model, "consistency": one.consistency} for one in baselines if one.path), None
    )
    return {
        "scales": scales,
        "seed": seed,
        **({} if lpips else {"lpips": NOT_COMPUTED}),
        "models": {
            method.down: {
                "scale": method.scale,
                "heat": method.rescaler.default_temperature,
                "sha256": model_sha256(hub, method.down),
            }
            for method in rescaling
        },
        "sr_model": sr_model,
    }


def _prepared_baselines(baselines: list[str], settings: Settings, hub: Hub) -> list[PreparedModel]:
    """The baselines' upscalers, checked before any loads: the bicubic (never projected), and the SR model as
    `flowsr upscale` runs it (the config's model unless --sr-model; its consistency setting), in float32."""
    from flowsr_cli.config import BICUBIC
    from flowsr_cli.families.upscalers import UpscalerRequest, prepare_model

    requests = {
        "bicubic": UpscalerRequest(BICUBIC, device=settings["device"], tile=0, consistency="off"),
        "sr": UpscalerRequest(
            settings["model"],
            device=settings["device"],
            precision="fp32",
            tile=settings["tile"],
            tile_pad=settings["tile_pad"],
            consistency=settings["consistency"],
            hub=hub,
        ),
    }
    return [prepare_model(requests[name]) for name in baselines]


def _rescalers_to_score(hub: Hub, models: list[str], scales: list[int]) -> list[PreparedRescaler]:
    """The rescaling models ``models`` names (by default the default one of each scale), checked; a model is
    scored at its own scale only (a note names the others), and a usage error if that is not among ``scales``."""
    if not models:
        return [prepared_rescaler(hub, DEFAULT_RESCALER.format(scale=s), scale=s) for s in scales]
    prepared = [prepared_rescaler(hub, model) for model in models]
    for one in prepared:
        if one.scale not in scales:
            raise UsageError(
                f"--model {one.name}: it rescales by {one.scale}, not by --scale {','.join(map(str, scales))}"
            )
        others = [f"×{scale}" for scale in scales if scale != one.scale]
        if others:
            report_note(f"{one.name} is a ×{one.scale} rescaling model: skipped at {', '.join(others)}")
    return prepared


def _baseline_methods(baselines: list[PreparedModel], seed: int) -> list[Method]:
    """The baselines, loaded: bicubic down, then each upscaler."""
    from flowsr_cli.eval.rescale_evaluation import BicubicDown
    from flowsr_cli.families.upscalers import load_upscaler

    return [BicubicDown(load_upscaler(one), one.request.model, seed) for one in baselines]


def _rescaling_methods(rescalers: list[PreparedRescaler], settings: Settings, seed: int) -> list[ModelRescaling]:
    """The rescaling models, loaded on the run's device with the tiling `rescale up` uses."""
    from flowsr_cli.engine.device import resolve_device
    from flowsr_cli.eval.rescale_evaluation import ModelRescaling
    from flowsr_cli.families.rescalers import load_rescaler

    device = resolve_device(settings["device"]).device
    notes: list[str] = []
    return [
        ModelRescaling(load_rescaler(one, device, settings["tile"], settings["tile_pad"], notes), one.name, seed)
        for one in rescalers
    ]


def _report_rescale_skips(evaluation: RescaleEvaluation, datasets: list[Dataset]) -> list[LeftOut]:
    """One error line per image left out (unreadable, or too small for some scales), in file order."""
    skipped = []
    for dataset in datasets:
        skipped.extend(sorted([*dataset.unreadable, *evaluation.too_small(dataset)], key=lambda skip: skip.path))
    for skip in skipped:
        report_error(f"{skip.path}: {skip.reason}")
    return skipped


def _print_rescale_table(results: list[RescaleResult], lpips: bool) -> None:
    """One line per result; per dataset and scale, the best PSNR-Y, SSIM and LPIPS in bold green."""
    from rich.console import Console
    from rich.table import Table

    from flowsr_cli.eval.report import HIGHER_IS_BETTER

    columns = (
        ("psnr_y", "PSNR-Y", 2),
        ("ssim", "SSIM", 4),
        ("lpips", "LPIPS", 4),
        ("lr_vs_bicubic_psnr", "LR vs bicubic", 2),
    )
    shown = [column for column in columns if lpips or column[0] != "lpips"]
    table = Table(title="flowsr rescale eval", title_justify="left")
    for name in ("dataset", "scale", "down & up", "images", "skipped"):
        table.add_column(name, justify="left" if name in ("dataset", "down & up") else "right", no_wrap=True)
    for _, name, _ in shown:
        table.add_column(name, justify="right")
    groups: dict[tuple[str, int], list[RescaleResult]] = {}
    for result in results:
        groups.setdefault((result.dataset, result.scale), []).append(result)
    for group in groups.values():
        best = {
            key: (max if HIGHER_IS_BETTER[key] else min)(getattr(result, key) for result in group)
            for key, _, _ in shown
            if key in HIGHER_IS_BETTER and len(group) > 1
        }
        for result in group:
            cells = [result.dataset, f"×{result.scale}", result.label, str(result.images), str(result.skipped)]
            for key, _, digits in shown:
                value = getattr(result, key)
                text = "–" if value is None else f"{value:.{digits}f}"
                cells.append(f"[bold green]{text}[/]" if key in best and value == best[key] else text)
            table.add_row(*cells)
    needed = 60 + 14 * len(shown)
    Console(width=max(Console().width, needed)).print(table)


def _write_rescale_outputs(
    results: list[RescaleResult],
    skipped: list[LeftOut],
    json_path: Path | None,
    csv_path: Path | None,
    markdown_path: Path | None,
    run_settings: dict[str, object],
) -> None:
    """The JSON (with the protocol and ``run_settings``), CSV and Markdown files asked for, each written atomically."""
    from flowsr_cli.eval import report
    from flowsr_cli.eval.rescale_evaluation import COLUMNS, PROTOCOL

    write_reports(
        (
            (json_path, lambda: report.to_json(results, run_settings, skipped, PROTOCOL)),
            (csv_path, lambda: report.to_csv(results, COLUMNS)),
            (markdown_path, lambda: report.to_rescale_markdown(results)),
        )
    )
