"""Training recipes: a TOML file of flat keys, overridden by command-line flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from flowsr_cli.errors import UsageError

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "linf-edsr": {
        "name": "linf",
        "args": {"encoder": {"name": "edsr-baseline", "args": {"channels": 64, "blocks": 16}}, "patch_size": 3},
    },
    "linf-rrdb": {
        "name": "linf",
        "args": {"encoder": {"name": "rrdb", "args": {"channels": 64, "blocks": 23, "growth": 32}}, "patch_size": 3},
    },
    "linf-small": {
        "name": "linf",
        "args": {
            "encoder": {"name": "edsr-baseline", "args": {"channels": 32, "blocks": 8}},
            "patch_size": 3,
            "hidden": 128,
            "mlp_layers": 3,
            "flow_layers": 10,
        },
    },
    "srflow": {
        "name": "srflow",
        "args": {"rrdb_blocks": 23, "rrdb_channels": 64, "feature_blocks": [1, 8, 15, 22], "steps": 16, "hidden": 64},
    },
    "srflow-small": {
        "name": "srflow",
        "args": {
            "rrdb_blocks": 8,
            "rrdb_channels": 32,
            "growth": 16,
            "feature_blocks": [1, 3, 5, 7],
            "steps": 4,
            "hidden": 32,
        },
    },
    "hcflow": {
        "name": "hcflow",
        "args": {
            "levels": 2,
            "steps": [13, 13],
            "cond_steps": [13, 13],
            "hidden": 64,
            "cond_hidden": 64,
            "rrdb_blocks": [7, 7],
            "rrdb_channels": 64,
            "growth": 32,
        },
    },
    "hcflow-small": {
        "name": "hcflow",
        "args": {
            "levels": 2,
            "steps": [6, 6],
            "cond_steps": [6, 6],
            "hidden": 64,
            "cond_hidden": 64,
            "rrdb_blocks": [2, 1],
            "rrdb_channels": 64,
            "growth": 16,
        },
    },
}
"""Named flow architectures: the paper's EDSR-baseline and RRDB LINF (3x3 patches), the paper's SRFlow
(~39.5 M parameters), the paper's x4 HCFlow (23.2 M), and CPU-sized ones of each (HCFlow's is
``CPU_CONFIGS["k12"]`` of ``flowsr_cli.families.hcflow.network``, 3.78 M: on 2 CPU cores its steps take
~1.6x k8's but lower the NLL ~2x as much each, so it learns faster per minute)."""

_SMALL_LATENT = {"branch_channels": 16, "growth": 16, "widths": [32, 64, 128, 128]}
PRIORS: dict[str, dict[str, Any]] = {
    "lp": {"name": "linf-lp", "flow": "linf", "latent": {"name": "lp-latent", "args": {}}},
    "lp-small": {"name": "linf-lp", "flow": "linf", "latent": {"name": "lp-latent", "args": _SMALL_LATENT}},
    "srflow-lp": {"name": "srflow-lp", "flow": "srflow", "latent": {}},
    "srflow-lp-small": {"name": "srflow-lp", "flow": "srflow", "latent": _SMALL_LATENT},
    "hcflow-lp": {"name": "hcflow-lp", "flow": "hcflow", "latent": {}},
    "hcflow-lp-small": {"name": "hcflow-lp", "flow": "hcflow", "latent": _SMALL_LATENT},
}
"""Named learned priors: the model they make, the flow they need and their latent module's sizes, the
paper's (LINF's ~4.6 M parameters; SRFlow's ~10 M, one UNet per latent level; HCFlow's the same per level)
and CPU-sized ones."""

RESCALER = "hcflow-rescale"
"""The spec name of the rescaling network (`train rescale`)."""
RESCALERS: dict[str, dict[str, Any]] = {
    "hcflow-rescale": {
        "steps": 8,
        "cond_steps": 6,
        "hidden": 32,
        "cond_hidden": 64,
        "rrdb_blocks": [2, 1],
        "rrdb_channels": 64,
        "growth": 16,
    },
    "hcflow-rescale-small": {
        "steps": 6,
        "cond_steps": 4,
        "hidden": 24,
        "cond_hidden": 32,
        "rrdb_blocks": [1, 1],
        "rrdb_channels": 32,
        "growth": 16,
    },
}
"""Named rescaling architectures (`train rescale`), per level: the steps before and after each split and the
sizes of the parts. ``hcflow-rescale`` is the original's ``FlowNet_Rescaling_x4`` (4.40 M parameters at x4,
2.07 M at x2), ``hcflow-rescale-small`` is ``CPU_CONFIGS["x4-small"]`` / ``["x2-small"]`` of
``flowsr_cli.families.hcflow.rescaling`` (1.55 M / 0.71 M). The scale chooses the levels: :func:`rescaler_spec`."""
RESCALE_LEVELS = {2: 1, 4: 2}
"""The scales HCFlow rescaling trains at, and the flow levels (Haar squeezes) each takes."""

