"""Decoding image files upright, at full bit depth, with their metadata.

Pillow decodes most images and reads all metadata. Pillow silently truncates 16-bit RGB(A) PNG and
TIFF to 8 bits, so 16-bit PNG pixels go through imagecodecs and 16-bit TIFF pixels through tifffile;
floating-point TIFF pixels (which Pillow reads only as grey, if at all) go through tifffile too and are
taken, when they lie in [0, 1], as 16-bit pixels.
Every problem is an ``ImageError`` whose one-line message does not name the file (the caller does).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import struct
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image as PILImage
from PIL import ImageCms

from flowsr_cli.errors import ImageError
from flowsr_cli.io.file_checks import (
    DEFAULT_MAX_PIXELS,
    ORIENTATION_TAG,
    PILLOW_FORMATS,
    check_pixel_limit,
    format_of,
    read_file,
)
from flowsr_cli.io.image import CODEC_ERRORS, DISPLAY_NAMES, TIFF_TEXT_TAGS, Image, Metadata, one_line

if TYPE_CHECKING:
    import tifffile

_EXIF_IFD_TAG = 0x8769
_GPS_IFD_TAG = 0x8825
_ICC_TIFF_TAG = 34675
_X_RESOLUTION_TAG, _Y_RESOLUTION_TAG, _RESOLUTION_UNIT_TAG = 282, 283, 296
_IMAGE_DESCRIPTION_TAG = 270
_PNG_BIT_DEPTH_OFFSET = 24


def read_image(source: str | os.PathLike | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image:
    """Decode an image file (path) or file content (bytes), upright and at full bit depth.

    A path must be a regular file no larger than an image of ``max_pixels`` can need, whose header declares at
    most ``max_pixels``; it is checked before its body is read."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        fmt = format_of(data)
    else:
        data, fmt = read_file(source, max_pixels)
    PILImage.MAX_IMAGE_PIXELS = None  # our own limit gives the clearer message
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if fmt == "tiff":
                image = _read_tiff(data, max_pixels)
            else:
                image = _read_with_pillow(data, fmt, max_pixels)
        except CODEC_ERRORS as exc:
            raise ImageError(_describe_decode_error(exc, fmt)) from exc
    image.warnings.extend(one_line(str(w.message)) for w in caught if issubclass(w.category, UserWarning))
    return image


def _describe_decode_error(exc: BaseException, fmt: str) -> str:
    name = DISPLAY_NAMES[fmt]
    if isinstance(exc, MemoryError):
        return "not enough memory to decode the image"
    detail = one_line(str(exc))
    if isinstance(exc, EOFError) or "truncated" in detail.lower():
        return f"truncated {name} data"
    return f"corrupt {name} data ({detail})" if detail else f"corrupt {name} data"


def _open_with_pillow(data: bytes, fmt: str, unidentified: str | None = None) -> PILImage.Image:
    """Pillow's image of ``data``; when Pillow cannot identify it, an ImageError saying ``unidentified`` (default:
    the header is damaged or truncated)."""
    try:
        return PILImage.open(io.BytesIO(data), formats=PILLOW_FORMATS[fmt])
    except PILImage.UnidentifiedImageError as exc:
        raise ImageError(unidentified or f"{DISPLAY_NAMES[fmt]} header is damaged or truncated") from exc


def _read_with_pillow(data: bytes, fmt: str, max_pixels: int) -> Image:
    notes: list[str] = []
    with _open_with_pillow(data, fmt) as im:
        check_pixel_limit(im.width, im.height, max_pixels)
        if im.format != "MPO" and getattr(im, "n_frames", 1) > 1:
            notes.append("animated image: only the first frame is used")
        im.load()
        metadata, orientation = _pillow_metadata(im, notes)
        if fmt == "png" and data[_PNG_BIT_DEPTH_OFFSET] == 16:
            pixels = _decode_png16(data)
        else:
            pixels, metadata.icc_profile = _pillow_pixels(im, metadata.icc_profile, notes)
    return Image(_apply_orientation(pixels, orientation), fmt, metadata, notes)


