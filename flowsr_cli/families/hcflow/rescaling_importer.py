"""Converting the original HCFlow rescaling state dict (github.com/JingyunLiang/HCFlow:
``Rescaling_DF2K_X4_HCFlow.pth``) into flowsr's :class:`~flowsr_cli.families.hcflow.rescaling.HCFlowRescaler`, and
the family's importer, which tells rescaling files from SR ones.

The file holds ``HCFlowNet_Rescaling.state_dict()`` (``module.``-prefixed when saved from DataParallel), laid out as
the SR files are (:mod:`flowsr_cli.families.hcflow.importer`) except that:

* each level's squeeze is a ``HaarDownsampling`` whose fixed filters are saved, ``flow.layers.{i}.haar_weights``
  (4C, 1, 2, 2): they must be the Haar filters, which flowsr computes instead of storing;
* the unconditional ``FlowStep``s have no permutation and an ``AffineCoupling3shift`` with a ``DenseBlock``,
  ``affine.f.conv{1-5}.{weight,bias}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flowsr_cli.families.hcflow.importer import (
    build_converted,
    cond_flow_levels,
    find_hcflow_state,
    hcflow_args,
    import_hcflow,
    plain_tensors,
)
from flowsr_cli.families.importing import import_failure

_RESCALING_KEY = re.compile(r"^flow\.layers\.\d+\.(?:haar_weights$|affine\.f\.conv[45]\.)")
_LAYER = re.compile(r"^flow\.layers\.(\d{1,9})\.")
_HAAR = re.compile(r"^flow\.layers\.(\d{1,9})\.haar_weights$")


def is_rescaling(state: Mapping[str, object]) -> bool:
    """Whether an HCFlow state dict is a rescaling model's (Haar squeezes or dense-block couplings)."""
    return any(_RESCALING_KEY.match(key) for key in state)


def haar_filters(channels: int) -> torch.Tensor:
    """The original's ``HaarDownsampling.haar_weights`` for ``channels`` input channels: (4 channels, 1, 2, 2)."""
    filters = torch.ones(4, 1, 2, 2)
    filters[1, 0, :, 1] = -1
    filters[2, 0, 1, :] = -1
    filters[3, 0, 1, 0] = -1
    filters[3, 0, 0, 1] = -1
    return filters.repeat(channels, 1, 1, 1)


def _level_steps(state: Mapping[str, torch.Tensor], levels: int) -> tuple[list[int], list[int]]:
    """(the unconditional steps per level, the ``flow.layers`` index of each level's Haar squeeze): level l is a
    Haar squeeze, its steps and a split (which has no weights)."""
    filled = {int(match.group(1)) for key in state if (match := _LAYER.match(key))}
    haar = {int(match.group(1)) for key in state if (match := _HAAR.match(key))}
    steps, squeezes, index = [], [], 0
    for level in range(levels):
        if index not in haar:
            raise ValueError(f"flow.layers.{index}.haar_weights is missing (level {level}'s Haar squeeze)")
        squeezes.append(index)
        count = 0
        while index + 1 + count in filled - haar:
            count += 1
        steps.append(count)
        index += count + 2
    beyond = sorted(number for number in filled if number >= index)
    if beyond:
        raise ValueError(f"flow.layers.{beyond[0]} lies beyond the {levels} levels of its conditional flows")
    stray = sorted(haar - set(squeezes))
    if stray:
        raise ValueError(f"flow.layers.{stray[0]}.haar_weights where no level's Haar squeeze belongs")
    return steps, squeezes


def _check_haar(state: Mapping[str, torch.Tensor], squeezes: list[int]) -> None:
    """The saved filters must be the Haar filters for each level's input channels: 3 x 2^l (every level but the
    coarsest keeps half of its 4 x input channels)."""
    for level, index in enumerate(squeezes):
        key = f"flow.layers.{index}.haar_weights"
        expected = haar_filters(3 * 2**level)
        if state[key].shape != expected.shape:
            raise ValueError(f"wrong shape: {key} {tuple(state[key].shape)} (expected {tuple(expected.shape)})")
        if not torch.equal(state[key].float(), expected):
            raise ValueError(f"{key} are not the Haar filters")


def convert_rescaling(state: Mapping[str, object]) -> nn.Module:
    """Build a flowsr HCFlowRescaler holding the weights of an original HCFlow rescaling state dict."""
    tensors = plain_tensors(state)
    levels = cond_flow_levels(tensors)
    steps, squeezes = _level_steps(tensors, levels)
    _check_haar(tensors, squeezes)
    weights = {key: value for key, value in tensors.items() if not _HAAR.match(key)}
    return build_converted({"name": "hcflow-rescale", "args": hcflow_args(weights, steps)}, weights)


def import_hcflow_checkpoint(checkpoint: Any, location: Path) -> nn.Module | None:
    """A flowsr HCFlowRescaler or HCFlowSR holding the weights of an original HCFlow rescaling or SR checkpoint, or
    None for another kind of file."""
    state = find_hcflow_state(checkpoint)
    if state is None or not is_rescaling(state):
        return import_hcflow(checkpoint, location)
    try:
        return convert_rescaling(state)
    except ValueError as exc:
        raise import_failure(location, f"not an HCFlow rescaling checkpoint this flowsr can convert: {exc}") from None
