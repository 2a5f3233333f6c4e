"""What each training command minimises, as modules whose forward() returns the loss (so DDP can wrap them)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from flowsr_cli.engine.projection import project
from flowsr_cli.engine.sampling import LatentSource
from flowsr_cli.families.common.flow_layers import ActNorm
from flowsr_cli.families.hcflow.layers import quantise_8bit
from flowsr_cli.families.hcflow.network import HCFlowSR
from flowsr_cli.families.hcflow.prior import HCFlowLP
from flowsr_cli.families.hcflow.rescaling import HCFlowRescaler
from flowsr_cli.families.linf.network import LINF
from flowsr_cli.families.linf.prior import LINFLP
from flowsr_cli.families.srflow.network import SRFlow
from flowsr_cli.families.srflow.prior import SRFlowLP
from flowsr_cli.train.detail import detail_loss, grid_loss
from flowsr_cli.train.perceptual import VGGPerceptualLoss
from flowsr_cli.train.recipe import Recipe


def zero_latent(batch: int, dim: int) -> LatentSource:
    """A LatentSource of zeros: the flow's mode-like, temperature-0 output."""

    def latent(rows: range, columns: range) -> torch.Tensor:
        return torch.zeros(batch, dim, len(rows) * len(columns))

    return latent


class FlowObjective(nn.Module):
    """LINF stage 1: NLL (nats per query) of random query patches. Stage 2 (fine-tune) alternates a
    small-weight NLL step with an L1 (+ optional VGG) step on the temperature-0 output."""

    def __init__(
        self,
        model: LINF,
        queries: int,
        finetune: bool = False,
        nll_weight: float = 5e-4,
        perceptual: VGGPerceptualLoss | None = None,
        perceptual_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.queries = queries
        self.finetune = finetune
        self.nll_weight = nll_weight
        self.perceptual = perceptual
        self.perceptual_weight = perceptual_weight

    def forward(
        self, lr: torch.Tensor, hr: torch.Tensor, step: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Losses for one batch (LR and HR in [-1, 1]); ``loss`` is the one to minimise."""
        if not self.finetune or step % 2 == 0:
            nll = self.model.nll(lr, hr, self.queries, generator)
            return {"loss": nll * (self.nll_weight if self.finetune else 1.0), "nll": nll}
        output = self.model.render(
            self.model.encode(lr), tuple(hr.shape[-2:]), zero_latent(lr.shape[0], self.model.dim)
        )
        l1 = (output - hr).abs().mean()
        losses = {"l1": l1, "loss": l1}
        if self.perceptual is not None and self.perceptual_weight > 0:
            losses["vgg"] = self.perceptual(output, hr)
            losses["loss"] = l1 + self.perceptual_weight * losses["vgg"]
        return losses


def perceptual_losses(
    perceptual: VGGPerceptualLoss, weight: float, output: torch.Tensor, hr: torch.Tensor
) -> dict[str, torch.Tensor]:
    """A prior's logged losses before its latent term: the perceptual parts, the output's L1 (logged only)
    and ``loss`` = ``weight`` x the perceptual loss."""
    terms = perceptual.terms(output, hr)
    return {**terms, "l1": (output - hr).abs().mean().detach(), "loss": weight * terms["perceptual"]}


class PriorObjective(nn.Module):
    """The learned prior with the flow frozen: VGG perceptual loss of the output (with its texture term if
    weighted) plus ``latent_weight`` x L1(z_hat, z_HR), z_HR being the flow forward of the true residual,
    plus ``detail_weight`` x the detail-energy term (:func:`detail_loss` around the flow's bilinear base)
    plus ``grid_weight`` x the patch-grid term (:func:`grid_loss`, around the same base). With
    ``consistency_iterations`` the output is first back-projected towards the LR (engine/projection.py)."""

    def __init__(
        self,
        model: LINFLP,
        perceptual: VGGPerceptualLoss,
        perceptual_weight: float = 1.0,
        latent_weight: float = 0.0,
        detail_weight: float = 0.0,
        grid_weight: float = 0.0,
        consistency_iterations: int = 0,
    ) -> None:
        super().__init__()
        self.model = model
        self.perceptual = perceptual
        self.perceptual_weight = perceptual_weight
        self.latent_weight = latent_weight
        self.detail_weight = detail_weight
        self.grid_weight = grid_weight
        self.consistency_iterations = consistency_iterations

    def forward(
        self, lr: torch.Tensor, hr: torch.Tensor, step: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Losses for one batch (LR and HR in [-1, 1], aligned: the latent grid is the HR crop's)."""
        size = (int(hr.shape[-2]), int(hr.shape[-1]))
        with torch.no_grad():
            features = self.model.encode(lr)
        conditions = self.model.conditions(features, size)
        z_hat = self.model.predict_latent(features, size, conditions=conditions)
        output = self.model.render_latent(features, size, z_hat, conditions=conditions)
        if self.consistency_iterations:
            output = project(output, lr.float(), self.consistency_iterations, value_range=(-1.0, 1.0))
        losses = perceptual_losses(self.perceptual, self.perceptual_weight, output, hr)
        if self.latent_weight > 0:
            with torch.no_grad():
                z_hr = self.model.latent_of(features, hr)
            losses["latent"] = (z_hat - z_hr).abs().mean()
            losses["loss"] = losses["loss"] + self.latent_weight * losses["latent"]
        if self.detail_weight > 0 or self.grid_weight > 0:
            with torch.no_grad():
                base = LINF.bilinear_base(features, size, range(size[0]), range(size[1]))
        if self.detail_weight > 0:
            losses["detail"] = detail_loss(output, hr, base)
            losses["loss"] = losses["loss"] + self.detail_weight * losses["detail"]
        if self.grid_weight > 0:
            losses["grid"] = grid_loss(output, hr, base, self.model.patch_size)
            losses["loss"] = losses["loss"] + self.grid_weight * losses["grid"]
        return losses


def to_unit(image: torch.Tensor) -> torch.Tensor:
    """[-1, 1] (the training loop's range) -> [0, 1] (SRFlow's), in float32."""
    return (image.float() + 1) / 2


def _actnorms(model: nn.Module) -> list[ActNorm]:
    return [layer for layer in model.modules() if isinstance(layer, ActNorm)]


def needs_actnorm_init(model: nn.Module) -> bool:
    """Whether ``model`` (in training mode) has an ActNorm not yet initialised from data: a fresh model."""
    return model.training and not all(bool(layer.initialized) for layer in _actnorms(model))


@torch.no_grad()
def initialise_actnorms(model: nn.Module, forward: Callable[[], object]) -> None:
    """Glow's data-dependent ActNorm start: ``forward()`` runs once without gradients, and every ActNorm it meets
    initialises from its input. Under DDP every rank then takes rank 0's, so all ranks hold the same model
    (DDP only aligns parameters when it starts)."""
    forward()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for layer in _actnorms(model):
            torch.distributed.broadcast(layer.bias, src=0)
            torch.distributed.broadcast(layer.log_scale, src=0)


class SRFlowObjective(nn.Module):
    """SRFlow: NLL in bits per HR pixel with uniform dequantisation (its only training stage here).

    The flow runs in float32 outside autocast. Before the first step of a fresh model, one no-grad pass
    initialises the ActNorms from this batch (:func:`initialise_actnorms`)."""

    def __init__(self, model: SRFlow) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, lr: torch.Tensor, hr: torch.Tensor, step: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Losses for one batch (LR and HR in [-1, 1], HR exactly 4x the LR)."""
        lr, hr = to_unit(lr), to_unit(hr)
        with torch.autocast(lr.device.type, enabled=False):
            if needs_actnorm_init(self.model):
                initialise_actnorms(self.model, lambda: self.model.log_prob(hr, self.model.encode(lr)))
            nll = self.model.nll_bits_per_pixel(hr, lr, generator=generator)
        return {"loss": nll, "nll": nll}


class HCFlowObjective(nn.Module):
    """HCFlow: the NLL in bits per HR pixel with the LR term (:meth:`HCFlowSR.nll_bits_per_pixel`, HR + U(0, 1) /
    64). HCFlow+ (``finetune``): even steps minimise ``nll_weight`` x that NLL, odd steps the L1 distance of
    the heat-0 output, clamped to [0, 1] as the original's reverse pass returns it, to the HR. The original
    steps both losses separately on every batch; here each optimizer step takes one, on its own batch.

    In float32 outside autocast. A fresh model's ActNorms start from the first batch (:func:`initialise_actnorms`)
    exactly as the original starts them inside its first forward pass: on the dequantised HR of that step (the
    same noise, drawn from a copy of the step's generator)."""

    def __init__(self, model: HCFlowSR, finetune: bool = False, nll_weight: float = 2e-3) -> None:
        super().__init__()
        self.model = model
        self.finetune = finetune
        self.nll_weight = nll_weight

    def forward(
        self, lr: torch.Tensor, hr: torch.Tensor, step: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Losses for one batch (LR and HR in [-1, 1], HR exactly 4x the LR); ``loss`` is the one to minimise."""
        lr, hr = to_unit(lr), to_unit(hr)
        with torch.autocast(lr.device.type, enabled=False):
            if needs_actnorm_init(self.model):
                twin = torch.Generator(generator.device).set_state(generator.get_state())
                initialise_actnorms(self.model, lambda: self.model.nll_bits_per_pixel(hr, lr, generator=twin))
            if not self.finetune or step % 2 == 0:
                nll = self.model.nll_bits_per_pixel(hr, lr, generator=generator)
                return {"loss": nll * (self.nll_weight if self.finetune else 1.0), "nll": nll}
            output = self.model.sample(self.model.encode(lr), 0.0).clamp(0.0, 1.0)
        l1 = (output - hr).abs().mean()
        return {"loss": l1, "l1": l1}


def keep_box_mean_start(model: HCFlowRescaler) -> None:
    """Mark the main flow's ActNorms initialised as they are (the identity), so that the first batch does not
    standardise the Haar bands: the LR starts as the box mean of the HR, a usable thumbnail. The conditional
    flows' ActNorms still start from the first batch."""
    for level in model.flow_levels:
        for step in level.steps:
            step.actnorm.initialized.fill_(True)


class RescaleObjective(nn.Module):
    """HCFlow rescaling, the original's losses (``HCFlow_Rescaling_model.py``) with LR = the model's LR clamped to
    [0, 1] and z = all its latents: ``lr_weight MSE(LR, bicubic LR) + 1e-5 mean(z^2) + L1(HR, clamp(inverse(Q(LR),
    heat 1)))``, Q rounding to 8 bits with a straight-through gradient (:func:`quantise_8bit`); ``lr_weight`` is
    the recipe's ``lr_fidelity_weight`` (the original's: 0.05). The batch's LR is the bicubic LR (the project's
    MATLAB ``imresize``, 8-bit, as the original's DIV2K ``LR_bicubic`` files); the inverse's latents are drawn
    from the step's generator.

    In float32 outside autocast. A fresh model's conditional flows start their ActNorms from the first batch as
    the original's do; the main flow keeps its box-mean start (:func:`keep_box_mean_start`)."""

    latent_weight = 1e-5
    hr_weight = 1.0
    heat = 1.0
    """The original's ``eps_std_reverse``."""

    def __init__(self, model: HCFlowRescaler, lr_weight: float = 0.05) -> None:
        super().__init__()
        self.model = model
        self.lr_weight = lr_weight

    def forward(
        self, lr: torch.Tensor, hr: torch.Tensor, step: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Losses for one batch (LR and HR in [-1, 1], HR exactly ``scale`` x the LR); ``loss`` is the one to
        minimise."""
        lr, hr = to_unit(lr), to_unit(hr)
        with torch.autocast(lr.device.type, enabled=False):
            if needs_actnorm_init(self.model):
                keep_box_mean_start(self.model)
                initialise_actnorms(self.model, lambda: self.model.to_latents(hr))
            model_lr, latents = self.model.to_latents(hr)
            model_lr = model_lr.clamp(0.0, 1.0)
            restored = self.model.upscale(quantise_8bit(model_lr), self.heat, generator=generator).clamp(0.0, 1.0)
        lr_mse = (model_lr - lr).square().mean()
        latent = torch.cat([z.flatten() for z in latents]).square().mean()
        l1 = (restored - hr).abs().mean()
        loss = self.lr_weight * lr_mse + self.latent_weight * latent + self.hr_weight * l1
        return {"loss": loss, "lr_mse": lr_mse, "latent": latent, "l1": l1}


class SRFlowPriorObjective(nn.Module):
    """SRFlow-LP with the flow frozen: VGG perceptual loss of the output plus ``latent_weight`` x
    L1(z_hat, z_HR) over all latent levels, z_HR being the flow's latents of the true HR (the paper: 0.1)."""

    def __init__(
        self,
        model: SRFlowLP | HCFlowLP,
        perceptual: VGGPerceptualLoss,
        perceptual_weight: float = 1.0,
        latent_weight: float = 0.1,
    ) -> None:
        super().__init__()
        self.model = model
        self.perceptual = perceptual
        self.perceptual_weight = perceptual_weight
        self.latent_weight = latent_weight

    def predict(self, features: Any, unit_lr: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The predicted latents and the output they render (in [0, 1])."""
        z_hat = self.model.predict_latents(features, unit_lr)
        return z_hat, self.model.render_latents(features, z_hat)

    def hr_latents(self, features: Any, unit_hr: torch.Tensor) -> list[torch.Tensor]:
        """The frozen flow's latents of the true HR."""
        return self.model.latents_of(features, unit_hr)

    def forward(
        self, lr: torch.Tensor, hr: torch.Tensor, step: int, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Losses for one batch (LR and HR in [-1, 1], HR exactly 4x the LR); ``loss`` is the one to minimise."""
        unit_lr = to_unit(lr)
        with torch.no_grad():
            features = self.model.encode(unit_lr)
        z_hat, output = self.predict(features, unit_lr)
        losses = perceptual_losses(self.perceptual, self.perceptual_weight, output * 2 - 1, hr)
        if self.latent_weight > 0:
            with torch.no_grad():
                z_hr = self.hr_latents(features, to_unit(hr))
            losses["latent"] = latent_l1(z_hat, z_hr)
            losses["loss"] = losses["loss"] + self.latent_weight * losses["latent"]
        return losses


def latent_l1(z_hat: Sequence[torch.Tensor], z_hr: Sequence[torch.Tensor]) -> torch.Tensor:
    """The mean |z_hat - z_HR| over every value of every latent level."""
    return torch.cat([(a.float() - b).abs().flatten(1) for a, b in zip(z_hat, z_hr)], 1).mean()


class HCFlowPriorObjective(SRFlowPriorObjective):
    """HCFlow-LP with the flow frozen, the same losses as :class:`SRFlowPriorObjective`. The latents are
    predicted level by level inside the inverse that renders the output (:meth:`HCFlowLP.predict_and_render`),
    so one pass gives both; z_HR comes from :meth:`HCFlowSR.to_latents`."""

    def predict(self, features: Any, unit_lr: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The latents predicted during the inverse, and its output (in [0, 1])."""
        return self.model.predict_and_render(features, unit_lr)

    def hr_latents(self, features: Any, unit_hr: torch.Tensor) -> list[torch.Tensor]:
        """The frozen flow's latents of the true HR (HCFlow's need no LR features)."""
        return self.model.latents_of(unit_hr)


def _linf_objective(model: nn.Module, recipe: Recipe, device: torch.device) -> nn.Module:
    perceptual = (
        VGGPerceptualLoss(device, recipe.perceptual_loss, recipe.texture_weight)
        if recipe.finetune and recipe.vgg_weight > 0
        else None
    )
    return FlowObjective(
        model, recipe.queries, recipe.finetune, recipe.finetune_nll_weight, perceptual, recipe.vgg_weight
    )


def _srflow_objective(model: nn.Module, recipe: Recipe, device: torch.device) -> nn.Module:
    return SRFlowObjective(model)


def _hcflow_objective(model: nn.Module, recipe: Recipe, device: torch.device) -> nn.Module:
    return HCFlowObjective(model, recipe.finetune, recipe.finetune_nll_weight)


def _rescale_objective(model: nn.Module, recipe: Recipe, device: torch.device) -> nn.Module:
    return RescaleObjective(model, recipe.lr_fidelity_weight)


FlowObjectiveFactory = Callable[[nn.Module, Recipe, torch.device], nn.Module]
FLOW_OBJECTIVES: dict[str, FlowObjectiveFactory] = {
    "linf": _linf_objective,
    "srflow": _srflow_objective,
    "hcflow": _hcflow_objective,
    "hcflow-rescale": _rescale_objective,
}
"""What `train flow` (and `train rescale`, for the rescaler) minimises for each flow (spec name): model, recipe
and device -> the objective."""


def flow_objective(model: nn.Module, recipe: Recipe, device: torch.device) -> nn.Module:
    """The objective `train flow` or `train rescale` minimises for ``model`` (put in training mode), from
    :data:`FLOW_OBJECTIVES`."""
    return FLOW_OBJECTIVES[model.spec["name"]](model.train(), recipe, device)


def _perceptual(recipe: Recipe, device: torch.device) -> tuple[VGGPerceptualLoss, float]:
    """A prior's perceptual loss (with the recipe's texture term) and its weight (``vgg_weight``, else 1)."""
    return VGGPerceptualLoss(device, recipe.perceptual_loss, recipe.texture_weight), recipe.vgg_weight or 1.0


def _linf_prior_objective(model: nn.Module, recipe: Recipe, device: torch.device) -> nn.Module:
    perceptual, weight = _perceptual(recipe, device)
    return PriorObjective(
        model,
        perceptual,
        weight,
        recipe.latent_weight,
        recipe.detail_weight,
        recipe.grid_weight,
        recipe.consistency_iterations,
    )


def _srflow_prior_objective(model: nn.Module, recipe: Recipe, device: torch.device) -> nn.Module:
    return SRFlowPriorObjective(model, *_perceptual(recipe, device), recipe.latent_weight)


def _hcflow_prior_objective(model: nn.Module, recipe: Recipe, device: torch.device) -> nn.Module:
    return HCFlowPriorObjective(model, *_perceptual(recipe, device), recipe.latent_weight)


PRIOR_OBJECTIVES: dict[str, FlowObjectiveFactory] = {
    "linf-lp": _linf_prior_objective,
    "srflow-lp": _srflow_prior_objective,
    "hcflow-lp": _hcflow_prior_objective,
}
"""What `train prior` minimises for each flow + prior model (spec name): model, recipe and device -> the objective."""


def prior_objective(model: nn.Module, recipe: Recipe, device: torch.device) -> nn.Module:
    """The objective `train prior` minimises for ``model`` (put in training mode), from :data:`PRIOR_OBJECTIVES`."""
    return PRIOR_OBJECTIVES[model.spec["name"]](model.train(), recipe, device)