def _pillow_metadata(im: PILImage.Image, notes: list[str]) -> tuple[Metadata, int]:
    """Metadata of an opened and loaded Pillow image, plus its EXIF orientation (1-8)."""
    try:
        source_exif = im.getexif()
    except CODEC_ERRORS:
        notes.append("EXIF data is unreadable and was dropped")
        source_exif = PILImage.Exif()
    exif, orientation = _exif_without_orientation(source_exif, notes)
    text = {str(key): str(value) for key, value in getattr(im, "text", {}).items()}
    if exif is not None:
        text.pop("Raw profile type exif", None)
    if orientation != 1 and "XML:com.adobe.xmp" in text:
        text["XML:com.adobe.xmp"] = _reset_xmp_orientation(text["XML:com.adobe.xmp"])
    metadata = Metadata(
        icc_profile=im.info.get("icc_profile") or None,
        exif=exif,
        dpi=_positive_dpi(im.info.get("dpi")),
        text=text,
    )
    return metadata, orientation


def _exif_without_orientation(exif: PILImage.Exif, notes: list[str]) -> tuple[bytes | None, int]:
    """Serialised EXIF with orientation reset to 1, and the orientation it had."""
    orientation = exif.get(ORIENTATION_TAG, 1)
    if orientation not in range(1, 9):
        orientation = 1
    if ORIENTATION_TAG in exif:
        exif[ORIENTATION_TAG] = 1
    if not len(exif):
        return None, orientation
    try:
        return exif.tobytes(), orientation
    except CODEC_ERRORS:
        notes.append("EXIF data could not be re-encoded and was dropped")
        return None, orientation


def _reset_xmp_orientation(xmp: str) -> str:
    xmp = re.sub(r'(tiff:Orientation=")[0-9](")', r"\g<1>1\g<2>", xmp)
    return re.sub(r"(<tiff:Orientation>)[0-9](</tiff:Orientation>)", r"\g<1>1\g<2>", xmp)


def _positive_dpi(dpi: tuple[float, float] | None) -> tuple[float, float] | None:
    if dpi is None:
        return None
    x, y = float(dpi[0]), float(dpi[1])
    return (x, y) if x > 0 and y > 0 else None


def _pillow_pixels(im: PILImage.Image, icc_profile: bytes | None, notes: list[str]) -> tuple[np.ndarray, bytes | None]:
    """Pixels as an (H, W, C) array, and the ICC profile that still describes them."""
    if im.mode == "I":
        return np.clip(np.asarray(im), 0, 65535).astype(np.uint16)[..., np.newaxis], icc_profile
    if im.mode == "CMYK":
        return np.asarray(_cmyk_to_rgb(im, icc_profile, notes)), None
    if im.mode == "LAB":
        notes.append("CIELab image: converted to sRGB")
        lab_to_srgb = ImageCms.buildTransform(
            ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB"
        )
        return np.asarray(ImageCms.applyTransform(im, lab_to_srgb)), None
    target = _pillow_target_mode(im)
    if target is None:
        raise ImageError(f"unsupported pixel mode {im.mode}")
    pixels = np.asarray(im if im.mode == target else im.convert(target))
    return (pixels if pixels.ndim == 3 else pixels[..., np.newaxis]), icc_profile


def _pillow_target_mode(im: PILImage.Image) -> str | None:
    transparent = im.has_transparency_data
    if im.mode in ("1", "L"):
        return "LA" if transparent and im.mode == "L" else "L"
    if im.mode in ("LA", "La"):
        return "LA"
    if im.mode in ("P", "RGB"):
        return "RGBA" if transparent else "RGB"
    if im.mode in ("RGBA", "RGBa"):
        return "RGBA"
    if im.mode in ("RGBX", "YCbCr"):
        return "RGB"
    return None


def _cmyk_to_rgb(im: PILImage.Image, icc_profile: bytes | None, notes: list[str]) -> PILImage.Image:
    """Convert CMYK to sRGB through the embedded profile, or naively if there is none."""
    if icc_profile:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
            return ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except ImageCms.PyCMSError:
            notes.append("the CMYK colour profile is unusable: colours converted without it")
    return im.convert("RGB")


def _decode_png16(data: bytes) -> np.ndarray:
    import imagecodecs

    pixels = imagecodecs.png_decode(data)
    return pixels[..., np.newaxis] if pixels.ndim == 2 else pixels


