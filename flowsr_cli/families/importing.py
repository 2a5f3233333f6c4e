"""Converting original checkpoints (``torch.save`` pickles of the research code) into flowsr models.

The file is loaded once, with ``torch.load(weights_only=True)``, which refuses anything but tensors and
plain containers; then each registered family's importer is asked in turn whether it is one of its own.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flowsr_cli.errors import FlowsrError
from flowsr_cli.families.registry import importers


class CheckpointImportError(FlowsrError):
    """A checkpoint cannot be converted; the message says what is unrecognised (a usage problem: exit 2)."""

    exit_code = 2


def import_failure(path: Path, problem: str) -> CheckpointImportError:
    """The error for a checkpoint at ``path`` that cannot be imported, naming the file and the problem (on one line)."""
    return CheckpointImportError(f"{path}: {' '.join(problem.split())}")


def is_plain_tensor(value: object) -> bool:
    """Whether ``value`` is what an original checkpoint's weights are: a dense CPU tensor of real numbers
    (not sparse, quantized, nested, complex or on the meta device)."""
    return (
        isinstance(value, torch.Tensor)
        and value.layout == torch.strided
        and value.device.type == "cpu"
        and not (value.is_quantized or value.is_nested or value.is_complex())
    )


def listed(names: list[str], shown: int = 3) -> str:
    """The first few names, and "..." when there are more."""
    return ", ".join(names[:shown]) + (" ..." if len(names) > shown else "")


def checked_state(path: Path, state: object) -> dict[str, torch.Tensor]:
    """A checkpoint's ``sd`` (at ``path``) with DataParallel's ``module.`` prefixes stripped, if it is a state
    dict of plain tensors; a one-line import failure saying what is wrong otherwise."""
    if not isinstance(state, Mapping):
        raise import_failure(path, f"its 'sd' is of type {type(state).__name__}, not a state dict")
    not_text = sorted(repr(key) for key in state if not isinstance(key, str))
    if not_text:
        raise import_failure(path, f"its 'sd' has keys that are not text: {listed(not_text)}")
    not_tensors = sorted(key for key, value in state.items() if not is_plain_tensor(value))
    if not_tensors:
        raise import_failure(path, f"its 'sd' has entries that are not tensors of numbers: {listed(not_tensors)}")
    return {key.removeprefix("module."): value for key, value in state.items()}


def load_fitting(module: nn.Module, state: Mapping[str, torch.Tensor], location: Path, what: str) -> None:
    """Load ``state`` (as float32) into ``module``: a one-line import failure at ``location`` saying that the
    weights do not fit ``what`` (e.g. "a LINF of the checkpoint's own arguments") when they do not."""
    try:
        module.load_state_dict({key: value.float() for key, value in state.items()})
    except RuntimeError as exc:
        problem = " ".join(str(exc).split())[:400]
        raise import_failure(location, f"weights do not fit {what}: {problem}") from None


def load_weights_only(path: str | os.PathLike[str]) -> Any:
    """A checkpoint's contents, loaded without running any pickled code."""
    location = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on what it checks (e.g. sparse tensors), not the user's
            return torch.load(location, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise import_failure(location, "not found") from None
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError ... for bad files
        reason = " ".join(str(exc).split())[:300]
        raise import_failure(location, f"cannot be loaded safely as a weights-only checkpoint ({reason})") from None


def convert_original(path: str | os.PathLike[str], prior: str | os.PathLike[str] | None = None) -> nn.Module:
    """Build the flowsr model holding the weights of an original checkpoint of any registered family; with
    ``prior``, one model holding the flow of ``path`` and the original learned prior (LP) of ``prior``."""
    location = Path(path)
    checkpoint = load_weights_only(location)
    known = importers()
    if prior is None:
        for importer in known:
            model = importer.convert(checkpoint, location)
            if model is not None:
                return model.eval()
        raise import_failure(location, "not " + " nor ".join(importer.expects for importer in known))
    prior_location = Path(prior)
    prior_checkpoint = load_weights_only(prior_location)
    for importer in known:
        if importer.convert_with_prior is not None:
            model = importer.convert_with_prior(checkpoint, location, prior_checkpoint, prior_location)
            if model is not None:
                return model.eval()
    for importer in known:
        if importer.convert(checkpoint, location) is not None:
            raise import_failure(location, "its family has no original learned prior that flowsr imports")
    with_priors = [importer.expects for importer in known if importer.convert_with_prior is not None]
    raise import_failure(location, "not " + " nor ".join(with_priors))
