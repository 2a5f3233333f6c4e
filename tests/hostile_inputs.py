"""A corpus of hostile and awkward image files, generated at test time, each with what flowsr must do."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from tests.image_factory import gradient8, gradient16, png_with_claimed_size, smooth_rgb

WRITTEN, REFUSED = "written", "refused"


@dataclass(frozen=True)
class HostileFile:
    """One file of the corpus: its name (bytes, as names need not be UTF-8) and the expected outcome."""

    name: bytes
    expected: str
    """WRITTEN: an output of the right size; REFUSED: one error line naming the file."""
    warns: bool = False
    """True when a written file must also produce a warning line naming it."""


def _encoded(image: Image.Image, pillow_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, pillow_format, **options)
    return buffer.getvalue()


def _photo(width: int = 24, height: int = 16) -> Image.Image:
    return Image.fromarray(smooth_rgb(height, width))


def _animated(pillow_format: str) -> bytes:
    frames = [Image.new("RGB", (12, 10), colour) for colour in ((220, 30, 30), (30, 30, 220))]
    return _encoded(frames[0], pillow_format, save_all=True, append_images=frames[1:], lossless=True)


def _tiff(pixels: np.ndarray, **options: object) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pixels, metadata=None, **options)
    return buffer.getvalue()


def _palette_with_transparency() -> bytes:
    image = Image.fromarray(gradient8(3, 12, 14)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return _encoded(image, "PNG", transparency=0)


def _random_bytes(size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).bytes(size)


CORPUS: dict[bytes, tuple[str, Callable[[], bytes]] | tuple[str, Callable[[], bytes], bool]] = {
    b"truncated.png": (REFUSED, lambda: _encoded(_photo(), "PNG")[:-60]),
    b"truncated.jpg": (REFUSED, lambda: _encoded(_photo(64, 48), "JPEG")[:300]),
    b"truncated.tif": (REFUSED, lambda: _tiff(gradient8(3))[:200]),
    b"truncated.webp": (REFUSED, lambda: _encoded(_photo(), "WEBP")[:40]),
    b"noise.png": (REFUSED, lambda: _random_bytes(2000, 1)),
    b"noise.jpg": (REFUSED, lambda: _random_bytes(2000, 2)),
    b"noise.tiff": (REFUSED, lambda: _random_bytes(2000, 3)),
    b"noise.webp": (REFUSED, lambda: _random_bytes(2000, 4)),
    b"noise.bmp": (REFUSED, lambda: _random_bytes(2000, 5)),
    b"png-magic-then-noise.png": (REFUSED, lambda: b"\x89PNG\r\n\x1a\n" + _random_bytes(500, 6)),
    b"empty.png": (REFUSED, lambda: b""),
    b"empty.jpg": (REFUSED, lambda: b""),
    b"text-named.tif": (REFUSED, lambda: b"this is a text file\n"),
    b"bomb-65535-wide.png": (REFUSED, lambda: png_with_claimed_size(65535, 65535)),
    b"strip-4000x1.png": (WRITTEN, lambda: _encoded(Image.fromarray(gradient8(3, 1, 4000)), "PNG")),
    b"one-pixel.png": (WRITTEN, lambda: _encoded(Image.new("RGB", (1, 1), (200, 100, 50)), "PNG")),
    b"one-by-n.png": (WRITTEN, lambda: _encoded(Image.fromarray(gradient8(3, 37, 1)), "PNG")),
    b"n-by-one.jpg": (WRITTEN, lambda: _encoded(Image.fromarray(gradient8(3, 1, 41)), "JPEG")),
    b"cmyk.jpg": (WRITTEN, lambda: _encoded(_photo().convert("CMYK"), "JPEG")),
    b"cmyk.tif": (WRITTEN, lambda: _encoded(_photo().convert("CMYK"), "TIFF")),
    b"lab.tif": (WRITTEN, lambda: _encoded(_photo().convert("LAB"), "TIFF")),
    b"grey16-big-endian.tif": (WRITTEN, lambda: _tiff(gradient16(1, 12, 10)[..., 0].astype(">u2"))),
    b"grey16.png": (WRITTEN, lambda: _encoded(Image.fromarray(gradient16(1, 12, 10)[..., 0]), "PNG")),
    b"float.tif": (WRITTEN, lambda: _tiff(np.linspace(0, 1, 120, dtype=np.float32).reshape(10, 12)), True),
    b"float-beyond-1.tif": (REFUSED, lambda: _tiff(np.linspace(0, 2, 120, dtype=np.float32).reshape(10, 12))),
    b"animated.gif": (WRITTEN, lambda: _animated("GIF"), True),
    b"animated.webp": (WRITTEN, lambda: _animated("WEBP"), True),
    b"animated-apng.png": (WRITTEN, lambda: _animated("PNG"), True),
    b"palette-transparent.png": (WRITTEN, _palette_with_transparency),
    b"caf\xe9-latin1-name.png": (WRITTEN, lambda: _encoded(_photo(), "PNG")),
    b"\xff\xfe-not-utf8.jpg": (WRITTEN, lambda: _encoded(_photo(), "JPEG")),
    b"good.png": (WRITTEN, lambda: _encoded(_photo(), "PNG")),
}
"""File name -> (expected outcome, bytes maker[, warns])."""


def write_corpus(folder: Path) -> list[HostileFile]:
    """Write every corpus file into ``folder`` (plus a sub-folder with a symlink loop back to it) and
    return what each must give. Names are written as bytes, so non-UTF-8 names are real."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for name, entry in CORPUS.items():
        expected, make = entry[0], entry[1]
        with open(os.path.join(os.fsencode(folder), name), "wb") as handle:
            handle.write(make())
        files.append(HostileFile(name, expected, warns=len(entry) > 2 and bool(entry[2])))
    nested = folder / "nested"
    nested.mkdir()
    (nested / "deep.png").write_bytes(_encoded(_photo(), "PNG"))
    (nested / "loop").symlink_to(folder, target_is_directory=True)
    files.append(HostileFile(b"nested/deep.png", WRITTEN))
    return files


def output_name(name: bytes, suffix: bytes = b"_x2") -> bytes:
    """The default output name of input ``name``: GIF (read only) becomes PNG."""
    stem, extension = os.path.splitext(name)
    return stem + suffix + (b".png" if extension.lower() == b".gif" else extension)
