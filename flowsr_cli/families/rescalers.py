"""The image rescaling models `flowsr rescale` runs, and its batch works (:class:`~flowsr_cli.engine.batch.Work`).

:func:`prepare_rescaler` checks a model without loading it (its file, fetched by the hub for a registry name, and
the network its header names, which must be a rescaling one, with its scale); :func:`load_rescaler` loads it and
builds the engine its family registered. :class:`DownWork` makes each image's LR and the record its chunk keeps;
:class:`UpWork` checks each LR against its chunk (the file is lossless, its pixels and size are the ones the model
made, the model file is the same) and restores it, refusing what would not come back unless ``force``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from flowsr_cli.engine.allocator import reuse_freed_memory
from flowsr_cli.engine.batch import Rendered
from flowsr_cli.engine.rescale import Rescaler, forced_colour, lr_colour, rescale_down, rescale_up
from flowsr_cli.engine.upscaler import ProgressCallback, UpscaleReport
from flowsr_cli.errors import FlowsrError, ImageError, UsageError
from flowsr_cli.families.model_file import load_model, read_model_metadata
from flowsr_cli.families.registry import EngineOptions, build_rescaler, rescaling
from flowsr_cli.io.image import Image
from flowsr_cli.io.provenance import read_mark, read_mark_bytes
from flowsr_cli.io.rescale_mark import LOSSY_COST, RescaleRecord, lossy_format, lr_sha256, rescale_mark_of
from flowsr_cli.io.sizing import Size

if TYPE_CHECKING:
    from flowsr_cli.hub.catalog import Hub


class RescaleError(FlowsrError):
    """An LR that `rescale up` cannot restore as asked (no chunk, changed pixels, a lossy file, another model):
    that image fails, the others go on."""


@dataclass(frozen=True)
class PreparedRescaler:
    """A rescaling model checked without loading it."""

    name: str
    """The model as the user, or an LR's chunk, named it."""
    path: Path
    scale: int


def prepare_rescaler(model: str, hub: Hub) -> PreparedRescaler:
    """The file ``model`` names (fetched by the hub for a registry name), checked to hold an image rescaling
    model; UsageError for a name that names nothing or a model of another kind."""
    path = hub.resolve(model)
    if path is None or not path.is_file():
        raise UsageError(f"no rescaling model {model!r}: pass --model FILE or NAME (`flowsr models list`)")
    spec = read_model_metadata(path)["spec"]
    scale = rescaling(spec["name"], model).fixed_scale(spec.get("args", {}))
    assert scale is not None  # rescaling models have one scale
    return PreparedRescaler(model, path, scale)


def load_rescaler(
    prepared: PreparedRescaler, device: torch.device, tile: str | int, tile_pad: str | int, notes: list[str]
) -> Rescaler:
    """Load a prepared model onto ``device`` and build the engine its family registered for it (this process keeps
    freed memory for reuse from then on, see :mod:`flowsr_cli.engine.allocator`)."""
    reuse_freed_memory()
    options = EngineOptions(prepared.name, device, torch.float32, tile=tile, tile_pad=tile_pad, notes=notes)
    return build_rescaler(load_model(prepared.path, device), options)


@dataclass
class DownWork:
    """`rescale down`'s work: each image's 8-bit LR, with the record its chunk keeps."""

    rescaler: Rescaler
    model: str
    model_sha256: str | None
    seed: int

    @property
    def notes(self) -> list[str]:
        """The engine's notes."""
        return self.rescaler.notes

    def render(self, image: Image, source: Path | bytes, seeds: Sequence[int], progress: ProgressCallback) -> Rendered:
        """The LR of ``image``; its mark records the model, the original's size and padding and the LR's hash."""
        down = rescale_down(image, self.rescaler, progress)
        record = RescaleRecord(
            self.model,
            self.model_sha256,
            self.rescaler.scale,
            self.seed,
            self.rescaler.default_temperature,
            down.size,
            down.padding,
            down.grey,
            down.bit_depth,
            lr_sha256(down.image.pixels[..., :3]),
        )
        return Rendered([down.image], UpscaleReport(notes=down.notes), record.mark())


