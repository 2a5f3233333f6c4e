"""Which bytes of an untrusted image file are read: regular files only, never more than an image within
``max_pixels`` can need, and the format and declared size in its header checked before its body is read.
Every problem is an ``ImageError`` whose one-line message does not name the file (the caller does)."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import warnings
from collections.abc import Iterator
from typing import BinaryIO

from PIL import Image as PILImage

from flowsr_cli.errors import ImageError
from flowsr_cli.io.image import CODEC_ERRORS
from flowsr_cli.io.inputs import not_regular_reason
from flowsr_cli.io.sizing import Size

DEFAULT_MAX_PIXELS = 200_000_000
_FILE_BYTES_PER_PIXEL = 16
"""Twice the largest pixel read (16-bit RGBA): room for any encoding's overhead, extra frames and pages."""
_FILE_METADATA_BYTES = 64 * 2**20
_HEADER_BYTES = 64
_QUARTER_TURNS = range(5, 9)
"""EXIF orientations that store the image turned by a quarter (width and height swapped)."""
PILLOW_FORMATS = {
    "png": ["PNG"],
    "jpeg": ["JPEG"],
    "webp": ["WEBP"],
    "tiff": ["TIFF"],
    "bmp": ["BMP"],
    "gif": ["GIF"],
}
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),
    (b"MM\x00+", "tiff"),
    (b"BM", "bmp"),
)
_UNRECOGNISED = "not an image (unrecognised data; readable formats: PNG, JPEG, WebP, TIFF, BMP, GIF)"
ORIENTATION_TAG = 0x0112


def image_size(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Size | None:
    """The upright size an image file's header declares, without reading its body; None when the header
    cannot be parsed (reading the image then says why). The same ImageError as ``read_image`` for a file that
    is not a regular file, too large, not an image, or above ``max_pixels``."""
    with _open_file(path, max_pixels) as file:
        return _declared_size(file, format_of(file.read(_HEADER_BYTES)), max_pixels)


def max_file_bytes(max_pixels: int) -> int:
    """The largest file an image of at most ``max_pixels`` pixels can need; anything larger is refused unread."""
    return max_pixels * _FILE_BYTES_PER_PIXEL + _FILE_METADATA_BYTES


@contextlib.contextmanager
def _open_file(path: str | os.PathLike, max_pixels: int) -> Iterator[BinaryIO]:
    """``path`` opened for reading once it is known to be a regular file of at most ``max_file_bytes``.

    Its type is checked before it is opened (opening a device can have effects) and again on the open file,
    which is opened non-blocking: a FIFO that replaced the file in between never makes the open wait."""
    try:
        _refuse_special(os.stat(path).st_mode)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as file:
            status = os.fstat(fd)
            _refuse_special(status.st_mode)
            _refuse_oversized(status.st_size, max_pixels)
            yield file
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}") from exc


def _refuse_special(mode: int) -> None:
    """A folder is an OSError (cannot read: Is a directory); any other file that is not regular an ImageError."""
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
    reason = not_regular_reason(mode)
    if reason is not None:
        raise ImageError(reason)


def _refuse_oversized(size: int, max_pixels: int) -> None:
    if size > max_file_bytes(max_pixels):
        raise ImageError(
            f"the file is {_byte_count(size)}, larger than any image within the max_pixels limit of "
            f"{max_pixels:,} pixels can be ({_byte_count(max_file_bytes(max_pixels))}; raise it with "
            "`flowsr config set max_pixels N` or FLOWSR_MAX_PIXELS)"
        )


def read_stream(stream: BinaryIO, max_pixels: int) -> bytes:
    """All of ``stream`` (e.g. stdin), refused as an ImageError once it is longer than any image within
    ``max_pixels`` can be, without reading further."""
    limit = max_file_bytes(max_pixels)
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise ImageError(
            f"the input is more than {_byte_count(limit)}, larger than any image within the max_pixels limit of "
            f"{max_pixels:,} pixels can be (raise it with `flowsr config set max_pixels N` or FLOWSR_MAX_PIXELS)"
        )
    return data


def _byte_count(size: int) -> str:
    for unit, name in ((10**9, "GB"), (10**6, "MB"), (10**3, "KB")):
        if size >= unit:
            return f"{size / unit:.1f} {name}"
    return f"{size} bytes"


def read_file(path: str | os.PathLike, max_pixels: int) -> tuple[bytes, str]:
    """A file's content and format, after its type, size and header passed the checks."""
    with _open_file(path, max_pixels) as file:
        fmt = format_of(file.read(_HEADER_BYTES))
        _declared_size(file, fmt, max_pixels)
        file.seek(0)
        size = os.fstat(file.fileno()).st_size
        data = file.read(size + 1)
    if len(data) > size:
        raise ImageError("the file grew while it was read (is it still being written?)")
    return data, fmt


def format_of(head: bytes) -> str:
    """The format the first bytes of a file announce; an ImageError for an empty or unrecognised file."""
    if not head:
        raise ImageError("empty file")
    fmt = _sniff_format(head)
    if fmt is None:
        raise ImageError(_UNRECOGNISED)
    return fmt


def _declared_size(file: BinaryIO, fmt: str, max_pixels: int) -> Size | None:
    """The upright size in the header of ``file``, refused above ``max_pixels``; None if Pillow cannot parse
    the header (best effort: decoding the whole file reports what is wrong)."""
    file.seek(0)
    PILImage.MAX_IMAGE_PIXELS = None  # our own limit gives the clearer message
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with PILImage.open(file, formats=PILLOW_FORMATS[fmt]) as im:
                width, height, orientation = im.width, im.height, _header_orientation(im)
        except Exception:
            return None
    check_pixel_limit(width, height, max_pixels)
    return Size(height, width) if orientation in _QUARTER_TURNS else Size(width, height)


def _header_orientation(im: PILImage.Image) -> int:
    try:
        orientation = im.getexif().get(ORIENTATION_TAG, 1)
    except CODEC_ERRORS:
        return 1
    return orientation if orientation in range(1, 9) else 1


def _sniff_format(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((fmt for magic, fmt in _SIGNATURES if data.startswith(magic)), None)


def check_pixel_limit(width: int, height: int, max_pixels: int) -> None:
    pixels = width * height
    if pixels > max_pixels:
        raise ImageError(
            f"image is {width}×{height} = {_approximate_count(pixels)} pixels, above the "
            f"max_pixels limit of {max_pixels:,} "
            "(raise it with `flowsr config set max_pixels N`)"
        )


def _approximate_count(count: int) -> str:
    if count >= 1_000_000_000:
        return f"{count / 1e9:.1f} G"
    if count >= 1_000_000:
        return f"{count / 1e6:.1f} M"
    return f"{count:,}"
