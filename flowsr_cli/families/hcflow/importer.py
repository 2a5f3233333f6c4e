"""Converting the original HCFlow SR state dicts (github.com/JingyunLiang/HCFlow: ``SR_DF2K_X4_HCFlow.pth``,
``...HCFlow+.pth``, ``...HCFlow++.pth``, ``SR_CelebA_X8_HCFlow*.pth``) into flowsr's :class:`HCFlowSR`.

The files hold ``HCFlowNet_SR.state_dict()`` (``module.``-prefixed when saved from DataParallel):

* ``flow.layers.{i}``: per level l a ``SqueezeLayer`` and a ``Split`` (no weights) around the unconditional
  ``FlowStep``s, each ``actnorm.{bias,logs}``, ``permute.weight`` (the full 1x1 weight) and the coupling's ``FCN``
  ``affine.f.conv{1,2}.{weight,actnorm.bias,actnorm.logs}``, ``affine.f.conv3.{weight,bias,logs}``;
* ``flow.level{l}_condFlow``: ``conv_first``, ``RRDB_trunk{0,1}.{b}.RDB{1,2,3}.conv{1-5}``, ``trunk_conv1``,
  ``additional_flow_steps.{k}`` (FlowSteps as above) and the prior ``f.{weight,bias,logs}``.

Our layers compute what the original's compute with the same weights, so the conversion only renames; the
spec (levels, steps, widths, RRDB sizes) comes from the names and shapes. The rescaling model
(``Rescaling_DF2K_X4_HCFlow.pth``) has the same layout with Haar squeezes and dense-block couplings
(``affine.f.conv1``-``conv5``): :mod:`flowsr_cli.families.hcflow.rescaling_importer` converts it with the
helpers here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flowsr_cli.errors import FlowsrError
from flowsr_cli.families.importing import import_failure, is_plain_tensor, listed
from flowsr_cli.families.registry import make

HCFLOW_CHECKPOINTS = "an HCFlow SR or rescaling state dict (flow.layers.*, flow.level{l}_condFlow.*)"
"""What the family's importer recognises."""

_FLOW_KEY = re.compile(r"^flow\.(?:layers\.\d+|level\d+_condFlow)\.")
_LAYER = re.compile(r"^flow\.layers\.(\d{1,9})\.")
_COND_FLOW = re.compile(r"^flow\.level(\d{1,9})_condFlow\.")
MAX_LEVELS = 4
"""More levels than any HCFlow flowsr builds (the original has 2 for x4 and 3 for x8)."""
_STEP_RENAMES = (
    ("actnorm.log_scale", "actnorm.logs"),
    ("coupling.net.0.", "affine.f.conv1."),
    ("coupling.net.2.", "affine.f.conv2."),
    ("coupling.net.4.", "affine.f.conv3."),
)
_DENSE_CONV = re.compile(r"coupling\.net\.convs\.(\d)\.")
"""The rescaling steps' dense blocks: ``convs.{i}`` is the original's ``conv{i+1}``."""
_COND_RENAMES = (
    (re.compile(r"^trunk([01])\.(\d+)\.blocks\.(\d)\.convs\.(\d)\."), lambda m: _rdb(m, int(m.group(4)) + 1)),
    (re.compile(r"^trunk([01])\.(\d+)\.blocks\.(\d)\.fuse\."), lambda m: _rdb(m, 5)),
    (re.compile(r"^trunk_conv\."), lambda m: "trunk_conv1."),
    (re.compile(r"^prior\."), lambda m: "f."),
    (re.compile(r"^steps\."), lambda m: "additional_flow_steps."),
)


def _rdb(match: re.Match[str], conv: int) -> str:
    trunk, block, dense = match.group(1), match.group(2), int(match.group(3)) + 1
    return f"RRDB_trunk{trunk}.{block}.RDB{dense}.conv{conv}."


