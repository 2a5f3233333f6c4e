"""The one registry of model families: each registers, in one call, its networks (built from specs
``{"name": ..., "args": {...}}``), the engine that runs each of its whole models, and its importer of
original checkpoints. Building a model, running it and importing one all look here, so adding a family
is adding a folder that calls :func:`register_family`, and no other module names it."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowsr_cli.errors import FlowsrError, UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from flowsr_cli.engine.upscaler import Upscaler

Spec = dict[str, Any]


class ModelSpecError(FlowsrError):
    """A spec names an unknown architecture or gives it arguments it does not take (exit 2)."""

    exit_code = 2


@dataclass(frozen=True)
class EngineOptions:
    """How a run wants a loaded model upscaled: what an engine builder receives."""

    name: str
    """The model as the user named it, for messages."""
    device: torch.device
    dtype: torch.dtype
    """Compute dtype of the encoder and conditioning (flow inverses stay float32)."""
    temperature: float = 0.0
    prior: str | None = None
    """``learned`` or ``gaussian``; None: the model's own default (its learned prior where it has one)."""
    tile: str | int = "auto"
    tile_pad: str | int = "auto"
    guard: bool = True
    """Repair exploding inverses; evaluation turns it off to measure the raw inf rate."""
    notes: list[str] = field(default_factory=list)
    """Things to tell the user once per run (e.g. running on the CPU); the engine keeps adding to it."""


EngineBuilder = Callable[["nn.Module", EngineOptions], "Upscaler"]
"""Builds the tiled upscaler that runs a loaded model on ``options.device``."""

CheckpointConverter = Callable[[Any, Path], "nn.Module | None"]
"""Turns a loaded original checkpoint (read from the given path) into a flowsr model, or returns None
when the checkpoint is not of this family. Raises :class:`~flowsr_cli.families.importing.CheckpointImportError`
for a checkpoint of this family that cannot be converted."""


@dataclass(frozen=True)
class Network:
    """One architecture a spec can name."""

    factory: Callable[..., nn.Module]
    """Called with the spec's ``args`` as keyword arguments."""
    engine: EngineBuilder | None = None
    """For a whole model: builds its upscaler. None for parts (encoders, latent modules)."""
    learned_prior: bool = False
    """True when the model predicts its latents (``--prior learned`` is its default)."""


@dataclass(frozen=True)
class Importer:
    """Recognises and converts one family's original checkpoints."""

    expects: str
    """What the family's checkpoints look like, for the error when no importer recognises a file."""
    convert: CheckpointConverter


@dataclass(frozen=True)
class Family:
    """Everything one model family adds: its networks by spec name, and its importer (if any)."""

    name: str
    networks: Mapping[str, Network]
    importer: Importer | None = None


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> None:
    """Make a family's networks buildable, its models runnable and its checkpoints importable."""
    if family.name in _FAMILIES:
        raise ValueError(f"model family {family.name!r} registered twice")
    taken = set(registered_names()) & set(family.networks)
    if taken:
        raise ValueError(f"model names {sorted(taken)} of family {family.name!r} are registered already")
    _FAMILIES[family.name] = family


def unregister_family(name: str) -> None:
    """Forget a family (a plugin or test that added one for a while)."""
    del _FAMILIES[name]


def registered_names() -> list[str]:
    """Every architecture name :func:`make` knows."""
    return sorted(name for family in _FAMILIES.values() for name in family.networks)


def importers() -> list[Importer]:
    """The registered importers of original checkpoints, in registration order."""
    return [family.importer for family in _FAMILIES.values() if family.importer is not None]


def _network(name: str) -> Network:
    for family in _FAMILIES.values():
        if name in family.networks:
            return family.networks[name]
    raise ModelSpecError(f"unknown model architecture {name!r}; known: {', '.join(registered_names())}")


def make(spec: Mapping[str, Any]) -> nn.Module:
    """Build the model a spec describes; the module keeps a copy of its spec in ``module.spec``."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ModelSpecError(f"a model spec needs a 'name' string, got {spec!r}")
    name = spec["name"]
    args = dict(spec.get("args") or {})
    network = _network(name)
    try:
        module = network.factory(**copy.deepcopy(args))
    except TypeError as exc:
        raise ModelSpecError(f"bad arguments for model {name!r}: {exc}") from None
    module.spec = {"name": name, "args": args}
    return module


def build_engine(model: nn.Module, options: EngineOptions) -> Upscaler:
    """The upscaler that runs ``model`` (built by :func:`make`) as ``options`` ask, from its family's engine."""
    name = model.spec["name"]
    network = _network(name)
    if options.prior == "learned" and not network.learned_prior:
        raise UsageError(f"model {options.name!r} has no learned prior; use --prior gaussian")
    if network.engine is None:
        raise UsageError(f"model {options.name!r} is a {name}, which `upscale` cannot run yet")
    return network.engine(model, options)