@contextlib.contextmanager
def _tifffile_silenced() -> Iterator[None]:
    """tifffile logs what it skips in a damaged file to stderr; the ImageError we raise says it in one line."""
    logger = logging.getLogger("tifffile")
    was_disabled, logger.disabled = logger.disabled, True
    try:
        yield
    finally:
        logger.disabled = was_disabled


def _read_tiff(data: bytes, max_pixels: int) -> Image:
    import tifffile

    notes: list[str] = []
    with _tifffile_silenced(), tifffile.TiffFile(io.BytesIO(data)) as tif:
        page = tif.pages.first
        check_pixel_limit(page.imagewidth, page.imagelength, max_pixels)
        if len(tif.pages) > 1:
            notes.append("multi-page TIFF: only the first page is used")
        if page.dtype is not None and page.dtype.kind == "f":
            pixels16 = _tiff_float_pixels(page, notes)
        else:
            pixels16 = _tiff16_pixels(page) if page.bitspersample == 16 else None
        layout = _tiff_layout(page)
        description_is_structural = page.is_shaped or page.is_imagej or page.is_ome
    metadata, orientation = _tiff_metadata(data, description_is_structural, notes)
    if pixels16 is not None:
        pixels = pixels16
    else:
        # tifffile read the header, so what Pillow cannot identify is the layout
        with _open_with_pillow(data, "tiff", f"unsupported TIFF layout ({layout})") as im:
            im.load()
            pixels, metadata.icc_profile = _pillow_pixels(im, metadata.icc_profile, notes)
    return Image(_apply_orientation(pixels, orientation), "tiff", metadata, notes)


def _tiff16_pixels(page: tifffile.TiffPage) -> np.ndarray:
    """16-bit grey or RGB pixels of a tifffile page, with alpha if it has one."""
    if page.dtype != np.uint16:
        raise ImageError(f"unsupported TIFF sample type {page.dtype}")
    pixels, associated = _tiff_samples(page)
    return _unpremultiply(pixels) if associated else np.ascontiguousarray(pixels)


def _tiff_float_pixels(page: tifffile.TiffPage, notes: list[str]) -> np.ndarray:
    """Floating-point grey or RGB pixels of a tifffile page (with alpha if it has one), all in [0, 1], as 16-bit
    pixels (rounded to the nearest of 65536 levels: what flowsr's pipeline and outputs carry)."""
    samples, associated = _tiff_samples(page)
    if not bool(np.isfinite(samples).all()):
        raise ImageError("floating-point TIFF with non-finite pixels (NaN or infinity)")
    low, high = float(samples.min()), float(samples.max())
    if low < 0 or high > 1:
        raise ImageError(
            f"floating-point TIFF pixels range from {low:.4g} to {high:.4g}; flowsr reads them in [0, 1]: "
            "scale the image into that range first"
        )
    notes.append(f"{page.bitspersample}-bit floating-point TIFF: read and written as 16-bit")
    levels = np.multiply(samples, 65535.0, dtype=np.float64)
    pixels = np.rint(levels, out=levels).astype(np.uint16)
    return _unpremultiply(pixels) if associated else pixels


def _tiff_samples(page: tifffile.TiffPage) -> tuple[np.ndarray, bool]:
    """The grey or RGB samples of a tifffile page as (H, W, C), with alpha if it has one, as stored; and whether
    that alpha is associated (premultiplied)."""
    colour_channels = {1: 1, 2: 3}.get(int(page.photometric))
    if colour_channels is None:
        raise ImageError(f"unsupported {page.bitspersample}-bit TIFF colour space {_tag_name(page.photometric)}")
    pixels = page.asarray()
    if page.planarconfig == 2 and pixels.ndim == 3:
        pixels = np.moveaxis(pixels, 0, -1)
    if pixels.ndim == 2:
        pixels = pixels[..., np.newaxis]
    extra = tuple(int(kind) for kind in page.extrasamples)
    alpha_kind = extra[0] if extra and pixels.shape[2] > colour_channels else 0
    return pixels[..., : colour_channels + (alpha_kind in (1, 2))], alpha_kind == 1


