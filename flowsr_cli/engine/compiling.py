"""``--compile``: torch.compile for the parts of a model that eager PyTorch runs as many small passes.

Only models that offer such parts take part (a module with a ``use_compiled(compile_function)`` method, such
as LINF's Fourier features); their plain networks stay as they are. Compiling needs a compiler for the
device (a C++ compiler on the CPU, Triton on a CUDA device); without one, or where compiling fails, the
model runs eagerly and a note says why.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

CompiledFunction = Callable[..., Any]
_QUIET_LOGGERS = ("torch.utils.cpp_extension",)
"""Loggers whose warnings while compiling are about torch's own build set-up (e.g. that no CUDA runtime was
found on a CPU-only machine), not about the user's run."""


@dataclass(frozen=True)
class CompileChoice:
    """Whether compiling will be tried, and when it will not though it was asked for, a note saying why."""

    enabled: bool
    note: str | None = None


def resolve_compile(wanted: bool, device: torch.device) -> CompileChoice:
    """``wanted`` checked against what torch.compile needs on ``device``."""
    if not wanted:
        return CompileChoice(False)
    if not torch._dynamo.is_dynamo_supported():
        return CompileChoice(False, f"torch.compile is not supported on Python {sys.version.split()[0]}: not compiling")
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return CompileChoice(
                False, "torch.compile needs Triton on a CUDA device (pip install triton): not compiling"
            )
        return CompileChoice(True)
    compiler = cpp_compiler()
    if shutil.which(compiler) is None:
        return CompileChoice(
            False, f"torch.compile needs a C++ compiler on the CPU ({compiler} not found; set CXX): not compiling"
        )
    return CompileChoice(True)


def cpp_compiler() -> str:
    """The C++ compiler torch.compile builds CPU kernels with: ``CXX``, else the platform's default."""
    default = {"darwin": "clang++", "win32": "cl"}.get(sys.platform, "g++")
    return os.environ.get("CXX") or default


class CompiledKernel:
    """``function`` compiled by torch.compile on its first call (``dynamic=True``: one compile serves every
    query count). Where compiling or running the compiled code fails, it runs ``function`` itself from then
    on and adds a note to ``notes`` saying so; an error of ``function``'s own still reaches the caller."""

    def __init__(self, function: CompiledFunction, notes: list[str]) -> None:
        self.function = function
        self.notes = notes
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        self._compiled: CompiledFunction | None = torch.compile(function, dynamic=True)

    def __call__(self, *args: Any) -> Any:
        """``function(*args)``, compiled unless compiling has failed."""
        if self._compiled is not None:
            try:
                return self._compiled(*args)
            except Exception as error:  # noqa: BLE001 - any compile failure falls back to the eager function
                self._compiled = None
                reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
                self.notes.append(f"torch.compile failed ({reason[:200]}): running without it")
        return self.function(*args)


def compile_parts(model: nn.Module, notes: list[str]) -> int:
    """Let every part of ``model`` that offers compiled kernels use them (:class:`CompiledKernel`, failures
    noted in ``notes``); how many parts did."""
    parts = [module for module in model.modules() if callable(getattr(module, "use_compiled", None))]
    for part in parts:
        part.use_compiled(lambda function: CompiledKernel(function, notes))
    return len(parts)
