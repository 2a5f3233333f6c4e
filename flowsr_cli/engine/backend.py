"""Choosing what runs a model's plain networks: PyTorch, or ONNX Runtime when it is installed."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

ONNX_PACKAGES = ("onnxruntime", "onnx")
"""What the ``onnx`` extra installs: ONNX Runtime runs the graphs, and torch.onnx.export needs onnx to write them."""
Providers = tuple[str | tuple[str, dict[str, str]], ...]
"""ONNX Runtime execution providers in order of preference, each a name or (name, options)."""
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


@dataclass(frozen=True)
class BackendChoice:
    """The backend that will run (``torch`` or ``onnx``), ONNX Runtime's execution providers in order of
    preference (empty for torch), and, when it is not what the user asked for, a note saying why."""

    name: str
    providers: Providers = ()
    note: str | None = None


def resolve_backend(setting: str, device: torch.device) -> BackendChoice:
    """``onnx`` runs with ONNX Runtime on ``device`` (its CUDA provider on a CUDA device where it has one, else
    the CPU, saying so); when a package of the ``onnx`` extra cannot be imported it falls back to PyTorch with
    a note naming it."""
    if setting != "onnx":
        return BackendChoice(setting)
    for package in ONNX_PACKAGES:
        try:
            importlib.import_module(package)
        except ImportError:
            return BackendChoice(
                "torch", note=f"{package} is not installed (pip install 'flowsr[onnx]'): running with PyTorch"
            )
    import onnxruntime

    if device.type != "cuda":
        return BackendChoice("onnx", (CPU_PROVIDER,))
    if CUDA_PROVIDER not in onnxruntime.get_available_providers():
        note = "this onnxruntime has no CUDA execution provider (pip install onnxruntime-gpu): its parts run on the CPU"
        return BackendChoice("onnx", (CPU_PROVIDER,), note)
    cuda = (CUDA_PROVIDER, {"device_id": str(device.index or 0)})
    return BackendChoice("onnx", (cuda, CPU_PROVIDER))
