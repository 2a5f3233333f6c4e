"""The decoded image (pixels + metadata) and the codec facts that reading and writing share."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
DISPLAY_NAMES = {
    "png": "PNG",
    "jpeg": "JPEG",
    "webp": "WebP",
    "tiff": "TIFF",
    "bmp": "BMP",
    "gif": "GIF",
}

# Exceptions the decoders and encoders raise for bad data or impossible requests.
# (imagecodecs errors derive from RuntimeError, tifffile's TiffFileError from ValueError.)
CODEC_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    IndexError,
    KeyError,
    TypeError,
    RuntimeError,
    MemoryError,
)

# EXIF IFD0 ASCII tags that are also plain TIFF tags, so a TIFF file can carry them:
# ImageDescription, Make, Model, Software, DateTime, Artist, HostComputer, Copyright.
TIFF_TEXT_TAGS = (270, 271, 272, 305, 306, 315, 316, 33432)


@dataclass
class Metadata:
    """Metadata carried from the source file to the written file."""

    icc_profile: bytes | None = None
    exif: bytes | None = None
    dpi: tuple[float, float] | None = None
    text: dict[str, str] = field(default_factory=dict)


@dataclass
class Image:
    """Decoded pixels (H, W, C) of dtype uint8 or uint16 with their metadata."""

    pixels: np.ndarray
    format: str
    metadata: Metadata = field(default_factory=Metadata)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.pixels.ndim != 3 or self.pixels.shape[2] not in MODES:
            raise ValueError(f"pixels must have shape (H, W, 1..4), got {self.pixels.shape}")
        if self.pixels.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"pixels must be uint8 or uint16, got {self.pixels.dtype}")
        self.pixels = np.ascontiguousarray(self.pixels)

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def channels(self) -> int:
        return int(self.pixels.shape[2])

    @property
    def bit_depth(self) -> int:
        return 16 if self.pixels.dtype == np.uint16 else 8

    @property
    def has_alpha(self) -> bool:
        return self.channels in (2, 4)

    @property
    def mode(self) -> str:
        return MODES[self.channels]


def one_line(text: str) -> str:
    """Collapse a codec's message to one line."""
    return " ".join(text.split())
