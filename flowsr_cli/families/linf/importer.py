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

from flowsr_cli.errors import FlowsrError
from flowsr_cli.families.importing import checked_state, import_failure, listed, load_fitting
from flowsr_cli.families.registry import make

LINF_CHECKPOINTS = "an original LINF checkpoint (expected {'model': {'name', 'args', 'sd'}})"
"""What :func:`import_linf` recognises."""

_ORIGINAL_NAMES = {"linf": 1, "linf-patch": None}
_IGNORED_ENCODER_PREFIXES = (
    "encoder.sub_mean.",
    "encoder.add_mean.",
    *(f"encoder.{name}." for name in ("upconv1", "upconv2", "HRconv", "conv_last")),
)
"""Weights the original encoders hold but a LINF never uses: EDSR's mean shifts (its LINF forward skips
them) and the RRDB's upsampling tail, which its code builds even with ``no_upsampling``."""
_RRDB_OLD = re.compile(r"^encoder\.RRDB_trunk\.(\d+)\.RDB([123])\.conv([1-5])\.(weight|bias)$")
_RRDB_NEW = re.compile(r"^encoder\.body\.(\d+)\.rdb([123])\.conv([1-5])\.(weight|bias)$")


def _mapping(path: Path, value: object, name: str) -> Mapping[str, Any]:
    """An optional mapping entry of the checkpoint (``args``, ``encoder_spec``); empty when absent."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise import_failure(path, f"its {name!r} is of type {type(value).__name__}, not a mapping of arguments")
    return value


def _integer(path: Path, args: Mapping[str, Any], key: str, default: int) -> int:
    """An integer argument of the original model (the original code reads them from its YAML config)."""
    value = args.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise import_failure(path, f"its argument {key} = {value!r:.40} is not an integer")
    return value


def _conv_width(path: Path, state: Mapping[str, torch.Tensor], key: str) -> int:
    """The output channels of the convolution weight ``key``."""
    if key not in state:
        raise import_failure(path, f"missing weight {key}")
    shape = tuple(state[key].shape)
    if len(shape) != 4:
        raise import_failure(path, f"{key} has shape {shape} where a convolution weight belongs")
    return shape[0]


def _count_indices(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    matcher = re.compile(pattern)
    return len({match.group(1) for key in state if (match := matcher.match(key))})


def _encoder_spec(path: Path, encoder: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    name = encoder.get("name")
    if any(key.startswith("encoder.tail.") for key in state):
        raise import_failure(path, "its encoder has an upsampling tail; LINF encoders are built with no_upsampling")
    if name == "edsr-baseline":
        channels = _conv_width(path, state, "encoder.head.0.weight")
        blocks = _count_indices(state, r"^encoder\.body\.(\d+)\.body\.0\.weight$")
        return {"name": "edsr-baseline", "args": {"channels": channels, "blocks": blocks}}
    if name == "rrdb":
        channels = _conv_width(path, state, "encoder.conv_first.weight")
        blocks = _count_indices(state, r"^encoder\.(?:RRDB_trunk|body)\.(\d+)\.")
        first_dense = next((key for key in state if re.search(r"[rR][dD][bB]1\.conv1\.weight$", key)), None)
        growth = _conv_width(path, state, first_dense or "encoder.RRDB_trunk.0.RDB1.conv1.weight")
        return {"name": "rrdb", "args": {"channels": channels, "blocks": blocks, "growth": growth}}
    raise import_failure(path, f"unsupported encoder {name!r:.40}; flowsr imports edsr-baseline and rrdb encoders")


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
    if not isinstance(name, str) or name not in _ORIGINAL_NAMES:
        raise import_failure(location, f"model {name!r:.40} is not LINF ('linf' or 'linf-patch')")
    args = _mapping(location, original.get("args"), "args")
    state = checked_state(location, original["sd"])
    spec = {
        "name": "linf",
        "args": {
            "encoder": _encoder_spec(location, _mapping(location, args.get("encoder_spec"), "encoder_spec"), state),
            "patch_size": _ORIGINAL_NAMES[name] or _integer(location, args, "patch_size", 3),
            "hidden": _integer(location, args, "hidden_dim", 256),
            "mlp_layers": _integer(location, args, "num_layer", 3),
            "flow_layers": _integer(location, args, "flow_layers", 10),
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
        raise import_failure(location, f"unrecognised weights: {listed(unknown, 5)}")
    try:
        model = make(spec)
    except FlowsrError as exc:
        raise import_failure(location, f"its arguments do not make a LINF flowsr can build: {exc}") from None
    load_fitting(model, converted, location, "a LINF of the checkpoint's own arguments")
    return model.eval()


LINF_LP_PRIORS = "an original LINF-LP prior (expected {'prior_model': {'name': 'unet', 'args', 'sd'}})"
_PRIOR_KEYS = re.compile(r"^(input_proj|lr_proj|inc|down_layers|up_layers|outc)\.")


def _prior_spec(
    location: Path, prior: Mapping[str, Any], state: Mapping[str, torch.Tensor], dim: int
) -> dict[str, Any]:
    """The ``lp-latent-original`` spec of an original LINF-LP prior for a flow of latent size ``dim``."""
    if prior.get("name") != "unet":
        raise import_failure(location, f"prior model {prior.get('name')!r:.40} is not LINF-LP's 'unet'")
    args = _mapping(location, prior.get("args"), "args")
    if any(key.startswith("input_proj0.") for key in state):
        raise import_failure(location, "it is an SRFlow-LP prior (two UNets, no LR branch), not a LINF-LP prior")
    if args.get("bilinear", True) is not True:
        raise import_failure(location, "its UNet upsamples with transposed convolutions; flowsr imports bilinear ones")
    if args.get("cell_input"):
        raise import_failure(location, "its UNet takes a cell input, which the released models do not")
    in_chans = _integer(location, args, "in_chans", dim)
    if in_chans != dim:
        raise import_failure(location, f"its latent size in_chans = {in_chans} does not match the flow's {dim}")
    return {
        "name": "lp-latent-original",
        "args": {
            "in_chans": in_chans,
            "dim": _integer(location, args, "dim", 64),
            "depth": _integer(location, args, "depth", 3),
        },
    }


def import_linf_with_prior(
    checkpoint: Any, location: Path, prior_checkpoint: Any, prior_location: Path
) -> nn.Module | None:
    """One ``linf-lp-original`` model from an original LINF checkpoint and an original LINF-LP prior, or
    None when ``checkpoint`` is not a LINF checkpoint."""
    flow = import_linf(checkpoint, location)
    if flow is None:
        return None
    prior = prior_checkpoint.get("prior_model") if isinstance(prior_checkpoint, Mapping) else None
    if not isinstance(prior, Mapping) or "sd" not in prior:
        raise import_failure(prior_location, f"not {LINF_LP_PRIORS}")
    state = checked_state(prior_location, prior["sd"])
    latent = _prior_spec(prior_location, prior, state, flow.dim)
    unknown = [key for key in state if not _PRIOR_KEYS.match(key)]
    if unknown:
        raise import_failure(prior_location, f"unrecognised weights: {listed(unknown, 5)}")
    flow_spec = {"name": "linf", "args": {**flow.spec["args"], "query_geometry": "original"}}
    try:
        model = make({"name": "linf-lp-original", "args": {"flow": flow_spec, "latent": latent}})
    except FlowsrError as exc:
        raise import_failure(prior_location, f"its arguments do not make a prior flowsr can build: {exc}") from None
    model.flow.load_state_dict(flow.state_dict())
    load_fitting(model.latent, state, prior_location, "a LINF-LP prior of the checkpoint's own arguments")
    return model.eval()
