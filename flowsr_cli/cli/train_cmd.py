"""`flowsr train flow|prior|rescale`: train on your own image folders; resumable; runs under torchrun too."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from flowsr_cli.config import Settings, flag_parser, integer_flag, number_flag
from flowsr_cli.console import printable, report_note, report_warning
from flowsr_cli.errors import UsageError
from flowsr_cli.train.recipe import FAMILY_DEFAULTS, MAX_SEED, RESCALE_LEVELS, RESCALER, RESCALERS, Recipe

if TYPE_CHECKING:
    import torch
    from torch import nn

    from flowsr_cli.families.hcflow.rescaling import HCFlowRescaler
    from flowsr_cli.train.data import Batch
    from flowsr_cli.train.distributed import Cluster

train_app = typer.Typer(
    help="Train the flow, then its learned prior, or a rescaling model, on folders of your own images.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

_RECIPE = "Recipe (flags override --recipe, which overrides the defaults shown)"


def _recipe_default(key: str, value: object = None) -> str:
    """The default shown for a recipe flag: the built-in recipe's value (or ``value``, when it depends on more)."""
    shown = getattr(Recipe, key) if value is None else value
    if isinstance(shown, bool):
        return f"recipe: {str(shown).lower()}"
    return f"recipe: {shown:g}" if isinstance(shown, float) else f"recipe: {shown}"


DATA_ARGUMENT = typer.Argument(..., help="Folders of training images (searched recursively).", show_default=False)
OUT_OPTION = typer.Option(..., "--out", help="Folder for checkpoint, log, recipe and the exported model.")
RECIPE_OPTION = typer.Option(
    None,
    "--recipe",
    help="A recipe TOML of flat keys (a run's recipe.toml is one): its values replace the recipe defaults, "
    "and flags replace its values.",
    rich_help_panel=_RECIPE,
)
STEPS_OPTION = typer.Option(
    None,
    "--steps",
    parser=integer_flag("--steps", 0),
    help="Optimizer steps of the whole run (>= 0), also with --resume: it continues up to this step "
    "(default there: the checkpoint's planned total).",
    show_default=_recipe_default("steps"),
    rich_help_panel=_RECIPE,
)
BUDGET_OPTION = typer.Option(
    None,
    "--time-budget",
    parser=number_flag("--time-budget", 0),
    help="Minutes to train in this run (>= 0; 0: off): the step count is fitted to them, capped by --steps "
    "when steps are given.",
    show_default=_recipe_default("time_budget", "0, off"),
    rich_help_panel=_RECIPE,
)
BATCH_OPTION = typer.Option(
    None,
    "--batch-size",
    parser=integer_flag("--batch-size", 1),
    help="Crops per step, per process under torchrun (>= 1).",
    show_default=_recipe_default("batch_size"),
    rich_help_panel=_RECIPE,
)
LR_OPTION = typer.Option(
    None,
    "--lr",
    parser=number_flag("--lr", 0, exclusive=True),
    help="Adam learning rate (> 0) before the recipe's milestones lower it.",
    show_default=_recipe_default("learning_rate"),
    rich_help_panel=_RECIPE,
)
SEED_OPTION = typer.Option(
    None,
    "--seed",
    parser=integer_flag("--seed", 0, MAX_SEED),
    help="Seed of data sampling and initialisation (0 to 2^64 - 1, as torch takes).",
    show_default=_recipe_default("seed"),
    rich_help_panel=_RECIPE,
)
WORKERS_OPTION = typer.Option(
    None,
    "--workers",
    parser=integer_flag("--workers", 0),
    help="Data-loading processes (>= 0).",
    show_default=_recipe_default("workers"),
    rich_help_panel=_RECIPE,
)
RESUME_OPTION = typer.Option(
    None,
    "--resume",
    help="A checkpoint.safetensors to continue exactly; a run already at --steps only exports its model again.",
)
VAL_OPTION = typer.Option(
    None,
    "--val",
    help=f"Folder of HR images for PSNR/SSIM checks every val_every steps ({_recipe_default('val_every')}) and "
    "after the last step; each result is printed and logged.",
)
DEVICE_OPTION = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N (config: device).")


