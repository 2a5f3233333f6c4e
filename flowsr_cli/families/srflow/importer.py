"""Converting the original SRFlow's state dict (github.com/andreas128/SRFlow) into flowsr's :class:`SRFlow`.

The original files hold ``SRFlowNet.state_dict()``:

* ``RRDB.conv_first``, ``RRDB.RRDB_trunk.{b}.RDB{1,2,3}.conv{1-5}``, ``RRDB.trunk_conv``, ``RRDB.upconv1``
  (the conditioner) and the RRDB's image head ``upconv2``, ``HRconv``, ``conv_last``, which SRFlow never uses;
* ``flowUpsamplerNet.layers.{i}``: per level a squeeze (no weights), the ``additionalFlowNoAffine`` steps
  (``actnorm.{bias,logs}``, ``invconv.weight``), K steps that add the injector ``affine.fFeatures`` and the
  coupling ``affine.fAffine`` (each ``{0,2}.weight``, ``{0,2}.actnorm.{bias,logs}``, ``4.{weight,bias,logs}``)
  and, on splitting levels, a ``Split2d`` (``conv.{weight,bias,logs}``);
* ``flowUpsamplerNet.f.0`` (a conv the forward pass never calls).

Our layers compute exactly what the original's compute with the same parameters (Glow's actnorm'd hidden
convs and ``exp(3 logs)`` output convs, the full-weight 1x1 conv, the same channel splits and "cross" order),
so the conversion only renames. Problems raise ``ValueError`` with a one-line description.

With ``--prior``, an original SRFlow-LP prior file (``{'prior_model': {'name': 'unet', 'args': {'depth',
'dim', 'bilinear'}, 'sd': state_dict}}``, the FlowSR-LP code's ``models/unet.py``: two UNets, one per latent,
named ``input_proj{0,1}``, ``inc{0,1}``, ``down_layers{0,1}``, ``up_layers{0,1}``, ``outc{0,1}``) joins the
flow in one ``srflow-lp-original`` model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flowsr_cli.errors import FlowsrError
from flowsr_cli.families.importing import checked_state, import_failure, is_plain_tensor, listed
from flowsr_cli.families.model_file import weights_mismatch
from flowsr_cli.families.registry import make
from flowsr_cli.families.srflow.prior import latent_levels

SRFLOW_CHECKPOINTS = "an SRFlow state dict (RRDB.*, flowUpsamplerNet.*)"
"""What :func:`import_srflow` recognises."""

_WRAPPERS = ("state_dict", "params_ema", "params", "model")
_IGNORED = ("RRDB.upconv2.", "RRDB.HRconv.", "RRDB.conv_last.", "flowUpsamplerNet.f.")
_RRDB_RENAMES = {"RRDB.conv_first.": "conv_first.", "RRDB.trunk_conv.": "conv_body.", "RRDB.upconv1.": "upconv."}
_RRDB_BLOCK = re.compile(r"^RRDB\.RRDB_trunk\.(\d+)\.RDB([123])\.conv([1-5])\.(weight|bias)$")
_FLOW_LAYER = re.compile(r"^flowUpsamplerNet\.layers\.(\d{1,9})\.(.+)$")
MAX_FLOW_LAYERS = 1024
"""More ``flowUpsamplerNet.layers`` than any SRFlow flowsr builds has (6 levels of 1 + 16 + 64 + 1 layers)."""
_PLAIN_STEP = frozenset({"actnorm.bias", "actnorm.logs", "invconv.weight"})
_NET_KEYS = ("0.weight", "0.actnorm.bias", "0.actnorm.logs", "2.weight", "2.actnorm.bias", "2.actnorm.logs")
_NETS = {"fFeatures": 2, "fAffine": 3}
"""The original's injector and coupling networks and their index in our FlowStep."""
_CONDITIONAL_STEP = _PLAIN_STEP | {
    f"affine.{net}.{key}" for net in _NETS for key in (*_NET_KEYS, "4.weight", "4.bias", "4.logs")
}
_SPLIT = frozenset({"conv.weight", "conv.bias", "conv.logs"})
_KINDS = {_PLAIN_STEP: "u", _CONDITIONAL_STEP: "c", _SPLIT: "p"}
"""Layer kinds by weight names: unconditional step, conditional step, split ("s", squeeze, has none)."""


def find_srflow_state(checkpoint: object) -> dict[str, object] | None:
    """The SRFlow state dict in a loaded checkpoint (bare or under ``state_dict``/``params``/...), or None."""
    candidates = [checkpoint]
    if isinstance(checkpoint, Mapping):
        candidates += [checkpoint.get(key) for key in _WRAPPERS]
    for candidate in candidates:
        if isinstance(candidate, Mapping):
            state = {str(key).removeprefix("module."): value for key, value in candidate.items()}
            if any(key.startswith("RRDB.") for key in state) and any(
                key.startswith("flowUpsamplerNet.") for key in state
            ):
                return state
    return None


