"""Model files: ``.safetensors`` whose metadata carries the spec, so a file alone rebuilds its model."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flowsr_cli.errors import FlowsrError
from flowsr_cli.families.registry import ModelSpecError, check_spec, make
from flowsr_cli.io.atomic import atomic_write_bytes

FORMAT_NAME = "flowsr-model"
FORMAT_VERSION = 1
MAX_SPEC_CHARACTERS = 1 << 16
"""The longest spec a model file may carry (the bundled ones are under 600 characters)."""


class ModelFileError(FlowsrError):
    """A model file is missing, unreadable, not ours, or does not fit its own spec (a setup problem: exit 2)."""

    exit_code = 2


def save_model(
    model: nn.Module, path: str | os.PathLike[str], *, dtype: torch.dtype | None = None, **metadata: str
) -> None:
    """Write the model's weights (optionally cast, e.g. to float16) and spec atomically to ``path``."""
    from safetensors.torch import save

    spec = getattr(model, "spec", None)
    if spec is None:
        raise ValueError("only models built by flowsr_cli.families.registry.make carry a spec and can be saved")
    tensors = {
        name: (tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor)
        .detach()
        .cpu()
        .contiguous()
        for name, tensor in model.state_dict().items()
    }
    header = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "spec": json.dumps(spec), **metadata}
    atomic_write_bytes(path, save(tensors, metadata=header))


def read_model_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The header of a flowsr model file: its spec (parsed and checked against the registry, see
    :func:`~flowsr_cli.families.registry.check_spec`) and any other metadata strings."""
    from safetensors import safe_open

    location = Path(path)
    if not location.is_file():
        raise ModelFileError(f"model file {location}: not found")
    try:
        with safe_open(location, framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for any malformed header
        raise ModelFileError(f"model file {location}: not a readable .safetensors file ({exc})") from None
    if metadata.get("format") != FORMAT_NAME or "spec" not in metadata:
        raise ModelFileError(f"model file {location}: not a flowsr model (no spec in its metadata)")
    _check_version(location, metadata.get("format_version", "0"))
    metadata["spec"] = _parsed_spec(location, metadata["spec"])
    return metadata


def _check_version(location: Path, version: str) -> None:
    if not (version.isascii() and version.isdigit()):
        raise ModelFileError(f"model file {location}: format version {version[:20]!r} is not a whole number")
    digits = version.lstrip("0")
    if len(digits) > 9 or int(digits or "0") > FORMAT_VERSION:
        raise ModelFileError(
            f"model file {location}: format version {version[:20]} is newer than this flowsr understands "
            f"({FORMAT_VERSION}); upgrade flowsr"
        )


def _parsed_spec(location: Path, text: str) -> Any:
    """The spec a model file carries, parsed from JSON and checked (nothing is built)."""
    if len(text) > MAX_SPEC_CHARACTERS:
        raise ModelFileError(
            f"model file {location}: its spec is {len(text):,} characters long; flowsr specs take at most "
            f"{MAX_SPEC_CHARACTERS:,}"
        )
    try:
        spec = json.loads(text)
    except RecursionError:
        raise ModelFileError(f"model file {location}: its spec is not valid JSON (nested too deeply)") from None
    except ValueError as exc:
        raise ModelFileError(f"model file {location}: its spec is not valid JSON ({exc})") from None
    try:
        check_spec(spec)
    except ModelSpecError as exc:
        raise ModelSpecError(f"model file {location}: {exc}") from None
    return spec


def model_notes(path: str | os.PathLike[str]) -> dict[str, str]:
    """The metadata strings a model file carries besides the format's own (format, version, spec)."""
    own = ("format", "format_version", "spec")
    return {key: value for key, value in read_model_metadata(path).items() if key not in own}


def load_model(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild a model from its file alone, in float32, in eval mode, on ``device``."""
    from safetensors.torch import load_file

    location = Path(path)
    metadata = read_model_metadata(location)
    try:
        model = make(metadata["spec"])
    except ModelSpecError as exc:
        raise ModelSpecError(f"model file {location}: {exc}") from None
    try:
        tensors = load_file(str(location))
    except Exception as exc:  # safetensors raises its own error types for malformed data
        raise ModelFileError(f"model file {location}: its weights cannot be read ({exc})") from None
    mismatch = weights_mismatch(model.state_dict(), tensors)
    if mismatch:
        raise ModelFileError(f"model file {location}: weights do not fit the spec ({mismatch})")
    model.load_state_dict(
        {name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in tensors.items()}
    )
    return model.to(device).eval()


def weights_mismatch(expected: Mapping[str, torch.Tensor], tensors: Mapping[str, torch.Tensor]) -> str | None:
    """How ``tensors`` fail to match a model's state dict ``expected`` (the weights missing, unexpected or
    of the wrong shape, a few of each), or None when every name and shape matches."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong_shape = sorted(name for name in set(expected) & set(tensors) if expected[name].shape != tensors[name].shape)
    details = [
        f"{label}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
        for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
        if names
    ]
    return "; ".join(details) or None
