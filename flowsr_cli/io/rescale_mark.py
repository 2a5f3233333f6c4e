"""The chunk `flowsr rescale down` writes into each LR, and what `flowsr rescale up` checks before it inverts one.

The chunk is the LR's provenance mark (:mod:`flowsr_cli.io.provenance`: one PNG ``tEXt`` chunk named ``flowsr``,
in WebP an XMP packet), a JSON object such as::

    {"flowsr": "0.1.0", "rescale": "down", "model": "hcflow-rescale-x4", "model_sha256": "…", "scale": 4,
     "seed": 0, "temperature": 1.0, "size": [1023, 767], "padding": [1, 1], "grey": false, "bit_depth": 8,
     "lr_sha256": "…"}

``size`` is the original's (width, height); ``padding`` the columns (right) and rows (bottom) mirrored in to reach a
multiple of the scale; ``grey`` and ``bit_depth`` the original's; ``seed`` and ``temperature`` (the heat) the
latents `rescale up` draws; ``lr_sha256`` the sha256 of the LR's 8-bit RGB pixels (:func:`lr_sha256`; alpha is not
part of it, as the model never sees it). `rescale up` writes ``"rescale": "up"`` with the same record into the
images it restores. Reading never imports an imaging library.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from flowsr_cli.io.provenance import DEFAULT_SEED, read_mark
from flowsr_cli.io.sizing import Size

if TYPE_CHECKING:
    import numpy as np

RESCALE_KEY = "rescale"
LOSSY_COST = "one JPEG pass at quality 90 puts HCFlow x4 below plain bicubic down and up"
"""What a lossily stored LR costs (HCFlow's paper: 35.2 dB -> 27.4 dB on DIV2K, where bicubic gives 27.9)."""
DOWN, UP = "down", "up"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_SIDE = 1 << 20
_MAX_MODEL_NAME = 1024
_MAX_TEMPERATURE = 100.0
MAX_SEED = (1 << 63) - 1
"""The largest seed a chunk records (`rescale down --seed` takes 0 to this)."""
_MAX_CHUNKS = 64


@dataclass(frozen=True)
class RescaleSettings:
    """The settings of a `rescale down` or `rescale up` run that its outputs' marks record and a rerun compares
    (as :class:`~flowsr_cli.io.provenance.RunSettings` does for `upscale`). Down: the model (and its file's
    sha256), the scale and the seed recorded for the inverse; up: the direction, and the heat when ``--temperature``
    overrides the LRs' (everything else follows from each LR's chunk)."""

    direction: str
    model: str | None = None
    model_sha256: str | None = None
    scale: int | None = None
    seed: int = DEFAULT_SEED
    temperature: float | None = None
    """Up: the heat every LR is restored at; None: each LR's own (down records the model's)."""

    @property
    def consistency(self) -> str | None:
        """None: rescaling never back-projects."""
        return None

    def mark(self, sample: int | None = None) -> dict[str, object]:
        """What every output of the run records (``sample`` is always None: one output per input)."""
        if self.direction == UP:
            return {RESCALE_KEY: UP} if self.temperature is None else {RESCALE_KEY: UP, "temperature": self.temperature}
        return {
            RESCALE_KEY: DOWN,
            "model": self.model,
            "model_sha256": self.model_sha256,
            "scale": self.scale,
            "seed": self.seed,
        }

    def differences(self, mark: Mapping[str, object], sample: int | None = None) -> list[str]:
        """How an earlier output's ``mark`` differs from this run's: another command made it, or (down) another
        model file (compared by sha256 when both are known, else by name), scale or seed."""
        made_by = mark.get(RESCALE_KEY)
        if made_by != self.direction:
            command = f"rescale {made_by}" if made_by in (DOWN, UP) else "another flowsr command"
            return [f"made by {command}, not rescale {self.direction}"]
        wanted = self.mark()
        recorded_sha, wanted_sha = mark.get("model_sha256"), wanted.pop("model_sha256", None)
        found = []
        if recorded_sha and wanted_sha:
            wanted.pop("model")
            if recorded_sha != wanted_sha:
                found.append(f"model file changed (sha256 {_shown(recorded_sha)[:12]}…, now {str(wanted_sha)[:12]}…)")
        found.extend(
            f"{key} {_shown(mark.get(key))}, not {_shown(value)}"
            for key, value in wanted.items()
            if mark.get(key) != value
        )
        return found


def _shown(value: object, limit: int = 40) -> str:
    """A recorded value in a message: strings bare, anything else as JSON; shortened (a mark is untrusted)."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class RescaleRecord:
    """What an LR's chunk says about how to restore its original (see the module docstring)."""

    model: str
    model_sha256: str | None
    scale: int
    seed: int
    temperature: float
    size: Size
    padding: tuple[int, int]
    grey: bool = False
    bit_depth: int = 8
    lr_sha256: str | None = None

    @property
    def lr_size(self) -> Size:
        """The size of the LR this record belongs to."""
        return Size(
            (self.size.width + self.padding[0]) // self.scale, (self.size.height + self.padding[1]) // self.scale
        )

    def mark(self) -> dict[str, object]:
        """The record as its chunk holds it (without the direction and flowsr's version)."""
        return {
            "model": self.model,
            "model_sha256": self.model_sha256,
            "scale": self.scale,
            "seed": self.seed,
            "temperature": self.temperature,
            "size": list(self.size),
            "padding": list(self.padding),
            "grey": self.grey,
            "bit_depth": self.bit_depth,
            "lr_sha256": self.lr_sha256,
        }

    @classmethod
    def from_mark(cls, mark: Mapping[str, object]) -> RescaleRecord:
        """The record in an LR's chunk; a ValueError saying which entry is missing or not as `rescale down`
        writes it (the chunk is untrusted input)."""
        scale = _integer(mark, "scale", 2, 16)
        if scale & (scale - 1):
            raise ValueError(f"scale {scale} is not a power of two")
        size = Size(*_pair(mark, "size", 1, _MAX_SIDE))
        padding = _pair(mark, "padding", 0, scale - 1)
        if (size.width + padding[0]) % scale or (size.height + padding[1]) % scale:
            raise ValueError(f"size {list(size)} and padding {list(padding)} do not make a multiple of {scale}")
        model = mark.get("model")
        if not isinstance(model, str) or not 0 < len(model) <= _MAX_MODEL_NAME:
            raise ValueError("no model name")
        temperature = mark.get("temperature")
        if not _is_number(temperature) or not 0 <= temperature <= _MAX_TEMPERATURE:
            raise ValueError(f"temperature {_shown(temperature)} is not a number from 0 to {_MAX_TEMPERATURE:g}")
        grey, bit_depth = mark.get("grey"), mark.get("bit_depth")
        if not isinstance(grey, bool) or bit_depth not in (8, 16):
            raise ValueError("grey must be true or false and bit_depth 8 or 16")
        return cls(
            model,
            _sha256(mark, "model_sha256"),
            scale,
            _integer(mark, "seed", 0, MAX_SEED),
            float(temperature),
            size,
            padding,
            grey,
            int(bit_depth),
            _sha256(mark, "lr_sha256"),
        )


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_integer(value) or isinstance(value, float)) and math.isfinite(value)


