"""Training checkpoints: model, optimizer, step and RNG in one .safetensors file (no pickle).

A checkpoint given to ``--resume`` is checked whole before anything is restored: a file that is not one,
or whose weights, optimizer state, step counts or random-number state do not fit this run, is refused
with one :class:`~flowsr_cli.errors.UsageError` naming it, and the run's model is left untouched.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flowsr_cli.errors import UsageError
from flowsr_cli.families.model_file import weights_mismatch
from flowsr_cli.io.atomic import atomic_write_bytes

KIND = "flowsr-training-state"
METADATA = ("spec", "state", "recipe", "optimizer")
"""The JSON entries of a checkpoint's metadata (besides its kind)."""
MAX_STEP = 2**62
"""More optimizer steps than any run makes (step counts must also fit torch's int64)."""


@dataclass
class TrainingState:
    """What a resumed run needs besides its data: where it was and how far it will go."""

    step: int
    total_steps: int
    skipped_steps: int = 0


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "plain": plain}


def save_training_state(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainingState, recipe: dict[str, Any]
) -> None:
    """Write everything needed to continue exactly, atomically."""
    from safetensors.torch import save

    tensors = {f"model.{name}": value.detach().cpu().contiguous() for name, value in model.state_dict().items()}
    optimizer_tensors, optimizer_meta = _optimizer_tensors(optimizer)
    tensors.update(optimizer_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    metadata = {
        "kind": KIND,
        "spec": json.dumps(model.spec),
        "state": json.dumps(state.__dict__),
        "recipe": json.dumps(recipe),
        "optimizer": json.dumps(optimizer_meta),
    }
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def _unusable(path: Path, problem: str) -> UsageError:
    """The error for a checkpoint that cannot be resumed, naming the file and the problem on one line."""
    return UsageError(f"training checkpoint {path}: {' '.join(problem.split())}")


def read_training_metadata(path: Path) -> dict[str, Any]:
    """The spec, state, recipe and optimizer layout of a training checkpoint (a UsageError if it is not one)."""
    from safetensors import safe_open

    if not path.is_file():
        raise _unusable(path, "not found")
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
    except Exception as exc:  # safetensors raises its own types for malformed files
        raise _unusable(path, f"not a readable .safetensors file ({exc})") from None
    if metadata.get("kind") != KIND:
        raise _unusable(path, "not a flowsr training checkpoint")
    parsed = {}
    for key in METADATA:
        if key not in metadata:
            raise _unusable(path, f"its metadata has no {key!r}")
        try:
            parsed[key] = json.loads(metadata[key])
        except RecursionError:
            raise _unusable(path, f"its {key} is not valid JSON (nested too deeply)") from None
        except ValueError as exc:
            raise _unusable(path, f"its {key} is not valid JSON ({exc})") from None
    return parsed


def read_training_progress(path: Path) -> TrainingState:
    """The step counts of the training checkpoint ``path`` (where it stopped, its planned total), read
    without restoring anything; a UsageError naming it when it is not a usable checkpoint."""
    return _training_state(path, read_training_metadata(path)["state"])


def spec_differences(saved: dict[str, Any], wanted: dict[str, Any], where: str = "") -> str:
    """What differs between a checkpoint's model spec and this run's, e.g. ``levels: 2 in the file, 1 here``; the
    specs of parts (an LP model's flow) and other nested arguments are compared inside, named by a dotted path
    (``flow.levels: ...``)."""
    if saved.get("name") != wanted.get("name"):
        return f"{where + ': ' if where else ''}a {saved.get('name')} in the file, a {wanted.get('name')} here"
    return "; ".join(_argument_differences(saved.get("args", {}), wanted.get("args", {}), where))


def _argument_differences(saved: dict[str, Any], wanted: dict[str, Any], where: str) -> Iterator[str]:
    """One ``path: old in the file, new here`` per differing argument, descending into dictionaries and specs."""
    for key in sorted(saved.keys() | wanted.keys()):
        old, new, path = saved.get(key), wanted.get(key), f"{where}.{key}" if where else key
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            nested_spec = "name" in old and "name" in new
            yield spec_differences(old, new, path) if nested_spec else "; ".join(_argument_differences(old, new, path))
        else:
            yield f"{path}: {old} in the file, {new} here"


def load_training_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> TrainingState:
    """Restore model weights, optimizer state and the RNG from ``path``; returns the step state.

    Everything is checked against this run first; the optimizer's hyperparameters stay this run's (the
    recipe sets the learning rate at every step), the file gives its per-parameter state."""
    from safetensors.torch import load_file

    metadata = read_training_metadata(path)
    if metadata["spec"] != model.spec:
        differences = spec_differences(metadata["spec"], model.spec)
        raise _unusable(
            path,
            f"its model differs from this run's ({differences}); resume with the same --arch/--recipe/--scale",
        )
    state = _training_state(path, metadata["state"])
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own types for malformed data
        raise _unusable(path, f"its tensors cannot be read ({exc})") from None
    weights = {name.removeprefix("model."): value for name, value in tensors.items() if name.startswith("model.")}
    mismatch = weights_mismatch(model.state_dict(), weights)
    if mismatch:
        raise _unusable(path, f"its model weights do not fit this run's model ({mismatch})")
    optimizer_state = _optimizer_state(path, tensors, metadata["optimizer"], optimizer)
    rng = _rng_state(path, tensors)
    model.load_state_dict(weights)
    optimizer.load_state_dict(optimizer_state)
    torch.set_rng_state(rng)
    return state


def _training_state(path: Path, values: object) -> TrainingState:
    """The step counts of a checkpoint: whole numbers from 0 to MAX_STEP, under TrainingState's names."""
    fields = [field.name for field in dataclasses.fields(TrainingState)]
    required = {field.name for field in dataclasses.fields(TrainingState) if field.default is dataclasses.MISSING}
    valid = (
        isinstance(values, dict)
        and required <= set(values) <= set(fields)
        and all(type(value) is int and 0 <= value <= MAX_STEP for value in values.values())
    )
    if not valid:
        raise _unusable(path, f"its step counts are not {', '.join(fields)} as whole numbers >= 0")
    return TrainingState(**values)  # type: ignore[arg-type]


def _per_parameter_entries(optimizer: torch.optim.Optimizer) -> dict[str, bool | None]:
    """What this kind of optimizer keeps for each parameter once it has stepped: entry name -> True for a
    tensor shaped like the parameter, False for a scalar tensor, None for a plain value. Found by one step
    of a twin optimizer on a probe parameter."""
    probe = torch.zeros(2, requires_grad=True)
    twin = type(optimizer)([probe], **optimizer.defaults)
    probe.grad = torch.zeros(2)
    twin.step()
    return {
        key: (value.dim() > 0 if isinstance(value, torch.Tensor) else None) for key, value in twin.state[probe].items()
    }


def _optimizer_state(
    path: Path, tensors: dict[str, torch.Tensor], meta: object, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """The optimizer's state dict from a checkpoint, once every entry fits this run's parameters."""
    live = optimizer.state_dict()["param_groups"]
    groups = meta.get("param_groups") if isinstance(meta, dict) else None
    plain = meta.get("plain") if isinstance(meta, dict) else None
    if _group_sizes(groups) != [len(group["params"]) for group in live] or not isinstance(plain, dict):
        raise _unusable(path, "its optimizer state does not match this run's parameters")
    saved: list[tuple[str, str, object]] = []
    for name, tensor in tensors.items():
        if name.startswith("optimizer."):
            index, _, key = name.removeprefix("optimizer.").partition(".")
            saved.append((index, key, tensor))
    for index, values in plain.items():
        if not isinstance(values, dict):
            raise _unusable(path, f"its optimizer state of parameter {index} is not a set of named values")
        saved += [(index, key, value) for key, value in values.items()]
    parameters = [parameter for group in optimizer.param_groups for parameter in group["params"]]
    entries = _per_parameter_entries(optimizer)
    state: dict[int, dict[str, Any]] = {}
    for index, key, value in saved:
        problem = _entry_problem(entries, parameters, index, key, value)
        if problem is not None:
            raise _unusable(path, f"its optimizer entry optimizer.{index}.{key} {problem}")
        state.setdefault(int(index), {})[key] = value
    for index, values in state.items():
        missing = sorted(set(entries) - set(values))
        if missing:
            raise _unusable(path, f"its optimizer state of parameter {index} lacks {', '.join(missing)}")
    return {"state": state, "param_groups": live}


def _group_sizes(groups: object) -> list[int | None] | None:
    """How many parameters each saved parameter group holds (None for what is not a group)."""
    if not isinstance(groups, list):
        return None
    return [
        len(group["params"]) if isinstance(group, dict) and isinstance(group.get("params"), list) else None
        for group in groups
    ]


def _entry_problem(
    entries: dict[str, bool | None], parameters: list[torch.Tensor], index: str, key: str, value: object
) -> str | None:
    """What is wrong with the saved optimizer entry ``key`` of parameter ``index`` (see
    :func:`_per_parameter_entries`), or None when it fits."""
    if not (index.isascii() and index.isdigit() and int(index) < len(parameters)) or key not in entries:
        return "is not one this run's optimizer keeps"
    if entries[key] is None:
        return None if not isinstance(value, torch.Tensor) else "should be a plain value, not a tensor"
    shape = tuple(parameters[int(index)].shape) if entries[key] else ()
    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or tuple(value.shape) != shape:
        found = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        return f"has shape {found}, not a float tensor of shape {shape}"
    return None


def _rng_state(path: Path, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The checkpoint's CPU random-number state, once a scratch generator accepts it."""
    rng = tensors.get("rng.torch")
    reference = torch.get_rng_state()
    if rng is None or rng.dtype != reference.dtype or rng.shape != reference.shape:
        raise _unusable(path, "it holds no valid random-number state (rng.torch)")
    try:
        torch.Generator().set_state(rng)
    except RuntimeError:
        raise _unusable(path, "it holds no valid random-number state (rng.torch)") from None
    return rng