MAX_SEED = 2**64 - 1
"""The largest seed torch takes."""

PERCEPTUAL_LOSSES = ("deep", "lpips-vgg")
"""``deep``: L1 of VGG's deepest features (the paper's). ``lpips-vgg``: LPIPS on its VGG16 backbone (the
evaluation's LPIPS uses AlexNet)."""

DEFAULT_ARCHITECTURES = {"linf": "linf-small", "srflow": "srflow-small", "hcflow": "hcflow-small"}
"""The --arch of `train flow --init` for each flow family (spec name)."""
DEFAULT_PRIORS = {"linf": "lp-small", "srflow": "srflow-lp-small", "hcflow": "hcflow-lp-small"}
"""The --arch of `train prior` for each flow family (spec name)."""
FIXED_SCALES = {"srflow": 4.0, "srflow-lp": 4.0, "hcflow": 4.0, "hcflow-lp": 4.0}
"""Models (spec names) that train at one scale only: SRFlow is x4 (``flowsr_cli.families.srflow.network.SCALE``),
and so are the HCFlow architectures here (L = 2) and the priors on them."""
FINETUNED = {"linf": "LINF's stage 2", "hcflow": "HCFlow+"}
"""The flows (spec names) that have a fine-tuning stage (``finetune``), and what it is called."""
_X4 = {"scale_min": 4.0, "scale_max": 4.0, "val_scale": 4.0}
_HCFLOW_OPTIMISER = {
    "batch_size": 16,
    "learning_rate": 2.5e-4,
    "adam_beta2": 0.99,
    "grad_clip_value": 5.0,
    "grad_clip_norm": 100.0,
}
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "srflow": _X4,
    "srflow-lp": {**_X4, "latent_weight": 0.1},
    "hcflow-lp": {**_X4, "latent_weight": 0.1},
    "hcflow": {
        **_X4,
        **_HCFLOW_OPTIMISER,
        "lr_size": 40,
        "milestones": [0.5, 0.75, 0.9, 0.95],
        "finetune_nll_weight": 2e-3,
    },
    RESCALER: {
        **_X4,
        **_HCFLOW_OPTIMISER,
        "hr_crop": 160,
        "milestones": [0.2, 0.4, 0.6, 0.8, 0.9],
    },
}
"""Recipe values a model's architectures default to (under the recipe file and the flags): SRFlow's
scale, the paper's latent L1 weight for SRFlow-LP and for HCFlow-LP (LINF-LP keeps 0), HCFlow's training
(``train_SR_DF2K_4X_HCFlow.yml``: GT crops of 160, batch 16, Adam 2.5e-4 with beta2 0.99 halved at
0.5/0.75/0.9/0.95 of the run, gradients clipped to 5 per value and 100 in norm; HCFlow+'s NLL weight 2e-3)
and HCFlow rescaling's (``train_Rescaling_DF2K_4X_HCFlow.yml``: x4, the same optimiser and crops, the rate
halved at 0.2/0.4/0.6/0.8/0.9 of the run)."""


def model_name(arch: str) -> str | None:
    """The spec name an architecture, prior or rescaler builds ("linf", "srflow", "hcflow", "linf-lp", "srflow-lp",
    "hcflow-lp", "hcflow-rescale"), None if unknown."""
    if isinstance(arch, str) and arch in RESCALERS:
        return RESCALER
    entry = (ARCHITECTURES.get(arch) or PRIORS.get(arch)) if isinstance(arch, str) else None
    return entry["name"] if entry is not None else None


