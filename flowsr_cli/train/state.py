"""Training checkpoints: model, optimizer, step and RNG in one .safetensors file (no pickle)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flowsr_cli.errors import FlowsrError
from flowsr_cli.io.atomic import atomic_write_bytes

KIND = "flowsr-training-state"


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


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = tensor
    for index, values in meta["plain"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


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


def read_training_metadata(path: Path) -> dict[str, Any]:
    """The spec, state and recipe of a training checkpoint (a FlowsrError if it is not one)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
    except Exception as exc:  # safetensors raises its own types for malformed files
        raise FlowsrError(f"{path}: not a readable training checkpoint ({exc})") from None
    if metadata.get("kind") != KIND:
        raise FlowsrError(f"{path}: not a flowsr training checkpoint")
    return {key: json.loads(value) for key, value in metadata.items() if key != "kind"}


def load_training_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> TrainingState:
    """Restore model weights, optimizer state and the RNG from ``path``; returns the step state."""
    from safetensors.torch import load_file

    metadata = read_training_metadata(path)
    if metadata["spec"] != model.spec:
        raise FlowsrError(f"{path}: its model spec differs from this run's; resume with the same --arch/--recipe")
    tensors = load_file(str(path))
    model.load_state_dict(
        {name[len("model.") :]: value for name, value in tensors.items() if name.startswith("model.")}
    )
    optimizer.load_state_dict(_optimizer_state(tensors, metadata["optimizer"]))
    torch.set_rng_state(tensors["rng.torch"])
    return TrainingState(**metadata["state"])