FLOW_EXAMPLES = """[bold]Examples[/]

# stage 1 for 90 minutes; PSNR/SSIM on Set5/ every val_every steps and after the last one
flowsr train flow ~/photos --out runs/flow --time-budget 90 --val Set5/
# on to step 4000 in all (--steps counts the whole run, also when resuming)
flowsr train flow ~/photos --out runs/flow --resume runs/flow/checkpoint.safetensors --steps 4000
# stage 2, from stage 1's model
flowsr train flow ~/photos --out runs/ft --init runs/flow/model.safetensors --finetune"""

PRIOR_EXAMPLES = """[bold]Examples[/]

# the learned prior of your flow, for 45 minutes
flowsr train prior ~/photos --flow runs/flow/model.safetensors --out runs/prior --time-budget 45
# a prior for the bundled flow, checked on Set5/
flowsr train prior ~/photos --flow linf --out runs/prior --steps 3000 --val Set5/
# keep training the prior of a flow + prior model
flowsr train prior ~/photos --flow linf-lp --out runs/prior-more --time-budget 30
# the learned prior of an HCFlow flow (CPU-sized, 45 minutes)
flowsr train prior ~/photos --flow runs/hcflow/model.safetensors --out runs/hcflow-lp --time-budget 45"""


def _overrides(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _resumed_defaults(resume: Path | None) -> dict[str, Any]:
    """On --resume, the recipe default of steps: the checkpoint's planned total, so that the resumed run ends
    where the interrupted one would have (--steps and --recipe override it)."""
    if resume is None:
        return {}
    from flowsr_cli.train.state import read_training_progress

    total = read_training_progress(resume).total_steps
    return {"steps": total} if total else {}


def _device_and_cluster(settings: Settings) -> tuple[torch.device, Cluster]:
    from flowsr_cli.engine.device import resolve_device
    from flowsr_cli.train.distributed import join_cluster, local_device

    choice = resolve_device(settings["device"])
    cluster = join_cluster(choice.device)
    device = local_device(choice.device, cluster)
    if choice.note and cluster.is_main:
        report_note(choice.note)
    return device, cluster


def _model_file(settings: Settings, model: str, option: str) -> tuple[Path, str]:
    """The file a --flow/--init value names and the architecture (spec name) of the super-resolution model in it."""
    from flowsr_cli.families.model_file import read_model_metadata
    from flowsr_cli.families.registry import network, registered_names
    from flowsr_cli.hub.catalog import Hub
    from flowsr_cli.hub.manifest import RESCALE, UPSCALE

    hub = Hub(settings)
    path = hub.resolve(model)
    if path is None:
        known = ", ".join(hub.names_for(UPSCALE))
        raise UsageError(f"{option} {model!r}: no such model file or named model; known: {known}, or a model file")
    name = str(read_model_metadata(path)["spec"].get("name"))
    if name in registered_names() and network(name).task == RESCALE:
        raise UsageError(
            f"{option} {model}: an image rescaling model, not a super-resolution flow; "
            "`flowsr train rescale` trains those"
        )
    return path, name


def _continued_prior(path: Path, family: str) -> str | None:
    """For a flow + prior model, the PRIORS name of its prior (its training continues); None for a bare flow."""
    from flowsr_cli.families.model_file import read_model_metadata
    from flowsr_cli.train.recipe import PRIORS

    if family not in {entry["name"] for entry in PRIORS.values()}:
        return None
    latent = read_model_metadata(path)["spec"]["args"]["latent"]
    for name, entry in PRIORS.items():
        if entry["name"] == family and entry["latent"] in (latent, latent.get("args")):
            return name
    raise UsageError(f"--flow {path}: its {family} prior has a size no recipe names; train a new prior instead")


def _unfaded_beyond(model: nn.Module, scale_max: float, flow: str) -> nn.Module:
    """A continued LINF-LP as it is, unless the recipe trains past where its fade starts: then the same
    weights without the fade (it would shrink what the prior is learning), with a warning."""
    from flowsr_cli.families.linf.prior import LINFLP

    if not isinstance(model, LINFLP) or model.fade is None or scale_max <= model.fade.from_scale:
        return model
    report_warning(
        f"--flow {flow}: its fade beyond x{model.fade.from_scale:g} is dropped because this recipe trains up "
        f"to x{scale_max:g}; recalibrate it with scripts/calibrate_fade.py"
    )
    return model.with_fade(None)


def _batches(data: list[Path], recipe: Recipe, multiple: int, cluster: Cluster) -> Callable[[int], Iterable[Batch]]:
    from flowsr_cli.train.data import BatchStream, CropRecipe, TrainingImages, find_training_images, make_loader

    crop = CropRecipe(recipe.lr_size, recipe.scale_min, recipe.scale_max, multiple=multiple, hr_crop=recipe.hr_crop)
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
    model: nn.Module, folder: Path | None, recipe: Recipe, device: torch.device, settings: Settings, announce: bool
) -> Callable[[], dict[str, float]] | None:
    """Validation on ``folder`` through the same engine as `upscale`, with the consistency projection that
    ``--consistency auto`` gives the exported model; images it cannot score are named (when ``announce``)
    and left out, and a folder with nothing to score is an error before training."""
    if folder is None:
        return None
    import torch

    from flowsr_cli.config import consistency_default
    from flowsr_cli.engine.consistent import ConsistentUpscaler
    from flowsr_cli.engine.upscaler import samples_gaussian
    from flowsr_cli.eval.evaluation import Evaluation, Setting, load_dataset
    from flowsr_cli.families.registry import EngineOptions, build_engine

    options = EngineOptions("validation", device, torch.float32, temperature=0.0, tile=0, guard=False)
    upscaler = build_engine(model, options)
    consistent = consistency_default({})  # the exported model file's metadata: no source, no consistency entry
    if consistent:
        upscaler = ConsistentUpscaler(upscaler)
    setting = Setting("model", "gaussian", 0.0) if samples_gaussian(upscaler) else Setting("model", "learned")
    evaluation = Evaluation([(setting, upscaler)], [recipe.val_scale], 1, 0, None)
    dataset = load_dataset(folder, recipe.val_images, settings["max_pixels"])
    if announce:
        for skip in [*dataset.unreadable, *evaluation.too_small(dataset)]:
            report_warning(f"--val {printable(skip.path)}: {skip.reason}")
    evaluation.check([dataset])
    if announce:
        report_note(
            f"--val {printable(folder)}: PSNR/SSIM at x{recipe.val_scale:g} every {recipe.val_every} steps "
            f"(val_every) and after the last step (consistency {'on' if consistent else 'off'})"
        )

    def validate() -> dict[str, float]:
        ((_, result),) = evaluation.run([dataset], lambda: None)
        return {"psnr_y": result.psnr_y, "ssim": result.ssim, "lr_psnr": result.lr_psnr, "inf_rate": result.inf_rate}

    return validate


