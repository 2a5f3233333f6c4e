"""The one registry of model families: each registers, in one call, its networks (built from specs
``{"name": ..., "args": {...}}``), the engine that runs each of its whole models, and its importer of
original checkpoints. Building a model, running it and importing one all look here, so adding a family
is adding a folder that calls :func:`register_family`, and no other module names it."""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from flowsr_cli.errors import FlowsrError, UsageError
from flowsr_cli.hub.manifest import RESCALE, UPSCALE
from flowsr_cli.io.provenance import DEFAULT_TEMPERATURE

if TYPE_CHECKING:
    import torch
    from torch import nn

    from flowsr_cli.engine.onnx_part import OnnxRuntime
    from flowsr_cli.engine.rescale import Rescaler
    from flowsr_cli.engine.upscaler import Upscaler

Spec = dict[str, Any]


class ModelSpecError(FlowsrError):
    """A spec names an unknown architecture, gives it arguments it does not take, sizes beyond its bounds, or
    describes a model larger than the memory available (exit 2)."""

    exit_code = 2


MAX_INTEGER = 1 << 16
"""The largest integer (in magnitude) a spec may hold anywhere, unless its network bounds that argument."""
MAX_ITEMS = 256
"""The most items of any list or object in a spec."""
MAX_DEPTH = 16
"""The deepest nesting of lists and objects in a spec (a LINF-LP's spec nests 6 deep)."""