def _tiff_layout(page: tifffile.TiffPage) -> str:
    """How a TIFF page stores its pixels, for a message: bits and kind of its samples and its colour space."""
    kind = {1: "unsigned", 2: "signed", 3: "floating-point"}.get(int(page.sampleformat), "other")
    return f"{page.bitspersample}-bit {kind} samples, {_tag_name(page.photometric)}"


def _tag_name(value: object) -> str:
    """A TIFF tag value as tifffile names it (an enum member's name), or its number when it has no name."""
    return str(getattr(value, "name", value)).lower()


def _unpremultiply(pixels: np.ndarray) -> np.ndarray:
    """Undo associated (premultiplied) alpha on 16-bit pixels."""
    alpha = pixels[..., -1:].astype(np.float64)
    scale = np.divide(65535.0, alpha, out=np.zeros_like(alpha), where=alpha > 0)
    colour = np.clip(np.rint(pixels[..., :-1] * scale), 0, 65535).astype(np.uint16)
    return np.concatenate([colour, pixels[..., -1:]], axis=2)


def _tiff_metadata(data: bytes, description_is_structural: bool, notes: list[str]) -> tuple[Metadata, int]:
    """Metadata from the TIFF's first IFD (ICC, resolution, EXIF-compatible tags)."""
    exif = PILImage.Exif()
    try:
        ifd0 = _tiff_first_ifd(data)
        for tag in (*TIFF_TEXT_TAGS, ORIENTATION_TAG):
            if tag in ifd0 and not (tag == _IMAGE_DESCRIPTION_TAG and description_is_structural):
                exif[tag] = ifd0[tag]
        for tag in (_EXIF_IFD_TAG, _GPS_IFD_TAG):
            if tag in ifd0:
                exif[tag] = ifd0.get_ifd(tag)
    except CODEC_ERRORS:
        notes.append("TIFF tags could not be read: metadata dropped")
        return Metadata(), 1
    exif_bytes, orientation = _exif_without_orientation(exif, notes)
    icc = ifd0.get(_ICC_TIFF_TAG)
    metadata = Metadata(
        icc_profile=bytes(icc) if isinstance(icc, (bytes, bytearray)) and icc else None,
        exif=exif_bytes,
        dpi=_tiff_dpi(ifd0),
    )
    return metadata, orientation


def _tiff_first_ifd(data: bytes) -> PILImage.Exif:
    """The first IFD of a classic or Big TIFF, read by Pillow's EXIF parser (same layout)."""
    endian = "<" if data[:2] == b"II" else ">"
    bigtiff = data[2:4] in (b"+\x00", b"\x00+")
    offset_format, offset_position = ("Q", 8) if bigtiff else ("I", 4)
    (offset,) = struct.unpack_from(endian + offset_format, data, offset_position)
    ifd0 = PILImage.Exif()
    ifd0.bigtiff, ifd0.endian = bigtiff, endian
    ifd0.load_from_fp(io.BytesIO(data), offset)
    return ifd0


def _tiff_dpi(ifd0: PILImage.Exif) -> tuple[float, float] | None:
    per_unit = {2: 1.0, 3: 2.54}.get(ifd0.get(_RESOLUTION_UNIT_TAG, 2))  # TIFF default: inch
    if per_unit is None or _X_RESOLUTION_TAG not in ifd0 or _Y_RESOLUTION_TAG not in ifd0:
        return None
    x, y = ifd0[_X_RESOLUTION_TAG], ifd0[_Y_RESOLUTION_TAG]
    return _positive_dpi((float(x) * per_unit, float(y) * per_unit))


def _apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Turn pixels upright for an EXIF orientation, as PIL.ImageOps.exif_transpose does."""
    transforms: dict[int, Callable[[np.ndarray], np.ndarray]] = {
        1: lambda p: p,
        2: lambda p: p[:, ::-1],
        3: lambda p: p[::-1, ::-1],
        4: lambda p: p[::-1],
        5: lambda p: p.transpose(1, 0, 2),
        6: lambda p: np.rot90(p, k=-1),
        7: lambda p: p[::-1, ::-1].transpose(1, 0, 2),
        8: lambda p: np.rot90(p, k=1),
    }
    return np.ascontiguousarray(transforms[orientation](pixels))
