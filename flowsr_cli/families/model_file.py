"""Model files: ``.safetensors`` whose metadata carries the spec, so a file alone rebuilds its model."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flowsr_cli.errors import FlowsrError
from flowsr_cli.families.registry import make
from flowsr_cli.io.atomic import atomic_write_bytes

FORMAT_NAME = "flowsr-model"
FORMAT_VERSION = 1


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
    """The header of a flowsr model file: its spec (parsed) and any other metadata strings."""
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
    version = int(metadata.get("format_version", "0"))
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"model file {location}: format version {version} is newer than this flowsr understands "
            f"({FORMAT_VERSION}); upgrade flowsr"
        )
    metadata["spec"] = json.loads(metadata["spec"])
    return metadata


def model_notes(path: str | os.PathLike[str]) -> dict[str, str]:
    """The metadata strings a model file carries besides the format's own (format, version, spec)."""
    own = ("format", "format_version", "spec")
    return {key: value for key, value in read_model_metadata(path).items() if key not in own}


def load_model(path: str | os.PathLike[str], device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild a model from its file alone, in float32, in eval mode, on ``device``."""
    from safetensors.torch import load_file

    metadata = read_model_metadata(path)
    model = make(metadata["spec"])
    tensors = load_file(str(path))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong_shape = sorted(name for name in set(expected) & set(tensors) if expected[name].shape != tensors[name].shape)
    if missing or unexpected or wrong_shape:
        details = "; ".join(
            f"{label}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
            for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
            if names
        )
        raise ModelFileError(f"model file {path}: weights do not fit the spec ({details})")
    model.load_state_dict(
        {name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in tensors.items()}
    )
    return model.to(device).eval()