def _is_integer(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Bound:
    """Inclusive bounds of an integer argument or, with ``items``, of every item of a list of at most
    that many integers."""

    low: int
    high: int
    items: int | None = None

    def problem(self, value: object) -> str | None:
        """What is wrong with ``value`` ("must be ..."), or None when it is within these bounds."""
        if self.items is None:
            return None if self._fits(value) else f"must be an integer from {self.low} to {self.high}"
        if isinstance(value, (list, tuple)) and len(value) <= self.items and all(map(self._fits, value)):
            return None
        return f"must be a list of at most {self.items} integers from {self.low} to {self.high}"

    def _fits(self, value: object) -> bool:
        return _is_integer(value) and self.low <= value <= self.high


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
    onnx: OnnxRuntime | None = None
    """Set when the run's backend is ``onnx``: an engine swaps the model's plain networks for
    ``onnx.wrap(network, part)`` (which records them; a model without such parts runs on PyTorch)."""


EngineBuilder = Callable[["nn.Module", EngineOptions], "Upscaler"]
"""Builds the tiled upscaler that runs a loaded model on ``options.device``."""

RescalerBuilder = Callable[["nn.Module", EngineOptions], "Rescaler"]
"""Builds the tiled engine that runs a loaded image rescaling model (`flowsr rescale`) on ``options.device``."""

CheckpointConverter = Callable[[Any, Path], "nn.Module | None"]
"""Turns a loaded original checkpoint (read from the given path) into a flowsr model, or returns None
when the checkpoint is not of this family. Raises :class:`~flowsr_cli.families.importing.CheckpointImportError`
for a checkpoint of this family that cannot be converted."""

PriorConverter = Callable[[Any, Path, Any, Path], "nn.Module | None"]
"""Turns a loaded original flow checkpoint and a loaded original learned-prior checkpoint (each with the
path it was read from) into one flowsr model (flow and prior), or returns None when the flow checkpoint
is not of this family. Raises ``CheckpointImportError`` as :data:`CheckpointConverter` does."""


@dataclass(frozen=True)
class Network:
    """One architecture a spec can name."""

    factory: Callable[..., nn.Module]
    """Called with the spec's ``args`` as keyword arguments; it may declare ``spec_bounds``, ``spec_parts``,
    ``default_temperature`` and ``scale`` or ``scale_of`` (see :attr:`bounds`, :attr:`parts`,
    :attr:`default_temperature` and :meth:`fixed_scale`)."""
    engine: EngineBuilder | None = None
    """For a whole model: builds its upscaler. None for parts (encoders, latent modules)."""
    learned_prior: bool = False
    """True when the model predicts its latents (``--prior learned`` is its default)."""
    rescaler: RescalerBuilder | None = None
    """For an image rescaling model (it makes the LR itself, then restores the HR from it): builds the engine
    `flowsr rescale down/up` runs it with. None for SR models and parts."""

    @property
    def task(self) -> str:
        """What a whole model of this network does, as manifests record it: rescaling or super-resolution."""
        return RESCALE if self.rescaler is not None else UPSCALE

    @property
    def bounds(self) -> Mapping[str, Bound]:
        """The factory's ``spec_bounds``: bounds of integer arguments by name (``"latent.widths"``: the
        ``widths`` entry of the object given as ``latent``), checked before anything is built; integers
        without one only have to be within ``MAX_INTEGER``."""
        return getattr(self.factory, "spec_bounds", {})

    @property
    def parts(self) -> tuple[str, ...]:
        """The factory's ``spec_parts``: arguments that are specs of other networks (e.g. LINF's
        ``encoder``), checked as specs in turn."""
        return getattr(self.factory, "spec_parts", ())

    @property
    def default_temperature(self) -> float:
        """The factory's ``default_temperature``: the Gaussian prior's temperature its models sample at when
        none is given (:data:`~flowsr_cli.io.provenance.DEFAULT_TEMPERATURE`, 0.5, unless it declares one)."""
        return float(getattr(self.factory, "default_temperature", DEFAULT_TEMPERATURE))

    def fixed_scale(self, args: Mapping[str, Any]) -> int | None:
        """The one scale the model a spec's ``args`` build produces, or None for any scale: the factory's
        ``scale_of(args)`` where it has one (HCFlow: 2^levels), else its ``scale`` attribute (SRFlow: 4)."""
        scale_of = getattr(self.factory, "scale_of", None)
        return scale_of(args) if scale_of is not None else getattr(self.factory, "scale", None)


@dataclass(frozen=True)
class Importer:
    """Recognises and converts one family's original checkpoints."""

    expects: str
    """What the family's checkpoints look like, for the error when no importer recognises a file."""
    convert: CheckpointConverter
    convert_with_prior: PriorConverter | None = None
    """Imports a flow checkpoint together with an original learned prior (``models import --prior``)."""


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


def network(name: str) -> Network:
    """The registered network a spec name names; a ModelSpecError listing the known ones if none does."""
    for family in _FAMILIES.values():
        if name in family.networks:
            return family.networks[name]
    raise ModelSpecError(f"unknown model architecture {name!r}; known: {', '.join(registered_names())}")


def check_spec(spec: object) -> None:
    """Refuse (:class:`ModelSpecError`) a spec that names no registered network, gives it arguments it does
    not take, or holds sizes beyond its network's bounds; the specs of its parts are checked in turn.
    Nothing is built, so a spec from an untrusted file costs nothing to check."""
    _checked(spec)


def _checked(spec: object, depth: int = 1) -> tuple[str, Network, dict[str, Any]]:
    """The name, network and arguments of a spec that passes :func:`check_spec` (its args ``depth`` levels deep)."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ModelSpecError(f"a model spec needs a 'name' string, got {_shown(spec)}")
    name = spec["name"]
    architecture = network(name)
    args = spec.get("args", {})
    if not isinstance(args, Mapping) or not all(isinstance(key, str) for key in args):
        raise ModelSpecError(f"model {name!r}: its args must be an object of named arguments, got {_shown(args)}")
    if depth > MAX_DEPTH:
        raise ModelSpecError(f"model {name!r}: its spec is nested deeper than {MAX_DEPTH} levels")
    try:
        inspect.signature(architecture.factory).bind(**args)
    except TypeError as exc:
        raise ModelSpecError(f"bad arguments for model {name!r}: {exc}") from None
    for key, bound in architecture.bounds.items():
        _check_bound(name, args, key, bound)
    for key in architecture.parts:
        if key in args:
            try:
                _checked(args[key], depth + 2)
            except ModelSpecError as exc:
                raise ModelSpecError(f"model {name!r}: argument {key}: {exc}") from None
    plain = {key: value for key, value in args.items() if key not in architecture.parts}
    problem = next(_value_problems(plain, "", depth), None)
    if problem is not None:
        raise ModelSpecError(f"model {name!r}: argument {problem[0]} {problem[1]}")
    return name, architecture, dict(args)


def _value_problems(value: object, where: str, depth: int) -> Iterator[tuple[str, str]]:
    """(where, problem) for what no spec holds: nesting deeper than MAX_DEPTH, containers of more than
    MAX_ITEMS items, integers beyond MAX_INTEGER and numbers that are not finite."""
    if depth > MAX_DEPTH:
        yield where, f"is nested deeper than {MAX_DEPTH} levels"
    elif isinstance(value, (Mapping, list, tuple)):
        if len(value) > MAX_ITEMS:
            yield where, f"holds {len(value)} items, more than the {MAX_ITEMS} any spec needs"
        items = value.items() if isinstance(value, Mapping) else enumerate(value)
        for key, item in items:
            yield from _value_problems(item, f"{where}.{key}" if where else str(key), depth + 1)
    elif _is_integer(value) and abs(value) > MAX_INTEGER:
        yield where, f"= {_shown(value)} is more than any size flowsr takes (at most {MAX_INTEGER})"
    elif isinstance(value, float) and not math.isfinite(value):
        yield where, f"= {value!r} is not a finite number"


def _check_bound(name: str, args: Mapping[str, Any], key: str, bound: Bound) -> None:
    """Refuse an argument (``key``, dotted for an entry of an object argument) outside its bound."""
    value: object = args
    parts = key.split(".")
    for index, part in enumerate(parts):
        if not isinstance(value, Mapping):
            parent = ".".join(parts[:index])
            raise ModelSpecError(f"model {name!r}: argument {parent} must be an object, got {_shown(value)}")
        if part not in value:
            return
        value = value[part]
    problem = bound.problem(value)
    if problem is not None:
        raise ModelSpecError(f"model {name!r}: argument {key} = {_shown(value)} {problem}")


_BUILDING: ContextVar[bool] = ContextVar("building", default=False)
"""True while :func:`make` builds a model, so the parts it makes are not estimated again."""


def make(spec: Mapping[str, Any]) -> nn.Module:
    """Build the model a spec describes; the module keeps a copy of its spec in ``module.spec``.

    The spec is checked first (:func:`check_spec`), then the whole model is built once on torch's meta
    device (no memory) to count its weights: a model that would not fit in the memory available is refused
    before anything is allocated."""
    name, network, args = _checked(spec)
    if _BUILDING.get():
        return _build(name, network, args)
    token = _BUILDING.set(True)
    try:
        _check_memory(name, network, args)
        return _build(name, network, args)
    finally:
        _BUILDING.reset(token)


def _build(name: str, network: Network, args: dict[str, Any]) -> nn.Module:
    try:
        module = network.factory(**copy.deepcopy(args))
    except (TypeError, ValueError) as exc:
        raise ModelSpecError(f"bad arguments for model {name!r}: {' '.join(str(exc).split())}") from None
    module.spec = {"name": name, "args": args}
    return module


def _check_memory(name: str, network: Network, args: dict[str, Any]) -> None:
    """Refuse a model whose weights (float32) need more than the memory available, counted on the meta device."""
    import torch

    from flowsr_cli.engine.memory import available_memory

    try:
        with torch.device("meta"):
            shadow = _build(name, network, args)
    except RuntimeError as exc:  # e.g. a negative size in a network that does not bound it
        raise ModelSpecError(f"bad arguments for model {name!r}: {' '.join(str(exc).split())}") from None
    needed = sum(tensor.numel() * tensor.element_size() for tensor in (*shadow.parameters(), *shadow.buffers()))
    available = available_memory(torch.device("cpu"))
    if needed > available:
        raise ModelSpecError(
            f"model {name!r} needs {needed / 1e9:,.1f} GB for its weights, more than the "
            f"{available / 1e9:,.1f} GB of memory available"
        )


def runnable(spec_name: str, model: str, prior: str | None) -> Network:
    """The network of a whole model that an engine can run with ``prior`` (UsageError naming ``model``, as the
    user wrote it, otherwise)."""
    architecture = network(spec_name)
    if prior == "learned" and not architecture.learned_prior:
        raise UsageError(f"model {model!r} has no learned prior; use --prior gaussian")
    if architecture.engine is None and architecture.rescaler is not None:
        raise UsageError(
            f"model {model!r} is a {spec_name}, which `upscale` cannot run: it is an image rescaling model, whose "
            "inverse restores only the LRs it made itself; use `flowsr rescale down` and `flowsr rescale up`"
        )
    if architecture.engine is None:
        raise UsageError(f"model {model!r} is a {spec_name}, which `upscale` cannot run yet")
    return architecture


def rescaling(spec_name: str, model: str) -> Network:
    """The network of a whole image rescaling model (UsageError naming ``model``, as the user wrote it, for any
    other)."""
    architecture = network(spec_name)
    if architecture.rescaler is None:
        raise UsageError(
            f"model {model!r} is a {spec_name}, not an image rescaling model; `flowsr rescale` needs one "
            f"(e.g. {', '.join(name for name in registered_names() if network(name).rescaler is not None)})"
        )
    return architecture


def build_rescaler(model: nn.Module, options: EngineOptions) -> Rescaler:
    """The rescaling engine that runs ``model`` (built by :func:`make`) as ``options`` ask, from its family's."""
    builder = rescaling(model.spec["name"], options.name).rescaler
    assert builder is not None  # rescaling() refuses networks without one
    return builder(model, options)


def build_engine(model: nn.Module, options: EngineOptions) -> Upscaler:
    """The upscaler that runs ``model`` (built by :func:`make`) as ``options`` ask, from its family's engine."""
    engine = runnable(model.spec["name"], options.name, options.prior).engine
    assert engine is not None  # runnable() refuses networks without one
    return engine(model, options)