def _flow_layers(state: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """The weights of ``flowUpsamplerNet.layers.{i}`` by i (squeezes have none), named within the layer."""
    grouped: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if match := _FLOW_LAYER.match(key):
            grouped.setdefault(int(match.group(1)), {})[match.group(2)] = value
    if max(grouped, default=0) >= MAX_FLOW_LAYERS:
        raise ValueError(
            f"flowUpsamplerNet.layers.{max(grouped)}: more flow layers than any SRFlow (at most {MAX_FLOW_LAYERS})"
        )
    return [grouped.get(index, {}) for index in range(max(grouped, default=-1) + 1)]


def _layer_codes(layers: list[dict[str, torch.Tensor]]) -> str:
    codes = []
    for index, layer in enumerate(layers):
        code = _KINDS.get(frozenset(layer), "s" if not layer else None)
        if code is None:
            raise ValueError(f"flowUpsamplerNet.layers.{index} is no SRFlow layer ({listed(sorted(layer))})")
        codes.append(code)
    return "".join(codes)


def _published_taps(blocks: int, taps: int) -> list[int]:
    """SRFlow's configs tap RRDB blocks evenly from block 1 to the last: [1, 8, 15, 22] of 23, [1, 3, 5, 7] of 8."""
    if taps == 0:
        return []
    step, rest = divmod(blocks - 2, taps - 1) if taps > 1 else (0, 1)
    if rest or step < 1:
        raise ValueError(
            f"cannot tell which of its {blocks} RRDB blocks feed its {taps} conditioning taps "
            "(SRFlow's configs space them evenly from block 1 to the last)"
        )
    return [1 + tap * step for tap in range(taps)]


def _conv_shape(tensors: Mapping[str, torch.Tensor], key: str, prefix: str = "") -> tuple[int, ...]:
    """The shape of the convolution weight ``key`` (named ``prefix + key`` in the file), which has channels."""
    if key not in tensors:
        raise ValueError(f"missing {prefix}{key}")
    shape = tuple(tensors[key].shape)
    if len(shape) != 4 or 0 in shape:
        raise ValueError(f"{prefix}{key} has shape {shape} where a convolution weight belongs")
    return shape


def _spec(state: Mapping[str, torch.Tensor], codes: str, layers: list[dict[str, torch.Tensor]]) -> dict[str, object]:
    if "RRDB.upconv3.weight" in state:
        raise ValueError("it is an x8 or larger SRFlow (RRDB.upconv3); flowsr's SRFlow is x4")
    if re.fullmatch(r"(?:su*c*p?)+", codes) is None:
        raise ValueError("its flow layers are not levels of squeeze, steps and an optional split")
    levels = codes[1:].split("s")
    unconditional, steps = {level.count("u") for level in levels}, {level.count("c") for level in levels}
    if len(unconditional) > 1 or len(steps) > 1:
        raise ValueError("its levels have different numbers of steps; flowsr's SRFlow uses the same K on every level")
    channels = _conv_shape(state, "RRDB.conv_first.weight")[0]
    growth = _conv_shape(state, "RRDB.RRDB_trunk.0.RDB1.conv1.weight")[0]
    blocks = len({match.group(1) for key in state if (match := _RRDB_BLOCK.match(key))})
    index, conditional = next(
        ((index, layer) for index, layer in enumerate(layers) if frozenset(layer) == _CONDITIONAL_STEP), (0, None)
    )
    hidden, taps = 64, 0
    if conditional is not None:
        prefix = f"flowUpsamplerNet.layers.{index}."
        hidden = _conv_shape(conditional, "affine.fAffine.0.weight", prefix)[0]
        taps, rest = divmod(_conv_shape(conditional, "affine.fFeatures.0.weight", prefix)[1], channels)
        if rest or taps < 1:
            raise ValueError(f"its condition width is not a multiple of its {channels} RRDB channels")
        taps -= 1
    return {
        "name": "srflow",
        "args": {
            "rrdb_blocks": blocks,
            "rrdb_channels": channels,
            "growth": growth,
            "feature_blocks": _published_taps(blocks, taps),
            "steps": steps.pop(),
            "unconditional_steps": unconditional.pop(),
            "hidden": hidden,
            "levels": len(levels),
            "split_levels": [number for number, level in enumerate(levels, start=1) if level.endswith("p")],
        },
    }


def _rrdb_name(key: str) -> str | None:
    if match := _RRDB_BLOCK.match(key):
        block, dense, conv, kind = match.groups()
        target = "fuse" if conv == "5" else f"convs.{int(conv) - 1}"
        return f"conditioner.body.{block}.blocks.{int(dense) - 1}.{target}.{kind}"
    prefix = next((prefix for prefix in _RRDB_RENAMES if key.startswith(prefix)), None)
    return None if prefix is None else "conditioner." + _RRDB_RENAMES[prefix] + key.removeprefix(prefix)


def _step_name(name: str) -> str:
    """Our name, under ``...steps.{s}.layers.``, for a weight of the original's FlowStep."""
    if name == "invconv.weight":
        return "1.weight"
    if name.startswith("actnorm."):
        return "0." + name.removeprefix("actnorm.").replace("logs", "log_scale")
    net, rest = name.removeprefix("affine.").split(".", 1)
    return f"{_NETS[net]}.net.{rest.replace('actnorm.logs', 'actnorm.log_scale')}"


Renamed = dict[str, tuple[str, torch.Tensor]]
"""Our weight name -> (the original's name, tensor)."""


def _flow_weights(codes: str, layers: list[dict[str, torch.Tensor]]) -> Renamed:
    renamed: Renamed = {}
    level, step = -1, 0
    for index, (code, layer) in enumerate(zip(codes, layers)):
        original = f"flowUpsamplerNet.layers.{index}."
        if code == "s":
            level, step = level + 1, 0
        elif code == "p":
            prefix = f"flow_levels.{level}.split.prior_net."
            renamed.update({prefix + name[5:]: (original + name, value) for name, value in layer.items()})
        else:
            prefix = f"flow_levels.{level}.steps.{step}.layers."
            renamed.update({prefix + _step_name(name): (original + name, value) for name, value in layer.items()})
            step += 1
    return renamed


def _check_fit(model: nn.Module, renamed: Renamed) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(renamed))
    unexpected = sorted(renamed[name][0] for name in set(renamed) - set(expected))
    wrong = sorted(
        f"{original} {tuple(value.shape)} (expected {tuple(expected[name].shape)})"
        for name, (original, value) in renamed.items()
        if name in expected and value.shape != expected[name].shape
    )
    for label, names in (("missing weights for", missing), ("unexpected", unexpected), ("wrong shape:", wrong)):
        if names:
            raise ValueError(f"{label} {listed(names)}")