def _integer(mark: Mapping[str, object], key: str, low: int, high: int) -> int:
    value = mark.get(key)
    if not _is_integer(value) or not low <= value <= high:  # type: ignore[operator]
        raise ValueError(f"{key} {_shown(value)} is not an integer from {low} to {high}")
    return int(value)  # type: ignore[arg-type]


def _pair(mark: Mapping[str, object], key: str, low: int, high: int) -> tuple[int, int]:
    value = mark.get(key)
    if not isinstance(value, list) or len(value) != 2 or not all(_is_integer(v) and low <= v <= high for v in value):
        raise ValueError(f"{key} {_shown(value)} is not two integers from {low} to {high}")
    return int(value[0]), int(value[1])


def _sha256(mark: Mapping[str, object], key: str) -> str:
    value = mark.get(key)
    if not isinstance(value, str) or _SHA256.fullmatch(value) is None:
        raise ValueError(f"{key} {_shown(value)} is not a sha256 (64 lowercase hexadecimal digits)")
    return value


def lr_sha256(colour: np.ndarray) -> str:
    """The sha256 of an LR's 8-bit RGB pixels: their bytes in row-major (height, width, channel) order."""
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(colour, dtype=np.uint8).tobytes()).hexdigest()


def rescale_mark_of(mark: Mapping[str, object] | None) -> Mapping[str, object] | None:
    """``mark`` when it is the chunk of an LR `rescale down` wrote (whatever its content), else None."""
    return mark if mark is not None and mark.get(RESCALE_KEY) == DOWN else None


def is_rescaled_lr(path: str | os.PathLike[str]) -> bool:
    """Whether the file at ``path`` carries the chunk of an LR that `rescale down` wrote."""
    return rescale_mark_of(read_mark(path)) is not None


def lossy_format(source: Path | bytes) -> str | None:
    """``JPEG`` or ``lossy WebP`` when the image file (a path or its content) is stored in a format that changes
    pixels, else None (also for a file that cannot be read: decoding it says why)."""
    try:
        if isinstance(source, bytes):
            return _lossy_in(io.BytesIO(source))
        with open(source, "rb") as stream:
            return _lossy_in(stream)
    except (OSError, ValueError, struct.error):
        return None


def _lossy_in(stream: BinaryIO) -> str | None:
    head = stream.read(12)
    if head.startswith(b"\xff\xd8"):
        return "JPEG"
    if head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    for _ in range(_MAX_CHUNKS):  # a WebP's image data is a 'VP8 ' (lossy) or 'VP8L' (lossless) chunk
        header = stream.read(8)
        if len(header) < 8:
            return None
        kind, size = struct.unpack("<4sI", header)
        if kind in (b"VP8 ", b"VP8L"):
            return "lossy WebP" if kind == b"VP8 " else None
        stream.seek(size + (size & 1), io.SEEK_CUR)
    return None
