"""Plain networks exported to ONNX for one fixed input shape, kept on disk and loaded into ONNX Runtime.

A graph is exported once per model, part and input shape and written atomically under the cache folder; its
file name holds everything the graph depends on (the model file's sha256, the part, the shape, the opset, and
the onnxruntime, torch and flowsr versions), so a later run reuses it and any change makes a new one. A cached
file ONNX Runtime cannot load, or one for another shape, is exported again.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from flowsr_cli import __version__
from flowsr_cli.engine.backend import Providers
from flowsr_cli.io.atomic import atomic_write_bytes

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

CACHE_FOLDER = "onnx"
"""The folder of ``cache_dir`` that exported graphs go to."""
OPSET = 17
"""The ONNX opset graphs are exported with (every op of the encoders has been in ONNX since opset 11)."""
INPUT = "input"
OUTPUT = "output"


def cache_file(folder: Path, model_sha256: str, part: str, shape: tuple[int, ...]) -> Path:
    """Where the graph of ``part`` of the model with this sha256, for inputs of ``shape``, is kept."""
    import onnxruntime

    dims = "x".join(map(str, shape))
    versions = f"opset{OPSET}-ort{onnxruntime.__version__}-torch{torch.__version__}-flowsr{__version__}"
    return folder / model_sha256 / f"{part}-{dims}-{versions}.onnx"


def export_graph(network: nn.Module, shape: tuple[int, ...], device: torch.device) -> bytes:
    """``network`` as an ONNX graph (float32) for one input of ``shape``, traced on ``device``."""
    buffer = io.BytesIO()
    with torch.inference_mode(False), torch.no_grad(), torch.autocast(device.type, enabled=False):
        example = torch.zeros(shape, device=device)
        with warnings.catch_warnings():
            # The TorchScript exporter warns that it is deprecated; the newer one needs onnxscript besides onnx.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                network, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=[INPUT],
                output_names=[OUTPUT],
            )  # fmt: skip
    return buffer.getvalue()


def open_session(graph: bytes | Path, providers: Providers) -> InferenceSession:
    """An ONNX Runtime session of ``graph`` (its bytes or its file) using as many threads as torch does."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ONNX Runtime's warnings are not the user's business
    # PyTorch runs between the session's calls: ONNX Runtime's threads must not spin-wait on its cores meanwhile
    # (with spinning, linf-lp x4 of a 256² input ran at 0.57x of PyTorch, without it at 0.97x)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # no arena kept between calls: the paper-size LINF-LP at 256² x4 peaked at 1.54 instead of 1.83 GB, as fast
    options.enable_cpu_mem_arena = False
    source = str(graph) if isinstance(graph, Path) else graph
    return onnxruntime.InferenceSession(source, options, providers=list(providers))


def _cached_session(path: Path, shape: tuple[int, ...], providers: Providers) -> InferenceSession | None:
    """The session of the cached file at ``path`` if it loads and takes inputs of ``shape``, else None."""
    from onnxruntime.capi import onnxruntime_pybind11_state as errors

    failures = (OSError, errors.Fail, errors.InvalidProtobuf, errors.InvalidGraph, errors.NoSuchFile)
    try:
        session = open_session(path, providers)
    except failures:
        return None
    inputs = session.get_inputs()
    return session if [(item.name, item.shape) for item in inputs] == [(INPUT, list(shape))] else None


def load_session(
    network: nn.Module,
    path: Path,
    shape: tuple[int, ...],
    device: torch.device,
    providers: Providers,
    notes: list[str],
) -> InferenceSession:
    """The session of ``network`` for inputs of ``shape``: from the cache file ``path`` when it holds a usable
    graph, else exported and written there (a note says why a file was replaced or could not be written)."""
    if path.is_file():
        session = _cached_session(path, shape, providers)
        if session is not None:
            return session
        notes.append(f"ONNX cache file {path} could not be used: exported again")
    graph = export_graph(network, shape, device)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, graph)
    except OSError as exc:
        notes.append(f"ONNX cache file {path}: cannot write ({exc.strerror or exc}): exported for this run only")
    return open_session(graph, providers)
