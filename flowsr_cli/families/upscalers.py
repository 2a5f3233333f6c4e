"""The upscaler a run asks for: the bicubic baseline by name, or a model file (a path, or a name the hub
resolves) run by the engine its family registered.

:func:`prepare_model` checks a request as far as it can without loading the model (the device, the model's
file and the header that names its network), so usage errors come before the slow part; :func:`load_upscaler`
then loads it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowsr_cli.config import BICUBIC, CONSISTENCY_CHOICES, Settings, consistency_default
from flowsr_cli.engine.allocator import reuse_freed_memory
from flowsr_cli.engine.backend import resolve_backend
from flowsr_cli.engine.bicubic import BicubicUpscaler
from flowsr_cli.engine.compiling import compile_parts, resolve_compile
from flowsr_cli.engine.consistent import ConsistentUpscaler
from flowsr_cli.engine.device import DeviceChoice, precision_note, resolve_device, resolve_dtype
from flowsr_cli.engine.onnx_cache import CACHE_FOLDER
from flowsr_cli.engine.onnx_part import OnnxRuntime
from flowsr_cli.engine.upscaler import Upscaler
from flowsr_cli.errors import UsageError
from flowsr_cli.families.model_file import load_model, read_model_metadata
from flowsr_cli.families.registry import EngineOptions, build_engine, network, runnable
from flowsr_cli.hub.catalog import unknown_model
from flowsr_cli.io.provenance import DEFAULT_TEMPERATURE

if TYPE_CHECKING:
    import torch

    from flowsr_cli.hub.catalog import Hub


@dataclass(frozen=True)
class UpscalerRequest:
    """What the user chose: a model, where to run it, how to tile and how to sample it."""

    model: str
    device: str = "auto"
    precision: str = "auto"
    tile: str | int = "auto"
    tile_pad: str | int = "auto"
    prior: str | None = None
    temperature: float | None = None
    """The Gaussian prior's temperature; None: the model's default (its network's, e.g. HCFlow's 0.9)."""
    guard: bool = True
    consistency: str = "auto"
    """``on``, ``off`` or ``auto`` (:func:`~flowsr_cli.config.consistency_default`): back-project the output
    onto the input."""
    hub: Hub | None = None
    """Turns model names into files (registry, cache, downloads); None accepts paths only."""
    backend: str = "torch"
    """What runs the model's plain networks (:data:`~flowsr_cli.config.MODEL_BACKENDS`)."""
    compile: bool = False
    """torch.compile the parts of the model that offer it (:mod:`~flowsr_cli.engine.compiling`)."""
    cache_dir: Path | None = None
    """flowsr's cache folder (exported ONNX graphs go to its ``onnx`` folder); None: the ``cache_dir`` setting."""


@dataclass(frozen=True)
class PreparedModel:
    """A request checked without loading its model: the device works, the model's file is there (downloaded
    if need be) and its header names a network that can run as asked."""

    request: UpscalerRequest
    device: DeviceChoice
    path: Path | None
    """The model file; None for the bicubic baseline."""
    learned_prior: bool = False
    """The model runs its learned prior (it has one, and ``--prior gaussian`` was not asked for)."""
    fixed_scale: int | None = None
    """The one scale the model's network produces (SRFlow: 4, HCFlow: 2^levels), or None for any scale."""
    consistency: bool = False
    """The output is back-projected onto the input (``consistency`` resolved for this model)."""
    default_temperature: float = DEFAULT_TEMPERATURE
    """The temperature the model's network samples at unless told (HCFlow: 0.9; bicubic: 0.5, unused)."""
    temperature: float = DEFAULT_TEMPERATURE
    """The temperature the model samples at: the request's, or :attr:`default_temperature`."""

    @property
    def gaussian(self) -> bool:
        """True when the model draws Gaussian latents (it is a flow, not running a learned prior)."""
        return self.path is not None and not self.learned_prior

    @property
    def stochastic(self) -> bool:
        """True when different seeds give different outputs."""
        return self.gaussian and self.temperature > 0


