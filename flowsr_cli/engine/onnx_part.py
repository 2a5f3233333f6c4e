"""Running a plain network of a loaded model with ONNX Runtime, without changing the network's code.

An engine swaps a part (e.g. LINF's ``encoder``) for :meth:`OnnxRuntime.wrap` of it: an ``nn.Module`` whose
forward runs an ONNX Runtime session of that part for the input's shape (one session per shape, kept for the
run; the graphs are cached on disk by :mod:`flowsr_cli.engine.onnx_cache`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from flowsr_cli.engine.backend import Providers
from flowsr_cli.engine.onnx_cache import INPUT, cache_file, load_session

if TYPE_CHECKING:
    from onnxruntime import InferenceSession


@dataclass
class OnnxRuntime:
    """One loaded model's use of ONNX Runtime: where its graphs are cached (``folder``, under a folder named
    by the model file's sha256), the execution providers, the run's notes, and the parts swapped in."""

    folder: Path
    model_sha256: str
    providers: Providers
    notes: list[str]
    parts: list[str] = field(default_factory=list)

    def wrap(self, network: nn.Module, part: str) -> nn.Module:
        """``network`` run by ONNX Runtime; ``part`` names it in cache file names. A wrapped part is returned
        as it is, so an engine may wrap what another engine of the same model wrapped already."""
        if isinstance(network, OnnxPart):
            return network
        self.parts.append(part)
        return OnnxPart(network, part, self)

    def session(self, network: nn.Module, part: str, shape: tuple[int, ...], device: torch.device) -> InferenceSession:
        """The session of ``part`` for inputs of ``shape``, from the disk cache or exported there."""
        path = cache_file(self.folder, self.model_sha256, part, shape)
        return load_session(network, path, shape, device, self.providers, self.notes)


class OnnxPart(nn.Module):
    """A single-input network run by ONNX Runtime in float32; the wrapped network's attributes (e.g. an
    encoder's ``out_channels``) stay readable through the wrapper, and its weights stay what is exported."""

    def __init__(self, network: nn.Module, part: str, runtime: OnnxRuntime) -> None:
        super().__init__()
        self.network = network
        self.part = part
        self.runtime = runtime
        self._sessions: dict[tuple[int, ...], InferenceSession] = {}

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["network"], name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output for ``x``, in float32 on ``x``'s device and in its memory layout."""
        shape = tuple(x.shape)
        session = self._sessions.get(shape)
        if session is None:
            session = self._sessions[shape] = self.runtime.session(self.network, self.part, shape, x.device)
        (output,) = session.run(None, {INPUT: x.detach().to("cpu", torch.float32).contiguous().numpy()})
        result = torch.from_numpy(output).to(x.device)
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            return result.contiguous(memory_format=torch.channels_last)
        return result