def convert_srflow(state: Mapping[str, object]) -> nn.Module:
    """Build a flowsr SRFlow holding the weights of an original SRFlow state dict (see the module docstring)."""
    not_tensors = sorted(key for key, value in state.items() if not is_plain_tensor(value))
    if not_tensors:
        raise ValueError(f"entries that are not tensors of numbers: {listed(not_tensors)}")
    tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    layers = _flow_layers(tensors)
    codes = _layer_codes(layers)
    spec = _spec(tensors, codes, layers)
    renamed = _flow_weights(codes, layers)
    unknown = []
    for key, value in tensors.items():
        if key.startswith(_IGNORED) or _FLOW_LAYER.match(key):
            continue
        name = _rrdb_name(key)
        if name is None:
            unknown.append(key)
        else:
            renamed[name] = (key, value)
    if unknown:
        raise ValueError(f"unexpected {listed(sorted(unknown))}")
    try:
        model = make(spec)
    except FlowsrError as exc:
        raise ValueError(str(exc)) from None
    renamed.update({name: ("", torch.tensor(True)) for name in model.state_dict() if name.endswith(".initialized")})
    _check_fit(model, renamed)
    model.load_state_dict(
        {name: value.float() if value.is_floating_point() else value for name, (_, value) in renamed.items()}
    )
    return model.eval()


def import_srflow(checkpoint: Any, location: Path) -> nn.Module | None:
    """A flowsr SRFlow holding the weights of an original SRFlow checkpoint, or None for another kind of file."""
    state = find_srflow_state(checkpoint)
    if state is None:
        return None
    try:
        return convert_srflow(state)
    except ValueError as exc:
        raise import_failure(location, f"not an SRFlow checkpoint this flowsr can convert: {exc}") from None


SRFLOW_LP_PRIORS = "an original SRFlow-LP prior (expected {'prior_model': {'name': 'unet', 'args', 'sd'}})"
"""What :func:`import_srflow_with_prior` takes as the prior."""

_PRIOR_KEY = re.compile(r"^(?:input_proj|inc|down_layers|up_layers|outc)([01])\.")
_DOWN_LAYER = re.compile(r"^down_layers0\.(\d{1,9})\.")
_PRIOR_ARGS = frozenset({"depth", "dim", "bilinear"})
"""The arguments of the original's ``make_unet(depth, dim=64, bilinear=True)``."""


