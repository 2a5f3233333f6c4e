"""Small real image files and metadata blocks for tests, generated on the fly."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms

MAKE_TAG = 0x010F
ORIENTATION_TAG = 0x0112
DEFAULT_HEIGHT, DEFAULT_WIDTH = 23, 37


def gradient16(channels: int, height: int = DEFAULT_HEIGHT, width: int = DEFAULT_WIDTH) -> np.ndarray:
    """uint16 (H, W, C) gradients over the full 0..65535 range, mostly not multiples of 257."""
    base = np.linspace(0, 65535, height * width).round().astype(np.int64).reshape(height, width)
    planes = [base, 65535 - base, (base * 3 + 12345) % 65536, (base * 7 + 101) % 65536]
    return np.stack(planes[:channels], axis=2).astype(np.uint16)


def gradient8(channels: int, height: int = DEFAULT_HEIGHT, width: int = DEFAULT_WIDTH) -> np.ndarray:
    """uint8 (H, W, C) gradients covering 0..255 in every channel."""
    return (gradient16(channels, height, width) >> 8).astype(np.uint8)


def smooth_rgb(height: int = DEFAULT_HEIGHT, width: int = DEFAULT_WIDTH) -> np.ndarray:
    """A smooth uint8 RGB image that lossy codecs reproduce closely."""
    y, x = np.mgrid[0:height, 0:width]
    planes = [x * 255 / (width - 1), y * 255 / (height - 1), (x + y) * 255 / (width + height - 2)]
    return np.stack(planes, axis=2).round().astype(np.uint8)


def marker_image(height: int = DEFAULT_HEIGHT, width: int = DEFAULT_WIDTH) -> np.ndarray:
    """uint8 RGB grey image with a red block at the top left and a blue one at the bottom left."""
    pixels = np.full((height, width, 3), 128, np.uint8)
    pixels[:8, :8] = (255, 0, 0)
    pixels[-8:, :8] = (0, 0, 255)
    return pixels


def srgb_icc_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif_bytes(make: str = "FlowsrCam", orientation: int | None = None) -> bytes:
    exif = Image.Exif()
    exif[MAKE_TAG] = make
    if orientation is not None:
        exif[ORIENTATION_TAG] = orientation
    return exif.tobytes()


def to_pillow(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)


def save_pillow(path: Path, pixels: np.ndarray, pillow_format: str, **options: object) -> Path:
    to_pillow(pixels).save(path, pillow_format, **options)
    return path


def png_with_claimed_size(width: int, height: int) -> bytes:
    """A small valid PNG whose IHDR (with a correct CRC) claims another size."""

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr_type_and_data = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = ihdr_type_and_data
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr_type_and_data))
    return bytes(data)