@dataclass(frozen=True)
class _Problem:
    """Why an LR would not come back: the refusal, and the warning when ``--force`` restores it anyway."""

    refusal: str
    warning: str


_NO_CHUNK = _Problem(
    "no flowsr rescale chunk: not an LR that `flowsr rescale down` wrote, or one whose metadata was stripped; the "
    "inverse restores only its model's own LRs (for other images use `flowsr upscale`)",
    "no flowsr rescale chunk: restored as if it were the model's own LR, uncropped; unless it is, expect worse "
    "than `flowsr upscale`",
)
_CHANGED = _Problem(
    "its pixels changed since `flowsr rescale down` wrote it (edited, resized or re-encoded): the inverse needs the "
    "model's exact LR",
    "its pixels changed since `flowsr rescale down` wrote it: the details hidden in the exact pixels are lost, "
    "expect no better than bicubic",
)


def _damaged(detail: str) -> _Problem:
    return _Problem(
        f"its flowsr rescale chunk is damaged ({detail})",
        f"its flowsr rescale chunk is damaged ({detail}): restored as if it were the model's own LR, uncropped",
    )


def _lossy(kind: str) -> _Problem:
    return _Problem(
        f"it is a {kind}: lossy encoding changed the LR's pixels, and with them what the model hid in them "
        f"({LOSSY_COST})",
        f"it is a {kind}: restored from changed pixels, expect worse than plain bicubic ({LOSSY_COST})",
    )


def _other_model(record: RescaleRecord, prepared: PreparedRescaler, sha256: str | None) -> _Problem:
    made = f"made at x{record.scale} by {record.model!r} (sha256 {str(record.model_sha256)[:12]}…)"
    here = f"{prepared.name!r} is a x{prepared.scale} model with sha256 {str(sha256)[:12]}…"
    return _Problem(
        f"{made}, but {here}: only the model that made an LR can restore it",
        f"{made}, restored with {prepared.name!r} (x{prepared.scale}, sha256 {str(sha256)[:12]}…): "
        "another model's inverse brings back wrong details",
    )