def find_hcflow_state(checkpoint: object) -> dict[str, object] | None:
    """The HCFlow state dict a loaded checkpoint is (``module.`` prefixes stripped), or None for another kind."""
    if not isinstance(checkpoint, Mapping) or not all(isinstance(key, str) for key in checkpoint):
        return None
    state = {key.removeprefix("module."): value for key, value in checkpoint.items()}
    return state if any(_FLOW_KEY.match(key) for key in state) else None


def _step_name(name: str) -> str:
    for ours, theirs in _STEP_RENAMES:
        name = name.replace(ours, theirs)
    return _DENSE_CONV.sub(lambda match: f"affine.f.conv{int(match.group(1)) + 1}.", name)


def original_names(model: nn.Module) -> dict[str, str]:
    """Our weight name -> the original's, for every weight of an :class:`HCFlowSR` or
    :class:`~flowsr_cli.families.hcflow.rescaling.HCFlowRescaler` (both lay each level out as the original's
    squeeze, steps and split; actnorms' ``initialized`` flags, which the original does not save, left out)."""
    names = {}
    offsets, index = [], 0
    for level in model.flow_levels:
        offsets.append(index)
        index += len(level.steps) + 2  # squeeze, steps, split
    for name in model.state_dict():
        if name.endswith(".initialized"):
            continue
        level, rest = name.removeprefix("flow_levels.").split(".", 1)
        if rest.startswith("steps."):
            step, inner = rest.removeprefix("steps.").split(".", 1)
            names[name] = f"flow.layers.{offsets[int(level)] + 1 + int(step)}.{_step_name(inner)}"
            continue
        inner = rest.removeprefix("cond_flow.")
        for pattern, replace in _COND_RENAMES:
            inner = pattern.sub(replace, inner)
        names[name] = f"flow.level{level}_condFlow.{_step_name(inner)}"
    return names


def _out_channels(state: Mapping[str, torch.Tensor], key: str, default: int) -> int:
    """The output channels of the convolution weight ``key`` (``default`` if the file has no such weight)."""
    if key not in state:
        return default
    shape = tuple(state[key].shape)
    if len(shape) != 4 or 0 in shape:
        raise ValueError(f"{key} has shape {shape} where a convolution weight belongs")
    return shape[0]


def _level_steps(state: Mapping[str, torch.Tensor], levels: int) -> list[int]:
    """The unconditional steps per level, from which ``flow.layers`` have weights (squeezes and splits have none)."""
    filled = {int(match.group(1)) for key in state if (match := _LAYER.match(key))}
    steps, index = [], 0
    for level in range(levels):
        if index in filled:
            raise ValueError(f"flow.layers.{index} has weights where level {level}'s squeeze belongs")
        count = 0
        while index + 1 + count in filled:
            count += 1
        steps.append(count)
        index += count + 2
    beyond = sorted(number for number in filled if number >= index)
    if beyond:
        raise ValueError(f"flow.layers.{beyond[0]} lies beyond the {levels} levels of its conditional flows")
    return steps


def _first_step_layer(steps: list[int]) -> int:
    """The ``flow.layers`` index of the first unconditional step (1 when there is none)."""
    index = 0
    for count in steps:
        if count:
            return index + 1
        index += 2  # a level without steps: squeeze and split
    return 1


def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    """How many distinct indices the group of ``pattern`` takes in the keys."""
    compiled = re.compile(pattern)
    return len({match.group(1) for key in state if (match := compiled.match(key))})


def cond_flow_levels(state: Mapping[str, torch.Tensor]) -> int:
    """L, from the conditional flows ``flow.level{l}_condFlow`` (which must be levels 0 to L - 1)."""
    numbers = sorted({int(match.group(1)) for key in state if (match := _COND_FLOW.match(key))})
    if not numbers or numbers != list(range(len(numbers))) or len(numbers) > MAX_LEVELS:
        raise ValueError(f"its conditional flows are levels {numbers[:6]}, not 0 to L - 1 with L at most {MAX_LEVELS}")
    return len(numbers)


