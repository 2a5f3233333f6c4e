"""Models are built from specs ``{"name": ..., "args": {...}}`` through one small registry."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

from flowsr_cli.errors import FlowsrError

Spec = dict[str, Any]
Factory = TypeVar("Factory", bound=Callable[..., nn.Module])

_FACTORIES: dict[str, Callable[..., nn.Module]] = {}


class ModelSpecError(FlowsrError):
    """A spec names an unknown architecture or gives it arguments it does not take (exit 2)."""

    exit_code = 2


def register(name: str) -> Callable[[Factory], Factory]:
    """Class decorator: make ``name`` buildable by :func:`make`."""

    def decorator(factory: Factory) -> Factory:
        if name in _FACTORIES:
            raise ValueError(f"model name {name!r} registered twice")
        _FACTORIES[name] = factory
        return factory

    return decorator


def registered_names() -> list[str]:
    """Every architecture name :func:`make` knows."""
    return sorted(_FACTORIES)


def make(spec: Mapping[str, Any]) -> nn.Module:
    """Build the model a spec describes; the module keeps a copy of its spec in ``module.spec``."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise ModelSpecError(f"a model spec needs a 'name' string, got {spec!r}")
    name = spec["name"]
    args = dict(spec.get("args") or {})
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ModelSpecError(f"unknown model architecture {name!r}; known: {', '.join(registered_names())}")
    try:
        module = factory(**copy.deepcopy(args))
    except TypeError as exc:
        raise ModelSpecError(f"bad arguments for model {name!r}: {exc}") from None
    module.spec = {"name": name, "args": args}
    return module
