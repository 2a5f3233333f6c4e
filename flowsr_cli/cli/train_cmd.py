"""`flowsr train flow|prior`: train on your own image folders; resumable; runs under torchrun too."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from flowsr_cli.cli.console import printable, report_note, report_warning
from flowsr_cli.config import Settings
from flowsr_cli.errors import UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from flowsr_cli.data import Batch
    from flowsr_cli.models.linf import LINF
    from flowsr_cli.models.linf_lp import LINFLP
    from flowsr_cli.train.distributed import Cluster
    from flowsr_cli.train.recipe import Recipe

train_app = typer.Typer(
    help="Train the flow, then its learned prior, on folders of your own images.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

_RUN = "Run"
DATA_ARGUMENT = typer.Argument(..., help="Folders of training images (searched recursively).", show_default=False)
OUT_OPTION = typer.Option(..., "--out", help="Folder for checkpoint, log, recipe and the exported model.")
RECIPE_OPTION = typer.Option(None, "--recipe", help="A recipe TOML (flat keys); flags override it.")
STEPS_OPTION = typer.Option(None, "--steps", min=0, help="Optimizer steps.", rich_help_panel=_RUN)
BUDGET_OPTION = typer.Option(
    None, "--time-budget", min=0.0, help="Minutes to train (the step count is fitted to it).", rich_help_panel=_RUN
)
BATCH_OPTION = typer.Option(None, "--batch-size", min=1, help="Crops per step.", rich_help_panel=_RUN)
LR_OPTION = typer.Option(None, "--lr", help="Adam learning rate.", rich_help_panel=_RUN)
SEED_OPTION = typer.Option(None, "--seed", help="Seed of data sampling and initialisation.", rich_help_panel=_RUN)
WORKERS_OPTION = typer.Option(None, "--workers", min=0, help="Data-loading processes.", rich_help_panel=_RUN)
RESUME_OPTION = typer.Option(None, "--resume", help="A checkpoint.safetensors to continue exactly.")
VAL_OPTION = typer.Option(None, "--val", help="Folder of HR images for PSNR/SSIM checks every val_every steps.")
DEVICE_OPTION = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N (config: device).")


def _overrides(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _device_and_cluster(device_setting: str | None) -> tuple[Settings, torch.device, Cluster]:
    from flowsr_cli.device import resolve_device
    from flowsr_cli.train.distributed import join_cluster, local_device

    settings = Settings({"device": device_setting})
    choice = resolve_device(settings["device"])
    cluster = join_cluster(choice.device)
    device = local_device(choice.device, cluster)
    if choice.note and cluster.is_main:
        report_note(choice.note)
    return settings, device, cluster


def _batches(data: list[Path], recipe: Recipe, multiple: int, cluster: Cluster) -> Callable[[int], Iterable[Batch]]:
    from flowsr_cli.data import BatchStream, CropRecipe, TrainingImages, find_training_images, make_loader

    crop = CropRecipe(recipe.lr_size, recipe.scale_min, recipe.scale_max, multiple=multiple)
    images = TrainingImages(find_training_images(data), crop)
    if cluster.is_main:
        for path, reason in images.skipped:
            report_warning(f"{printable(path)}: skipped ({reason})")
    if len(images) == 0:
        raise UsageError("no training image is large enough for the recipe's crops")

    def stream(start_step: int) -> Iterable[Batch]:
        return make_loader(
            BatchStream(images, crop, recipe.batch_size, recipe.seed, start_step, cluster.rank, cluster.world_size),
            recipe.workers,
        )

    return stream


def _validator(
    model: nn.Module, folder: Path | None, recipe: Recipe, device: torch.device, settings: Settings
) -> Callable[[], dict[str, float]] | None:
    if folder is None:
        return None
    import torch

    from flowsr_cli.evaluation import Evaluation, Setting, load_dataset
    from flowsr_cli.flow_engine import FlowUpscaler
    from flowsr_cli.models.linf_lp import LINFLP
    from flowsr_cli.prior_engine import LearnedPriorUpscaler

    dataset = load_dataset(folder, recipe.val_images, settings["max_pixels"])

    def validate() -> dict[str, float]:
        if isinstance(model, LINFLP):
            setting, upscaler = Setting("model", "learned"), LearnedPriorUpscaler(model, device, "validation")
        else:
            setting = Setting("model", "gaussian", 0.0)
            upscaler = FlowUpscaler(model, device, torch.float32, 0.0, "validation", tile=0, guard=False)
        evaluation = Evaluation([(setting, upscaler)], [recipe.val_scale], 1, 0, None)
        ((_, result),) = evaluation.run([dataset], lambda: None)
        return {"psnr_y": result.psnr_y, "ssim": result.ssim, "lr_psnr": result.lr_psnr, "inf_rate": result.inf_rate}

    return validate


def _train(
    model: LINF | LINFLP,
    objective: nn.Module,
    recipe: Recipe,
    data: list[Path],
    out: Path,
    cluster: Cluster,
    device: torch.device,
    val: Path | None,
    settings: Settings,
    resume: Path | None,
) -> None:
    """Run the training loop, leave the process group however it ends, and say where the model is."""
    from flowsr_cli.train.distributed import leave_cluster
    from flowsr_cli.train.loop import RunFiles, Trainer

    trainer = Trainer(
        model,
        objective,
        recipe,
        _batches(data, recipe, model.patch_size, cluster),
        RunFiles(out),
        cluster,
        device,
        validate=_validator(model, val, recipe, device, settings),
    )
    try:
        exported = trainer.run(resume)
    finally:
        leave_cluster(cluster)
    if cluster.is_main:
        typer.echo(f"model: {printable(exported)}  (use: flowsr upscale IMAGE -s 3.5 --model {printable(exported)})")


@train_app.command("flow")
def train_flow(
    data: list[Path] = DATA_ARGUMENT,
    out: Path = OUT_OPTION,
    arch: str | None = typer.Option(None, "--arch", help="linf-small (default), linf-edsr or linf-rrdb."),
    recipe_file: Path | None = RECIPE_OPTION,
    steps: int | None = STEPS_OPTION,
    time_budget: float | None = BUDGET_OPTION,
    batch_size: int | None = BATCH_OPTION,
    learning_rate: float | None = LR_OPTION,
    seed: int | None = SEED_OPTION,
    workers: int | None = WORKERS_OPTION,
    finetune: bool | None = typer.Option(
        None, "--finetune/--no-finetune", help="Stage 2: alternate small NLL steps with L1 steps on the τ=0 output."
    ),
    init: str | None = typer.Option(None, "--init", help="Start from this model file (e.g. stage 1's export)."),
    resume: Path | None = RESUME_OPTION,
    val: Path | None = VAL_OPTION,
    device: str | None = DEVICE_OPTION,
) -> None:
    """Train a LINF flow (stage 1: NLL; --finetune: stage 2) and export out/model.safetensors."""
    from flowsr_cli.train.recipe import ARCHITECTURES, load_recipe

    recipe = load_recipe(
        recipe_file,
        _overrides(
            arch=arch, steps=steps, time_budget=time_budget, batch_size=batch_size,
            learning_rate=learning_rate, seed=seed, workers=workers, finetune=finetune,
        ),
    )  # fmt: skip
    if init is None and recipe.arch not in ARCHITECTURES:
        raise UsageError(f"--arch {recipe.arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    settings, device_, cluster = _device_and_cluster(device)

    import torch

    from flowsr_cli.hub import Hub
    from flowsr_cli.models import load_model, make
    from flowsr_cli.models.linf import LINF
    from flowsr_cli.train.objectives import FlowObjective
    from flowsr_cli.train.perceptual import VGGPerceptualLoss

    torch.manual_seed(recipe.seed)
    if init is not None:
        init_path = Hub(settings).resolve(init)
        if init_path is None:
            raise UsageError(f"--init {init!r}: no such model file or named model")
        model = load_model(init_path, device_)
    else:
        model = make(ARCHITECTURES[recipe.arch]).to(device_)
    if not isinstance(model, LINF):
        raise UsageError(f"--init {init}: not a LINF flow model")
    perceptual = VGGPerceptualLoss(device_) if recipe.finetune and recipe.vgg_weight > 0 else None
    objective = FlowObjective(
        model.train(), recipe.queries, recipe.finetune, recipe.finetune_nll_weight, perceptual, recipe.vgg_weight
    )
    _train(model, objective, recipe, data, out, cluster, device_, val, settings, resume)


@train_app.command("prior")
def train_prior(
    data: list[Path] = DATA_ARGUMENT,
    flow: str = typer.Option(..., "--flow", help="The trained flow (model file or name); it stays frozen."),
    out: Path = OUT_OPTION,
    arch: str | None = typer.Option(None, "--arch", help="lp-small (default) or lp (the paper's ~4.6 M)."),
    recipe_file: Path | None = RECIPE_OPTION,
    steps: int | None = STEPS_OPTION,
    time_budget: float | None = BUDGET_OPTION,
    batch_size: int | None = BATCH_OPTION,
    learning_rate: float | None = LR_OPTION,
    seed: int | None = SEED_OPTION,
    workers: int | None = WORKERS_OPTION,
    latent_weight: float | None = typer.Option(
        None, "--latent-weight", help="λ of the latent L1 term (0 for LINF, 0.1 for SRFlow in the paper)."
    ),
    resume: Path | None = RESUME_OPTION,
    val: Path | None = VAL_OPTION,
    device: str | None = DEVICE_OPTION,
) -> None:
    """Train the learned-prior latent module on a frozen flow; export flow + prior as one model."""
    from flowsr_cli.train.recipe import PRIORS, load_recipe

    recipe = load_recipe(
        recipe_file,
        _overrides(
            arch=arch or "lp-small", steps=steps, time_budget=time_budget, batch_size=batch_size,
            learning_rate=learning_rate, seed=seed, workers=workers, latent_weight=latent_weight,
        ),
    )  # fmt: skip
    if recipe.arch not in PRIORS:
        raise UsageError(f"--arch {recipe.arch!r}: choose one of {', '.join(PRIORS)}")
    settings, device_, cluster = _device_and_cluster(device)

    import torch

    from flowsr_cli.hub import Hub
    from flowsr_cli.models import load_model, make
    from flowsr_cli.models.linf import LINF
    from flowsr_cli.train.objectives import PriorObjective
    from flowsr_cli.train.perceptual import VGGPerceptualLoss

    flow_path = Hub(settings).resolve(flow)
    if flow_path is None:
        raise UsageError(f"--flow {flow!r}: no such model file or imported model")
    frozen = load_model(flow_path, device_)
    if not isinstance(frozen, LINF):
        raise UsageError(f"--flow {flow}: not a LINF flow model")
    torch.manual_seed(recipe.seed)
    model = make({"name": "linf-lp", "args": {"flow": frozen.spec, "latent": PRIORS[recipe.arch]}}).to(device_)
    model.flow.load_state_dict(frozen.state_dict())
    objective = PriorObjective(model, VGGPerceptualLoss(device_), recipe.vgg_weight or 1.0, recipe.latent_weight)
    _train(model, objective, recipe, data, out, cluster, device_, val, settings, resume)
