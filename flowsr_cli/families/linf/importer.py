"""Converting original LINF checkpoints (github.com/JNNNNYao/LINF) into flowsr's :class:`LINF`.

The original layout is ``{'model': {'name': 'linf' | 'linf-patch', 'args': {...}, 'sd': state_dict}}`` with
keys ``encoder.*``, ``coef.*``, ``freq.*``, ``phase.weight``, ``layers.{0,2,4,6}.*`` (1x1 convs) and
``imnet.linears.{i}._weight/bias``, ``imnet.last._weight/bias``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flowsr_cli.families.importing import import_failure
from flowsr_cli.families.registry import make

LINF_CHECKPOINTS = "an original LINF checkpoint (expected {'model': {'name', 'args', 'sd'}})"
"""What :func:`import_linf` recognises."""

_ORIGINAL_NAMES = {"linf": 1, "linf-patch": None}
_IGNORED_ENCODER_PREFIXES = ("encoder.sub_mean.", "encoder.add_mean.")
_RRDB_OLD = re.compile(r"^encoder\.RRDB_trunk\.(\d+)\.RDB([123])\.conv([1-5])\.(weight|bias)$")
_RRDB_NEW = re.compile(r"^encoder\.body\.(\d+)\.rdb([123])\.conv([1-5])\.(weight|bias)$")


def _strip_wrappers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key.removeprefix("module."): value for key, value in state.items()}


def _count_indices(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    matcher = re.compile(pattern)
    return len({match.group(1) for key in state if (match := matcher.match(key))})


def _encoder_spec(path: Path, encoder: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    name = encoder.get("name")
    if any(key.startswith("encoder.tail.") for key in state):
        raise import_failure(path, "its encoder has an upsampling tail; LINF encoders are built with no_upsampling")
    if name == "edsr-baseline":
        channels = state["encoder.head.0.weight"].shape[0]
        blocks = _count_indices(state, r"^encoder\.body\.(\d+)\.body\.0\.weight$")
        return {"name": "edsr-baseline", "args": {"channels": int(channels), "blocks": blocks}}
    if name == "rrdb":
        channels = state["encoder.conv_first.weight"].shape[0]
        blocks = _count_indices(state, r"^encoder\.(?:RRDB_trunk|body)\.(\d+)\.")
        growth = next(
            value.shape[0] for key, value in state.items() if re.search(r"[rR][dD][bB]1\.conv1\.weight$", key)
        )
        return {"name": "rrdb", "args": {"channels": int(channels), "blocks": blocks, "growth": int(growth)}}
    raise import_failure(path, f"unsupported encoder {name!r}; flowsr imports edsr-baseline and rrdb encoders")


def _rrdb_key(block: str, dense: str, conv: str, kind: str) -> str:
    index = int(conv)
    target = "fuse" if index == 5 else f"convs.{index - 1}"
    return f"encoder.body.{block}.blocks.{int(dense) - 1}.{target}.{kind}"


def _rename(key: str) -> str | None:
    """Our name for an original key, or None when the key is not part of a LINF model."""
    if key.startswith(_IGNORED_ENCODER_PREFIXES):
        return ""
    if match := (_RRDB_OLD.match(key) or _RRDB_NEW.match(key)):
        return _rrdb_key(*match.groups())
    replacements = (
        (r"^encoder\.trunk_conv\.", "encoder.conv_body."),
        (r"^encoder\.(head|body|conv_first|conv_body)\.", r"encoder.\1."),
        (r"^(coef|freq)\.(weight|bias)$", r"\1.\2"),
        (r"^phase\.weight$", "phase.weight"),
        (r"^layers\.(\d+)\.(weight|bias)$", r"mlp.\1.\2"),
        (r"^imnet\.linears\.(\d+)\._weight$", r"flow.linears.\1.weight"),
        (r"^imnet\.linears\.(\d+)\.bias$", r"flow.linears.\1.bias"),
        (r"^imnet\.last\._weight$", "flow.last.weight"),
        (r"^imnet\.last\.bias$", "flow.last.bias"),
    )
    for pattern, replacement in replacements:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


def import_linf(checkpoint: Any, location: Path) -> nn.Module | None:
    """A flowsr LINF holding the weights of an original LINF checkpoint, or None for another kind of file."""
    original = checkpoint.get("model") if isinstance(checkpoint, Mapping) else None
    if not isinstance(original, Mapping) or not {"name", "sd"} <= set(original):
        return None
    name = original["name"]
    if name not in _ORIGINAL_NAMES:
        raise import_failure(location, f"model {name!r} is not LINF ('linf' or 'linf-patch')")
    args = dict(original.get("args") or {})
    state = _strip_wrappers(original["sd"])
    patch_size = _ORIGINAL_NAMES[name] or int(args.get("patch_size", 3))
    spec = {
        "name": "linf",
        "args": {
            "encoder": _encoder_spec(location, args.get("encoder_spec") or {}, state),
            "patch_size": patch_size,
            "hidden": int(args.get("hidden_dim", 256)),
            "mlp_layers": int(args.get("num_layer", 3)),
            "flow_layers": int(args.get("flow_layers", 10)),
        },
    }
    converted: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        target = _rename(key)
        if target is None:
            unknown.append(key)
        elif target:
            converted[target] = value.flatten(1) if target.startswith("mlp.") and value.dim() == 4 else value
    if unknown:
        listed = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise import_failure(location, f"unrecognised weights: {listed}")
    model = make(spec)
    try:
        model.load_state_dict({key: value.float() for key, value in converted.items()})
    except RuntimeError as exc:
        problem = " ".join(str(exc).split())[:400]
        raise import_failure(
            location, f"weights do not fit a LINF of the checkpoint's own arguments: {problem}"
        ) from None
    return model.eval()