def prepare_model(request: UpscalerRequest) -> PreparedModel:
    """Check a request before its model loads: the device, the model's file (fetched by the hub, sha256
    checked) and its header's architecture (one ``upscale`` runs, with a learned prior if one is asked for), which
    gives the model's fixed scale and default temperature."""
    choice = resolve_device(request.device)
    if request.model == BICUBIC:
        if request.prior == "learned":
            raise UsageError("--prior learned needs a model with a learned prior; bicubic has none")
        consistency = _consistency(request.consistency, None)
        return PreparedModel(request, choice, None, consistency=consistency, temperature=_temperature(request))
    path = request.hub.resolve(request.model) if request.hub is not None else Path(request.model)
    if path is None:
        raise unknown_model(request.model, request.hub)
    metadata = read_model_metadata(path)
    spec = metadata["spec"]
    architecture = runnable(spec["name"], request.model, request.prior)
    default = architecture.default_temperature
    return PreparedModel(
        request,
        choice,
        path,
        learned_prior=architecture.learned_prior and request.prior != "gaussian",
        fixed_scale=architecture.fixed_scale(spec.get("args", {})),
        consistency=_consistency(request.consistency, metadata),
        default_temperature=default,
        temperature=_temperature(request, default),
    )


def _temperature(request: UpscalerRequest, default: float = DEFAULT_TEMPERATURE) -> float:
    return default if request.temperature is None else request.temperature


def default_temperature(spec_name: str) -> float:
    """The temperature the network a spec names samples at unless told (ModelSpecError for an unknown name)."""
    return network(spec_name).default_temperature


def _consistency(choice: str, metadata: dict[str, Any] | None) -> bool:
    if choice not in CONSISTENCY_CHOICES:
        raise UsageError(f"consistency must be auto, on or off, got {choice!r}")
    return consistency_default(metadata) if choice == "auto" else choice == "on"


def load_upscaler(prepared: PreparedModel) -> Upscaler:
    """Load a prepared model onto its device and build the upscaler that runs it (this process keeps freed
    memory for reuse from then on, see :mod:`flowsr_cli.engine.allocator`)."""
    reuse_freed_memory()
    request, device = prepared.request, prepared.device.device
    notes = [prepared.device.note] if prepared.device.note else []
    if prepared.path is None:
        return _projected(BicubicUpscaler(device, tile=request.tile, notes=notes), prepared.consistency)
    dtype = resolve_dtype(request.precision, device)
    slow = precision_note(dtype, device)
    notes += [slow] if slow else []
    options = EngineOptions(
        name=request.model,
        device=device,
        dtype=dtype,
        temperature=prepared.temperature,
        prior=request.prior,
        tile=request.tile,
        tile_pad=request.tile_pad,
        guard=request.guard,
        notes=notes,
        onnx=_onnx_runtime(request, prepared.path, device, notes),
    )
    model = load_model(prepared.path, device)
    _compile(model, request, device, notes)
    upscaler = build_engine(model, options)
    if options.onnx is not None and not options.onnx.parts:
        notes.append(f"{request.model} has no parts that run with ONNX Runtime: running with PyTorch")
    return _projected(upscaler, prepared.consistency)


def _compile(model: torch.nn.Module, request: UpscalerRequest, device: torch.device, notes: list[str]) -> None:
    """Under ``compile``, the parts of ``model`` that offer it run compiled; notes say so (the first image waits
    for the compile) or why nothing will be."""
    choice = resolve_compile(request.compile, device)
    if choice.note is not None:
        notes.append(choice.note)
    if not choice.enabled:
        return
    if compile_parts(model, notes):
        notes.append(f"{request.model}: compiling with torch.compile as the first image runs (kept for later runs)")
    else:
        notes.append(f"{request.model} has no parts that torch.compile speeds up: not compiling")


def _onnx_runtime(request: UpscalerRequest, path: Path, device: torch.device, notes: list[str]) -> OnnxRuntime | None:
    """ONNX Runtime for the model file at ``path`` when the request's backend is ``onnx`` and onnxruntime is
    installed; None otherwise (with the backend's note, e.g. that onnxruntime is missing)."""
    choice = resolve_backend(request.backend, device)
    if choice.note is not None:
        notes.append(choice.note)
    if choice.name != "onnx":
        return None
    from flowsr_cli.hub.download import sha256_of

    cache_dir = request.cache_dir if request.cache_dir is not None else Settings()["cache_dir"]
    return OnnxRuntime(Path(cache_dir) / CACHE_FOLDER, sha256_of(path), choice.providers, notes)


def _projected(upscaler: Upscaler, consistency: bool) -> Upscaler:
    return ConsistentUpscaler(upscaler) if consistency else upscaler


def create_upscaler(request: UpscalerRequest) -> Upscaler:
    """Build the upscaler a request names, on its device."""
    return load_upscaler(prepare_model(request))