def hcflow_args(state: Mapping[str, torch.Tensor], steps: list[int]) -> dict[str, Any]:
    """The spec arguments of an HCFlow state dict (SR or rescaling) whose levels have ``steps`` unconditional
    steps: the conditional steps, widths and RRDB sizes, from the names and shapes."""
    levels = len(steps)
    cond_steps = [
        _count(state, rf"^flow\.level{level}_condFlow\.additional_flow_steps\.(\d+)\.") for level in range(levels)
    ]
    cond_level = next((level for level, count in enumerate(cond_steps) if count), 0)
    level0 = "flow.level0_condFlow."
    rrdb = [_count(state, rf"^flow\.level0_condFlow\.RRDB_trunk{trunk}\.(\d+)\.") for trunk in (0, 1)]
    growth_key = f"{level0}RRDB_trunk{0 if rrdb[0] else 1}.0.RDB1.conv1.weight"
    return {
        "levels": levels,
        "steps": steps,
        "cond_steps": cond_steps,
        "hidden": _out_channels(state, f"flow.layers.{_first_step_layer(steps)}.affine.f.conv1.weight", 64),
        "cond_hidden": _out_channels(
            state, f"flow.level{cond_level}_condFlow.additional_flow_steps.0.affine.f.conv1.weight", 64
        ),
        "rrdb_blocks": rrdb,
        "rrdb_channels": _out_channels(state, f"{level0}conv_first.weight", 64),
        "growth": _out_channels(state, growth_key, 32),
    }


def _check_fit(
    expected: Mapping[str, torch.Tensor], names: Mapping[str, str], state: Mapping[str, torch.Tensor]
) -> None:
    missing = sorted(original for original in names.values() if original not in state)
    unexpected = sorted(set(state) - set(names.values()))
    wrong = sorted(
        f"{original} {tuple(state[original].shape)} (expected {tuple(expected[name].shape)})"
        for name, original in names.items()
        if original in state and state[original].shape != expected[name].shape
    )
    for label, found in (("missing weights", missing), ("unexpected", unexpected), ("wrong shape:", wrong)):
        if found:
            raise ValueError(f"{label} {listed(found)}")


def plain_tensors(state: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The state dict's entries, which must all be tensors of numbers (ValueError naming those that are not)."""
    not_tensors = sorted(key for key, value in state.items() if not is_plain_tensor(value))
    if not_tensors:
        raise ValueError(f"entries that are not tensors of numbers: {listed(not_tensors)}")
    return {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}


def build_converted(spec: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> nn.Module:
    """The model ``spec`` describes holding the original weights ``tensors`` (which must be exactly its weights
    under the original's names: :func:`original_names`), in eval mode; ValueError saying what does not fit."""
    try:
        model = make(spec)
    except FlowsrError as exc:
        raise ValueError(str(exc)) from None
    names = original_names(model)
    expected = model.state_dict()
    _check_fit(expected, names, tensors)
    loaded = {name: tensors[original].float() for name, original in names.items()}
    loaded.update({name: torch.tensor(True) for name in expected if name.endswith(".initialized")})
    model.load_state_dict(loaded)
    return model.eval()


def convert_hcflow(state: Mapping[str, object]) -> nn.Module:
    """Build a flowsr HCFlowSR holding the weights of an original HCFlow SR state dict (module docstring)."""
    tensors = plain_tensors(state)
    steps = _level_steps(tensors, cond_flow_levels(tensors))
    return build_converted({"name": "hcflow", "args": hcflow_args(tensors, steps)}, tensors)


def import_hcflow(checkpoint: Any, location: Path) -> nn.Module | None:
    """A flowsr HCFlowSR holding the weights of an original HCFlow SR checkpoint, or None for another kind of file
    (the family's importer sends rescaling checkpoints elsewhere first)."""
    state = find_hcflow_state(checkpoint)
    if state is None:
        return None
    try:
        return convert_hcflow(state)
    except ValueError as exc:
        raise import_failure(location, f"not an HCFlow SR checkpoint this flowsr can convert: {exc}") from None