def _rescale_validator(
    model: HCFlowRescaler, folder: Path | None, recipe: Recipe, device: torch.device, settings: Settings, announce: bool
) -> Callable[[], dict[str, float]] | None:
    """Validation of a rescaler on ``folder``: the round trip's PSNR-Y/SSIM and the LR's PSNR against the bicubic
    LR (:mod:`flowsr_cli.train.rescale_validation`); images it cannot score are named (when ``announce``) and left
    out, and a folder with nothing to score is an error before training."""
    if folder is None:
        return None
    from flowsr_cli.eval.evaluation import load_dataset, smallest_side
    from flowsr_cli.train.rescale_validation import RescaleValidation

    dataset = load_dataset(folder, recipe.val_images, settings["max_pixels"])
    side = smallest_side(model.scale, lpips=False)
    images = [image for image in dataset.images if image.smaller_side >= side]
    if announce:
        for skip in dataset.unreadable:
            report_warning(f"--val {printable(skip.path)}: {skip.reason}")
        for image in dataset.images:
            if image.smaller_side < side:
                report_warning(f"--val {printable(image.path)}: too small for x{model.scale} (a side below {side})")
    if not images:
        raise UsageError(f"--val {printable(folder)}: no image to validate on (readable, sides of {side} or more)")
    if announce:
        report_note(
            f"--val {printable(folder)}: round-trip PSNR-Y/SSIM and the LR's PSNR against bicubic at "
            f"x{model.scale}, every {recipe.val_every} steps (val_every) and after the last step"
        )
    return RescaleValidation(model, [image.pixels for image in images], device)