def rescaler_spec(arch: str, scale: int) -> dict[str, Any]:
    """The model spec of the rescaling architecture ``arch`` (a name in :data:`RESCALERS`) at x``scale`` (2 or 4)."""
    sizes = RESCALERS[arch]
    levels = RESCALE_LEVELS[scale]
    per_level = {"steps": [sizes["steps"]] * levels, "cond_steps": [sizes["cond_steps"]] * levels}
    return {"name": RESCALER, "args": {"levels": levels, **sizes, **per_level}}


@dataclass
class Recipe:
    """Everything that defines a training run besides the data and the output folder."""

    arch: str = "linf-small"
    """A name in ARCHITECTURES (train flow) or PRIORS (train prior)."""
    lr_size: int = 48
    hr_crop: int = 0
    """A fixed HR crop side, the LR side following the drawn scale; 0: HR side = lr_size x scale."""
    scale_min: float = 1.0
    scale_max: float = 4.0
    batch_size: int = 16
    queries: int = 2304
    learning_rate: float = 1e-4
    milestones: list[float] = field(default_factory=lambda: [0.2, 0.4, 0.6, 0.8])
    gamma: float = 0.5
    steps: int = 1000
    """Optimizer steps; with a time budget they only cap it if given explicitly (0: no cap)."""
    time_budget: float = 0.0
    checkpoint_every: int = 200
    val_every: int = 200
    val_images: int = 3
    val_scale: float = 4.0
    log_every: int = 10
    seed: int = 0
    workers: int = 2
    finetune: bool = False
    finetune_nll_weight: float = 5e-4
    vgg_weight: float = 0.0
    perceptual_loss: str = "deep"
    """A name in PERCEPTUAL_LOSSES: deep (VGG's last conv) or lpips-vgg."""
    texture_weight: float = 0.0
    """Weight of the perceptual loss's texture term (Gram matrices of VGG blocks 2-4; deep loss only)."""
    latent_weight: float = 0.0
    detail_weight: float = 0.0
    """Weight of the learned prior's detail-energy term (LINF-LP only; train/detail.py)."""
    grid_weight: float = 0.0
    """Weight of the learned prior's patch-grid term (LINF-LP only; train/detail.py)."""
    consistency_iterations: int = 0
    """Back-projection iterations applied to a prior's output before its losses (engine/projection.py;
    LINF-LP only): trains the prior for the output ``--consistency on`` will show. 0: none."""
    adam_beta2: float = 0.999
    """Adam's second-moment decay (torch's default; HCFlow trains with 0.99)."""
    lr_fidelity_weight: float = 0.05
    """Rescaling only: weight of the MSE between the model's LR and the bicubic LR (the original: 0.05, against
    1 on the L1 of the restored HR; IRN's balance is about 1)."""
    grad_clip_value: float = 0.0
    """Clip every gradient value to [-this, this] before each step (HCFlow: 5). 0: off."""
    grad_clip_norm: float = 0.0
    """Then scale the gradients down to this L2 norm at most, all parameters together (HCFlow: 100). 0: off;
    when on, a step whose gradient norm is not finite is skipped like a non-finite loss."""

    def validate(self) -> None:
        """A UsageError naming the first bad value."""
        checks = (
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.steps >= 0, "steps must be >= 0"),
            (self.time_budget >= 0, "time_budget must be >= 0 minutes"),
            (self.steps > 0 or self.time_budget > 0, "give steps or a time budget"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (all(0 < value < 1 for value in self.milestones), "milestones are fractions of the run, in (0, 1)"),
            (self.checkpoint_every >= 1 and self.log_every >= 1, "checkpoint_every and log_every must be >= 1"),
            (self.queries >= 1, "queries must be >= 1"),
            (self.perceptual_loss in PERCEPTUAL_LOSSES, f"perceptual_loss must be {' or '.join(PERCEPTUAL_LOSSES)}"),
            (self.texture_weight >= 0, "texture_weight must be >= 0"),
            (self.texture_weight == 0 or self.perceptual_loss == "deep", "texture_weight needs perceptual_loss deep"),
            (self.detail_weight >= 0, "detail_weight must be >= 0"),
            (self.grid_weight >= 0, "grid_weight must be >= 0"),
            (0 <= self.consistency_iterations <= 20, "consistency_iterations must be 0 to 20"),
            (0 <= self.adam_beta2 < 1, "adam_beta2 must be in [0, 1)"),
            (self.lr_fidelity_weight >= 0, "lr_fidelity_weight must be >= 0"),
            (self.grad_clip_value >= 0 and self.grad_clip_norm >= 0, "grad_clip_value and grad_clip_norm must be >= 0"),
            (0 <= self.seed <= MAX_SEED, f"seed must be an integer from 0 to {MAX_SEED}"),
            (
                self.detail_weight == self.grid_weight == self.consistency_iterations == 0
                or model_name(self.arch) not in ("srflow-lp", "hcflow-lp"),
                "detail_weight, grid_weight and consistency_iterations are for LINF priors",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise UsageError(f"recipe: {message}")
        if model_name(self.arch) == RESCALER:
            self._validate_rescaling()
        scale = FIXED_SCALES.get(model_name(self.arch))
        if scale is not None and not self.scale_min == self.scale_max == self.val_scale == scale:
            raise UsageError(
                f"recipe: {self.arch} trains at x{scale:g} only: scale_min, scale_max and val_scale must be "
                f"{scale:g} (got {self.scale_min:g}, {self.scale_max:g} and {self.val_scale:g})"
            )
        if scale is not None and self.finetune and model_name(self.arch) not in FINETUNED:
            stages = " and ".join(f"{stage} ({name})" for name, stage in FINETUNED.items())
            raise UsageError(f"recipe: finetune (--finetune) is {stages}; {self.arch} has none")

    def _validate_rescaling(self) -> None:
        """A rescaler trains at one scale, 2 or 4, and has no fine-tuning stage."""
        scales = (self.scale_min, self.scale_max, self.val_scale)
        if not (self.scale_min == self.scale_max == self.val_scale and self.scale_min in RESCALE_LEVELS):
            shown = ", ".join(f"{scale:g}" for scale in scales)
            raise UsageError(
                f"recipe: {self.arch} rescales x2 or x4: scale_min, scale_max and val_scale must be all 2 or all 4 "
                f"(got {shown})"
            )
        if self.finetune:
            raise UsageError(f"recipe: finetune is for train flow; {self.arch} has no fine-tuning stage")


def load_recipe(path: Path | None, overrides: dict[str, Any], defaults: dict[str, Any] | None = None) -> Recipe:
    """The recipe from ``path`` (TOML, flat keys) with non-None ``overrides`` applied, validated.

    ``defaults`` and then the architecture's :data:`FAMILY_DEFAULTS` fill in what neither gives."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise UsageError(f"recipe {path}: cannot read: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"recipe {path}: invalid TOML: {exc}") from None
    known = {item.name for item in dataclasses.fields(Recipe)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UsageError(f"recipe {path}: unknown keys {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    values.update({key: value for key, value in overrides.items() if value is not None})
    values = {**(defaults or {}), **values}
    values = {**FAMILY_DEFAULTS.get(model_name(values.get("arch", Recipe.arch)), {}), **values}
    if values.get("time_budget") and "steps" not in values:
        values["steps"] = 0
    try:
        recipe = Recipe(**{key: _typed(key, value) for key, value in values.items()})
    except TypeError as exc:
        raise UsageError(f"recipe: {exc}") from None
    recipe.validate()
    return recipe


_KINDS = {
    "int": "an integer",
    "float": "a number",
    "str": "text",
    "bool": "true or false",
    "list[float]": "a list of numbers",
}
_FIELD_TYPES = {item.name: item.type for item in dataclasses.fields(Recipe)}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _typed(key: str, value: Any) -> Any:
    """``value`` as the type of the recipe field ``key`` (an int is a float too), or a UsageError naming both."""
    kind = _FIELD_TYPES.get(key)
    if kind == "float" and _is_number(value):
        return float(value)
    if kind == "list[float]" and isinstance(value, list) and all(map(_is_number, value)):
        return [float(item) for item in value]
    if kind is None or type(value).__name__ == kind:
        return value
    raise UsageError(f"recipe: {key} must be {_KINDS.get(kind, kind)}, got {value!r}")


def to_toml(recipe: Recipe) -> str:
    """The recipe as the TOML file that reproduces it."""
    import tomlkit

    return tomlkit.dumps(dataclasses.asdict(recipe))


def learning_rate_at(recipe: Recipe, step: int, total_steps: int) -> float:
    """The paper's multi-step schedule scaled to the run: ``gamma`` at each milestone fraction."""
    passed = sum(1 for fraction in recipe.milestones if step >= fraction * total_steps)
    return recipe.learning_rate * recipe.gamma**passed