def _prior_integer(location: Path, args: Mapping[str, Any], key: str) -> int:
    """The prior's argument ``key``, which must be an integer."""
    value = args[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise import_failure(location, f"its argument {key} = {value!r:.40} is not an integer")
    return value


def _weight_shape(location: Path, state: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    """The shape of the convolution weight ``key`` of the prior."""
    if key not in state:
        raise import_failure(location, f"missing weight {key}")
    shape = tuple(state[key].shape)
    if len(shape) != 4:
        raise import_failure(location, f"{key} has shape {shape} where a convolution weight belongs")
    return shape


def _prior_args(location: Path, prior: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """The ``dim`` and ``depth`` of an original SRFlow-LP prior, from its ``args`` and checked against its weights."""
    if prior.get("name") != "unet":
        raise import_failure(location, f"prior model {prior.get('name')!r:.40} is not SRFlow-LP's 'unet'")
    if any(key.startswith(("input_proj.", "lr_proj.")) for key in state):
        raise import_failure(
            location,
            "it is a LINF-LP prior (one UNet with an LR branch: input_proj, lr_proj), not an SRFlow-LP "
            "prior; import it with a LINF checkpoint",
        )
    args = prior.get("args")
    if not isinstance(args, Mapping):
        raise import_failure(location, f"its 'args' is of type {type(args).__name__}, not a mapping of arguments")
    unknown = sorted(str(key) for key in args if key not in _PRIOR_ARGS)
    if unknown:
        raise import_failure(
            location, f"unexpected arguments {listed(unknown)} (SRFlow-LP's UNet takes depth, dim, bilinear)"
        )
    if "depth" not in args:
        raise import_failure(location, "its arguments give no depth")
    if args.get("bilinear", True) is not True:
        raise import_failure(location, "its UNet upsamples with transposed convolutions; flowsr imports bilinear ones")
    depth = _prior_integer(location, args, "depth")
    dim = _prior_integer(location, {"dim": 64, **args}, "dim")
    weight_dim = _weight_shape(location, state, "inc0.double_conv.0.weight")[0]
    weight_depth = len({match.group(1) for key in state if (match := _DOWN_LAYER.match(key))})
    if (dim, depth) != (weight_dim, weight_depth):
        raise import_failure(
            location,
            f"its arguments say dim {dim}, depth {depth}, but its weights have dim {weight_dim}, depth {weight_depth}",
        )
    return {"dim": dim, "depth": depth}


def _check_latents(location: Path, state: Mapping[str, torch.Tensor], channels: list[int]) -> None:
    """Refuse a prior whose UNets take other latents than the flow's (``channels``, in the flow's order)."""
    if len(channels) != 2:
        raise import_failure(
            location, f"the flow has {len(channels)} latents; the original SRFlow-LP prior takes two (one split level)"
        )
    taken = [_weight_shape(location, state, f"input_proj{index}.conv1.weight")[1] for index in (0, 1)]
    given = [_weight_shape(location, state, f"outc{index}.conv.weight")[0] for index in (0, 1)]
    if taken != channels or given != channels:
        raise import_failure(
            location,
            f"its UNets take latents of {taken[0]} and {taken[1]} channels and give {given[0]} and "
            f"{given[1]}, but the flow's latents have {channels[0]} and {channels[1]}",
        )


def import_srflow_with_prior(
    checkpoint: Any, location: Path, prior_checkpoint: Any, prior_location: Path
) -> nn.Module | None:
    """One ``srflow-lp-original`` model from an original SRFlow checkpoint and an original SRFlow-LP prior,
    or None when ``checkpoint`` is not an SRFlow checkpoint."""
    flow = import_srflow(checkpoint, location)
    if flow is None:
        return None
    prior = prior_checkpoint.get("prior_model") if isinstance(prior_checkpoint, Mapping) else None
    if not isinstance(prior, Mapping) or "sd" not in prior:
        raise import_failure(prior_location, f"not {SRFLOW_LP_PRIORS}")
    state = checked_state(prior_location, prior["sd"])
    args = _prior_args(prior_location, prior, state)
    unknown = sorted(key for key in state if not _PRIOR_KEY.match(key))
    if unknown:
        raise import_failure(prior_location, f"unrecognised weights: {listed(unknown, 5)}")
    _check_latents(prior_location, state, [channels for channels, _ in latent_levels(flow)])
    try:
        model = make({"name": "srflow-lp-original", "args": {"flow": flow.spec, "prior": args}})
    except FlowsrError as exc:
        raise import_failure(prior_location, f"its arguments do not make a prior flowsr can build: {exc}") from None
    mismatch = weights_mismatch(model.prior.state_dict(), state)
    if mismatch:
        raise import_failure(
            prior_location, f"its weights do not fit SRFlow-LP's UNets of its own arguments ({mismatch})"
        )
    model.flow.load_state_dict(flow.state_dict())
    model.prior.load_state_dict(
        {key: value.float() if value.is_floating_point() else value for key, value in state.items()}
    )
    return model.eval()