@dataclass
class UpWork:
    """`rescale up`'s work: each LR checked against its chunk, then restored by the model the chunk names (or
    ``model``), at its seed and heat (or ``temperature``), cropped to its original size."""

    hub: Hub
    device: torch.device
    tile: str | int
    tile_pad: str | int
    max_output_pixels: int
    model_sha256: Callable[[str], str | None]
    """The sha256 of the file a model name or path names (the hub's published one for a registry model)."""
    model: str | None = None
    """Restore every LR with this model instead of the one its chunk names (the sha256 check still applies)."""
    force: bool = False
    temperature: float | None = None
    """The heat every LR is restored at instead of its recorded one."""
    notes: list[str] = field(default_factory=list)
    _prepared: dict[str, tuple[PreparedRescaler, str | None]] = field(default_factory=dict)
    _engines: dict[Path, Rescaler] = field(default_factory=dict)

    def render(self, image: Image, source: Path | bytes, seeds: Sequence[int], progress: ProgressCallback) -> Rendered:
        """The HR restored from the LR ``image`` (its chunk read from ``source``); a RescaleError names what is
        wrong with it unless ``force``, which restores it anyway and warns what suffers."""
        record, colour, problems = _inspect(image, source)
        self._refuse(problems)
        prepared, sha256 = self._model(record)
        if record is not None and (record.scale != prepared.scale or record.model_sha256 != sha256):
            problems.append(_other_model(record, prepared, sha256))
            self._refuse(problems)
        if record is None or record.scale != prepared.scale or record.lr_size != Size(image.width, image.height):
            record = _as_is(image, prepared, sha256, record, self._engine(prepared).default_temperature)
        if self.temperature is not None:
            record = replace(record, temperature=self.temperature)
        self._check_size(record.size)
        pixels = colour if colour is not None else forced_colour(image)
        restored, report = rescale_up(image, pixels, record, self._engine(prepared), progress)
        report.notes.extend(problem.warning for problem in problems)
        return Rendered([restored], report, {**record.mark(), "forced": bool(problems)})

    def _refuse(self, problems: list[_Problem]) -> None:
        if problems and not self.force:
            raise RescaleError(f"{problems[0].refusal}; --force restores it anyway")

    def _model(self, record: RescaleRecord | None) -> tuple[PreparedRescaler, str | None]:
        """The model that restores an LR (``model``, or the one its chunk names) and its file's sha256."""
        name = self.model or (record.model if record is not None else None)
        if name is None:
            raise RescaleError("no flowsr rescale chunk names the model that made it: --force needs --model NAME|FILE")
        if name not in self._prepared:
            try:
                prepared = prepare_rescaler(name, self.hub)
            except UsageError as exc:
                raise RescaleError(f"made by {name!r}, which cannot restore it here: {exc}") from None
            self._prepared[name] = prepared, self.model_sha256(name)
        return self._prepared[name]

    def _engine(self, prepared: PreparedRescaler) -> Rescaler:
        if prepared.path not in self._engines:
            self._engines[prepared.path] = load_rescaler(prepared, self.device, self.tile, self.tile_pad, self.notes)
        return self._engines[prepared.path]

    def _check_size(self, size: Size) -> None:
        if size.width * size.height > self.max_output_pixels:
            raise ImageError(
                f"the restored image would be {size.width}×{size.height} = {size.width * size.height:,} pixels, above "
                f"the max_output_pixels limit of {self.max_output_pixels:,} (raise it with `flowsr config set "
                "max_output_pixels N` or FLOWSR_MAX_OUTPUT_PIXELS)"
            )


def _inspect(image: Image, source: Path | bytes) -> tuple[RescaleRecord | None, np.ndarray | None, list[_Problem]]:
    """What an LR's file says of it: the record its chunk holds (None: no usable chunk), its 8-bit RGB (None: it
    is not 8-bit RGB) and what keeps it from coming back (no chunk, a lossy format, changed pixels)."""
    chunk = rescale_mark_of(read_mark_bytes(source) if isinstance(source, bytes) else read_mark(source))
    record, problems = None, [_NO_CHUNK]
    if chunk is not None:
        try:
            record, problems = RescaleRecord.from_mark(chunk), []
        except ValueError as exc:
            problems = [_damaged(str(exc))]
    kind = lossy_format(source)
    if kind is not None:
        problems.append(_lossy(kind))
    colour = lr_colour(image)
    if record is not None and not _same_pixels(record, colour):
        problems.append(_CHANGED)
    return record, colour, problems


def _same_pixels(record: RescaleRecord, colour: np.ndarray | None) -> bool:
    """Whether an LR's 8-bit RGB ``colour`` (None: it is not 8-bit RGB) is what its chunk's hash and size say."""
    if colour is None or record.lr_size != Size(colour.shape[1], colour.shape[0]):
        return False
    return lr_sha256(colour) == record.lr_sha256


def _as_is(
    image: Image, prepared: PreparedRescaler, sha256: str | None, record: RescaleRecord | None, temperature: float
) -> RescaleRecord:
    """How a forced LR whose chunk does not fit it (or that has none) is restored: by ``prepared`` at its scale and
    heat, uncropped, with the chunk's seed, greyscale and bit depth (without one: seed 0, the image's own)."""
    return RescaleRecord(
        prepared.name,
        sha256,
        prepared.scale,
        record.seed if record is not None else 0,
        temperature,
        Size(prepared.scale * image.width, prepared.scale * image.height),
        (0, 0),
        record.grey if record is not None else image.channels < 3,
        record.bit_depth if record is not None else image.bit_depth,
    )