def _train(
    model: nn.Module,
    objective: nn.Module,
    recipe: Recipe,
    data: list[Path],
    out: Path,
    cluster: Cluster,
    device: torch.device,
    validate: Callable[[], dict[str, float]] | None,
    resume: Path | None,
) -> None:
    """Run the training loop, leave the process group however it ends, and say where the model is."""
    from flowsr_cli.train.distributed import leave_cluster
    from flowsr_cli.train.loop import RunFiles, Trainer

    fixed_scale = getattr(model, "scale", None)  # SRFlow (-LP), HCFlow: 4; rescalers: 2 or 4; LINF: none
    multiple = fixed_scale or model.patch_size
    trainer = Trainer(
        model, objective, recipe, _batches(data, recipe, multiple, cluster), RunFiles(out), cluster, device, validate
    )
    try:
        exported = trainer.run(resume)
    finally:
        leave_cluster(cluster)
    if cluster.is_main:
        if model.spec["name"] == RESCALER:
            usage = f"flowsr rescale down IMAGE --scale {fixed_scale} --model {printable(exported)}"
        else:
            usage = f"flowsr upscale IMAGE -s {fixed_scale or 3.5} --model {printable(exported)}"
        typer.echo(f"model: {printable(exported)}  (use: {usage})")


@train_app.command("flow", epilog=FLOW_EXAMPLES)
def train_flow(
    data: list[Path] = DATA_ARGUMENT,
    out: Path = OUT_OPTION,
    arch: str | None = typer.Option(
        None,
        "--arch",
        help="LINF: linf-small (CPU-sized), linf-edsr or linf-rrdb (the paper's, for GPUs); SRFlow (x4 only): "
        "srflow-small or srflow; HCFlow (x4 only): hcflow-small or hcflow.",
        show_default=_recipe_default("arch", "linf-small; with --init, the small size of its family"),
        rich_help_panel=_RECIPE,
    ),
    recipe_file: Path | None = RECIPE_OPTION,
    steps: int | None = STEPS_OPTION,
    time_budget: float | None = BUDGET_OPTION,
    batch_size: int | None = BATCH_OPTION,
    learning_rate: float | None = LR_OPTION,
    seed: int | None = SEED_OPTION,
    workers: int | None = WORKERS_OPTION,
    finetune: bool | None = typer.Option(
        None,
        "--finetune/--no-finetune",
        help="Stage 2 (LINF's, or HCFlow+): alternate small-weight NLL steps with L1 steps on the τ=0 output.",
        show_default=_recipe_default("finetune"),
        rich_help_panel=_RECIPE,
    ),
    init: str | None = typer.Option(None, "--init", help="Start from this model file (e.g. stage 1's export)."),
    resume: Path | None = RESUME_OPTION,
    val: Path | None = VAL_OPTION,
    device: str | None = DEVICE_OPTION,
) -> None:
    """Train a flow and export out/model.safetensors: LINF (stage 1: NLL; --finetune: stage 2), SRFlow
    (NLL in bits per pixel, x4) or HCFlow (NLL with its LR term, x4; --finetune: HCFlow+)."""
    from flowsr_cli.train.recipe import ARCHITECTURES, DEFAULT_ARCHITECTURES, load_recipe

    settings = Settings({"device": device})
    init_path, family = _model_file(settings, init, "--init") if init is not None else (None, None)
    recipe = load_recipe(
        recipe_file,
        _overrides(
            arch=arch, steps=steps, time_budget=time_budget, batch_size=batch_size,
            learning_rate=learning_rate, seed=seed, workers=workers, finetune=finetune,
        ),
        {**({"arch": DEFAULT_ARCHITECTURES[family]} if family in DEFAULT_ARCHITECTURES else {}),
         **_resumed_defaults(resume)},
    )  # fmt: skip
    if recipe.arch not in ARCHITECTURES:
        raise UsageError(f"--arch {recipe.arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    if family is not None and family != ARCHITECTURES[recipe.arch]["name"]:
        raise UsageError(f"--init {init}: a {family} model, but --arch {recipe.arch} is not a {family} flow")
    device_, cluster = _device_and_cluster(settings)

    import torch

    from flowsr_cli.families.model_file import load_model
    from flowsr_cli.families.registry import make
    from flowsr_cli.train.objectives import flow_objective

    torch.manual_seed(recipe.seed)
    model = load_model(init_path, device_) if init_path is not None else make(ARCHITECTURES[recipe.arch]).to(device_)
    objective = flow_objective(model, recipe, device_)
    validate = _validator(model, val, recipe, device_, settings, cluster.is_main)
    _train(model, objective, recipe, data, out, cluster, device_, validate, resume)


@train_app.command("prior", epilog=PRIOR_EXAMPLES)
def train_prior(
    data: list[Path] = DATA_ARGUMENT,
    flow: str = typer.Option(
        ...,
        "--flow",
        help="The trained flow (model file or name); it stays frozen. A flow + prior model (e.g. linf-lp) "
        "continues training its prior.",
    ),
    out: Path = OUT_OPTION,
    arch: str | None = typer.Option(
        None,
        "--arch",
        help="LINF: lp-small (CPU-sized) or lp (the paper's); SRFlow: srflow-lp-small or srflow-lp; "
        "HCFlow: hcflow-lp-small or hcflow-lp.",
        show_default=_recipe_default(
            "arch", "lp-small, srflow-lp-small or hcflow-lp-small, as the flow; a flow + prior keeps its own"
        ),
        rich_help_panel=_RECIPE,
    ),
    recipe_file: Path | None = RECIPE_OPTION,
    steps: int | None = STEPS_OPTION,
    time_budget: float | None = BUDGET_OPTION,
    batch_size: int | None = BATCH_OPTION,
    learning_rate: float | None = LR_OPTION,
    seed: int | None = SEED_OPTION,
    workers: int | None = WORKERS_OPTION,
    latent_weight: float | None = typer.Option(
        None,
        "--latent-weight",
        parser=number_flag("--latent-weight", 0),
        help="λ >= 0 of the latent L1 term (the papers' defaults).",
        show_default=_recipe_default("latent_weight", "0 for LINF, 0.1 for SRFlow and HCFlow"),
        rich_help_panel=_RECIPE,
    ),
    resume: Path | None = RESUME_OPTION,
    val: Path | None = VAL_OPTION,
    device: str | None = DEVICE_OPTION,
) -> None:
    """Train the learned-prior latent module on a frozen flow (LINF, SRFlow or HCFlow); export flow + prior as one
    model."""
    from flowsr_cli.train.recipe import DEFAULT_PRIORS, PRIORS, load_recipe

    settings = Settings({"device": device})
    flow_path, family = _model_file(settings, flow, "--flow")
    continued = _continued_prior(flow_path, family)
    flow_family = PRIORS[continued]["flow"] if continued else family
    if flow_family not in DEFAULT_PRIORS:
        raise UsageError(
            f"--flow {flow}: a {family} model; learned priors train on {' or '.join(DEFAULT_PRIORS)} flows"
        )
    recipe = load_recipe(
        recipe_file,
        _overrides(
            arch=arch, steps=steps, time_budget=time_budget, batch_size=batch_size,
            learning_rate=learning_rate, seed=seed, workers=workers, latent_weight=latent_weight,
        ),
        {"arch": continued or DEFAULT_PRIORS[flow_family], **_resumed_defaults(resume)},
    )  # fmt: skip
    fitting = [continued] if continued else [name for name, entry in PRIORS.items() if entry["flow"] == family]
    if recipe.arch not in fitting:
        raise UsageError(f"--arch {recipe.arch!r}: for a {family} flow choose one of {', '.join(fitting)}")
    device_, cluster = _device_and_cluster(settings)

    import torch

    from flowsr_cli.families.model_file import load_model
    from flowsr_cli.families.registry import make
    from flowsr_cli.train.objectives import prior_objective

    frozen = load_model(flow_path, device_)
    torch.manual_seed(recipe.seed)
    if continued:
        model = _unfaded_beyond(frozen, recipe.scale_max, flow)
    else:
        prior = PRIORS[recipe.arch]
        model = make({"name": prior["name"], "args": {"flow": frozen.spec, "latent": prior["latent"]}}).to(device_)
        model.flow.load_state_dict(frozen.state_dict())
    objective = prior_objective(model, recipe, device_)
    validate = _validator(model, val, recipe, device_, settings, cluster.is_main)
    _train(model, objective, recipe, data, out, cluster, device_, validate, resume)


RESCALE_EXAMPLES = """[bold]Examples[/]

# the CPU-sized x4 rescaler, as bundled; the round trip checked on Set5/
flowsr train rescale ~/photos --out runs/rescale-x4 --recipe scripts/recipes/hcflow-rescale-x4.toml --val Set5/
# x2, CPU-sized, for 30 minutes instead of its recipe's 50
flowsr train rescale ~/photos --out runs/rescale-x2 --recipe scripts/recipes/hcflow-rescale-x2.toml --time-budget 30
# the original's x4 network and recipe (for a GPU: 500 k steps of 16 crops of 160 pixels)
flowsr train rescale ~/photos --arch hcflow-rescale --out runs/rescale --steps 500000"""


def _rescale_scale(raw: Any) -> int:
    value = int(str(raw).strip())
    if value not in RESCALE_LEVELS:
        raise ValueError(raw)
    return value


def _check_rescaler(arch: str | None, source: str) -> None:
    """A UsageError unless ``arch`` (from ``source``) is None or a rescaling architecture; checked before the
    recipe, whose checks for other architectures would say something beside the point."""
    if arch is not None and arch not in RESCALERS:
        raise UsageError(f"{source} {arch!r}: choose one of {', '.join(RESCALERS)}")


@train_app.command("rescale", epilog=RESCALE_EXAMPLES)
def train_rescale(
    data: list[Path] = DATA_ARGUMENT,
    out: Path = OUT_OPTION,
    scale: int | None = typer.Option(
        None,
        "--scale",
        parser=flag_parser("--scale", _rescale_scale, "2 or 4"),
        help="2 or 4: the factor the model shrinks by (and restores); it sets scale_min, scale_max and val_scale.",
        show_default="recipe: 4",
        rich_help_panel=_RECIPE,
    ),
    arch: str | None = typer.Option(
        None,
        "--arch",
        help="hcflow-rescale-small (CPU-sized) or hcflow-rescale (the original's, for GPUs); the scale chooses "
        "the levels.",
        show_default="recipe: hcflow-rescale-small",
        rich_help_panel=_RECIPE,
    ),
    recipe_file: Path | None = RECIPE_OPTION,
    steps: int | None = STEPS_OPTION,
    time_budget: float | None = BUDGET_OPTION,
    batch_size: int | None = BATCH_OPTION,
    learning_rate: float | None = typer.Option(
        None,
        "--lr",
        parser=number_flag("--lr", 0, exclusive=True),
        help="Adam learning rate (> 0) before the recipe's milestones lower it.",
        show_default=_recipe_default("learning_rate", FAMILY_DEFAULTS[RESCALER]["learning_rate"]),
        rich_help_panel=_RECIPE,
    ),
    seed: int | None = SEED_OPTION,
    workers: int | None = WORKERS_OPTION,
    resume: Path | None = RESUME_OPTION,
    val: Path | None = typer.Option(
        None,
        "--val",
        help=f"Folder of HR images: the round trip's PSNR-Y/SSIM and the LR's PSNR against bicubic every val_every "
        f"steps ({_recipe_default('val_every')}) and after the last step; each result is printed and logged.",
    ),
    device: str | None = DEVICE_OPTION,
) -> None:
    """Train HCFlow image rescaling (x2 or x4) with the original's losses (LR near bicubic, small latents, the HR
    restored from the 8-bit LR) and export out/model.safetensors for `flowsr rescale`."""
    from flowsr_cli.train.recipe import load_recipe, rescaler_spec

    settings = Settings({"device": device})
    _check_rescaler(arch, "--arch")
    scales = {"scale_min": scale, "scale_max": scale, "val_scale": scale} if scale is not None else {}
    recipe = load_recipe(
        recipe_file,
        _overrides(
            arch=arch, steps=steps, time_budget=time_budget, batch_size=batch_size,
            learning_rate=learning_rate, seed=seed, workers=workers, **scales,
        ),
        {"arch": "hcflow-rescale-small", **_resumed_defaults(resume)},
    )  # fmt: skip
    _check_rescaler(recipe.arch, f"recipe {recipe_file}: arch")
    device_, cluster = _device_and_cluster(settings)

    import torch

    from flowsr_cli.families.registry import make
    from flowsr_cli.train.objectives import flow_objective

    torch.manual_seed(recipe.seed)
    model = make(rescaler_spec(recipe.arch, int(recipe.scale_max))).to(device_)
    objective = flow_objective(model, recipe, device_)
    validate = _rescale_validator(model, val, recipe, device_, settings, cluster.is_main)
    _train(model, objective, recipe, data, out, cluster, device_, validate, resume)
