"""Encoding images as PNG, JPEG, WebP, TIFF or BMP with their metadata, and writing them atomically."""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator, Mapping
from functools import partial

import numpy as np
from PIL import Image as PILImage
from PIL import PngImagePlugin

from flowsr_cli.errors import ImageError, UsageError
from flowsr_cli.io.atomic import atomic_write_bytes
from flowsr_cli.io.formats import FORMAT_EXTENSIONS
from flowsr_cli.io.image import CODEC_ERRORS, DISPLAY_NAMES, TIFF_TEXT_TAGS, Image, Metadata, one_line
from flowsr_cli.io.provenance import MARK_KEY, XMP_TIFF_TAG, mark_json, xmp_packet

_OUTPUT_FORMAT_ALIASES = {"jpg": "jpeg", "tif": "tiff"}
_EXIF_HEADER = b"Exif\x00\x00"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IMAGE_CHUNKS = (b"IHDR", b"IDAT", b"IEND")
_JPEG_MAX_SIDE = 65_535
_WEBP_MAX_SIDE = 16_383


def encode_image(
    image: Image,
    format: str,
    *,
    quality: int = 95,
    strip_metadata: bool = False,
    settings: Mapping[str, object] | None = None,
    lossless: bool = False,
) -> tuple[bytes, list[str]]:
    """Encode an image as file bytes in a format; returns the bytes and notes for the user.

    Every format but BMP carries flowsr's provenance mark (see ``flowsr_cli.io.provenance``) with the run's
    ``settings``, also with ``strip_metadata``: the mark describes flowsr's own run, not the input's
    metadata. BMP has no place for it, so BMP outputs are never replaced by ``--overwrite`` (delete them to
    redo them). ``lossless`` makes WebP lossless (every pixel kept, also under full transparency); PNG, TIFF and
    BMP always are, JPEG never.
    """
    fmt = _output_format(format)
    if not 1 <= quality <= 100:
        raise UsageError(f"quality must be between 1 and 100, got {quality}")
    metadata = Metadata() if strip_metadata else image.metadata
    encoders = {
        "png": _encode_png,
        "jpeg": _encode_jpeg,
        "webp": partial(_encode_webp, lossless=lossless),
        "tiff": _encode_tiff,
        "bmp": _encode_bmp,
    }
    notes: list[str] = []
    try:
        return encoders[fmt](image.pixels, metadata, quality, mark_json(settings), notes), notes
    except CODEC_ERRORS as exc:
        raise ImageError(f"cannot encode {DISPLAY_NAMES[fmt]}: {one_line(str(exc))}") from exc


def write_image(
    image: Image,
    path: str | os.PathLike,
    format: str,
    *,
    quality: int = 95,
    strip_metadata: bool = False,
    settings: Mapping[str, object] | None = None,
) -> list[str]:
    """Encode and atomically write an image (its mark holding ``settings``); returns notes for the user."""
    data, notes = encode_image(image, format, quality=quality, strip_metadata=strip_metadata, settings=settings)
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise ImageError(f"cannot write: {exc.strerror or exc}") from exc
    return notes


def _output_format(fmt: str) -> str:
    name = _OUTPUT_FORMAT_ALIASES.get(fmt.lower(), fmt.lower())
    if name not in FORMAT_EXTENSIONS:
        raise UsageError(f"unknown output format {fmt!r}; choose png, jpeg, webp, tiff or bmp")
    return name


def _encode_png(pixels: np.ndarray, metadata: Metadata, quality: int, mark: str, notes: list[str]) -> bytes:
    options = _png_options(metadata, mark, notes)
    if pixels.dtype == np.uint16:
        return _encode_png16(pixels, options)
    return _save_with_pillow(pixels, "PNG", options)


def _png_options(metadata: Metadata, mark: str, notes: list[str]) -> dict[str, object]:
    options: dict[str, object] = _pillow_metadata_options(metadata, dpi=True)
    options["pnginfo"] = _png_text_chunks({**metadata.text, MARK_KEY: mark}, notes)
    return options


def _png_text_chunks(text: dict[str, str], notes: list[str]) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        if not _is_png_keyword(key):
            notes.append(f"text entry {key!r} dropped: PNG keys are 1-79 Latin-1 characters")
            continue
        info.add_text(key, value, zip=len(value) > 1024)
    return info


def _is_png_keyword(key: str) -> bool:
    try:
        key.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return 1 <= len(key) <= 79


def _encode_png16(pixels: np.ndarray, options: dict[str, object]) -> bytes:
    """16-bit PNG by imagecodecs, with the metadata chunks inserted before the first IDAT."""
    import imagecodecs

    chunks = list(_png_chunks(imagecodecs.png_encode(_with_canonical_strides(pixels))))
    first_idat = next(i for i, (kind, _) in enumerate(chunks) if kind == b"IDAT")
    raw_chunks = [raw for _, raw in chunks]
    raw_chunks[first_idat:first_idat] = _png_metadata_chunks(options)
    return _PNG_SIGNATURE + b"".join(raw_chunks)


def _with_canonical_strides(pixels: np.ndarray) -> np.ndarray:
    """numpy allows any stride on length-1 axes, imagecodecs does not: copy such arrays."""
    canonical = tuple(int(s) for s in np.cumprod((pixels.itemsize, *pixels.shape[:0:-1]))[::-1])
    return pixels if pixels.strides == canonical else pixels.copy()


def _png_metadata_chunks(options: dict[str, object]) -> list[bytes]:
    """The ancillary chunks Pillow writes for these save options, taken from a 1×1 PNG."""
    donor = _save_with_pillow(np.zeros((1, 1, 3), np.uint8), "PNG", options)
    return [raw for kind, raw in _png_chunks(donor) if kind not in _PNG_IMAGE_CHUNKS]


def _png_chunks(stream: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Yield (type, whole chunk bytes incl. length and CRC) for each chunk of a PNG stream."""
    position = len(_PNG_SIGNATURE)
    while position < len(stream):
        length, kind = struct.unpack(">I4s", stream[position : position + 8])
        end = position + 12 + length
        yield kind, stream[position:end]
        position = end


def _encode_jpeg(pixels: np.ndarray, metadata: Metadata, quality: int, mark: str, notes: list[str]) -> bytes:
    _check_max_side(pixels, _JPEG_MAX_SIDE, "JPEG")
    if pixels.shape[2] in (2, 4):
        if _has_transparency(pixels):
            notes.append("JPEG has no alpha channel: transparent areas flattened onto white")
        pixels = _flatten_onto_white(pixels)
    pixels = _to_8bit(pixels, "JPEG", notes)
    options = _pillow_metadata_options(metadata, dpi=True)
    return _save_with_pillow(pixels, "JPEG", {"quality": quality, "comment": mark, **options})


def _encode_webp(
    pixels: np.ndarray, metadata: Metadata, quality: int, mark: str, notes: list[str], lossless: bool = False
) -> bytes:
    # libwebp stores greyscale as RGB, so a grey image reads back as RGB with equal channels;
    # read_image deliberately keeps such an image RGB rather than guessing it was grey.
    _check_max_side(pixels, _WEBP_MAX_SIDE, "WebP")
    options = _pillow_metadata_options(metadata, dpi=False, exif_header=False)
    if pixels.shape[2] <= 2:
        pixels = _grey_to_rgb(pixels)
        if _is_grey_profile(metadata.icc_profile):
            options.pop("icc_profile")
            notes.append("greyscale colour profile dropped: WebP stores greyscale as RGB")
    pixels = _to_8bit(pixels, "WebP", notes)
    codec = {"lossless": True, "exact": True} if lossless else {"quality": quality}
    return _save_with_pillow(pixels, "WEBP", {**codec, "xmp": xmp_packet(mark), **options})


def _encode_bmp(pixels: np.ndarray, metadata: Metadata, quality: int, mark: str, notes: list[str]) -> bytes:
    """BMP carries no metadata and no provenance mark (see ``encode_image``)."""
    if metadata.icc_profile or metadata.exif:
        notes.append("BMP cannot store the colour profile or EXIF data: dropped")
    if pixels.shape[2] == 2:
        pixels = _grey_to_rgb(pixels)
    if pixels.shape[2] == 4 and _has_transparency(pixels):
        notes.append("many programs ignore BMP transparency: use PNG, WebP or TIFF to keep it")
    pixels = _to_8bit(pixels, "BMP", notes)
    return _save_with_pillow(pixels, "BMP", {"dpi": metadata.dpi} if metadata.dpi else {})


def _encode_tiff(pixels: np.ndarray, metadata: Metadata, quality: int, mark: str, notes: list[str]) -> bytes:
    """Lossless (deflate) TIFF of any depth by tifffile.

    Pillow's libtiff encoder rejects EXIF blocks that have sub-IFDs, so all TIFFs
    go through tifffile.  Of the EXIF data only IFD0 ASCII tags (Make, Model,
    DateTime, Artist, Copyright, Software, ImageDescription, HostComputer) are
    carried, as plain TIFF tags; the EXIF and GPS sub-IFDs are not written. The
    provenance mark goes into the XMP tag.
    """
    import tifffile

    channels = pixels.shape[2]
    options: dict[str, object] = {
        "photometric": "rgb" if channels >= 3 else "minisblack",
        "planarconfig": "contig",
        "compression": "zlib",
        "predictor": True,
        "metadata": None,
        "software": False,
        "extratags": [*_tiff_text_tags(metadata.exif), _tiff_mark_tag(mark)],
    }
    if channels in (2, 4):
        options["extrasamples"] = ("unassalpha",)
    if metadata.dpi:
        options.update(resolution=metadata.dpi, resolutionunit="inch")
    if metadata.icc_profile:
        options["iccprofile"] = metadata.icc_profile
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pixels[..., 0] if channels == 1 else pixels, **options)
    return buffer.getvalue()


def _tiff_mark_tag(mark: str) -> tuple[int, str, int, bytes, bool]:
    """tifffile extratag: the provenance mark as an XMP packet (BYTE values)."""
    packet = xmp_packet(mark)
    return (XMP_TIFF_TAG, "B", len(packet), packet, True)


def _tiff_text_tags(exif_bytes: bytes | None) -> list[tuple[int, str, int, bytes, bool]]:
    """tifffile extratags for the EXIF IFD0 ASCII tags that TIFF also defines."""
    if not exif_bytes:
        return []
    exif = PILImage.Exif()
    exif.load(exif_bytes)
    tags = []
    for tag in TIFF_TEXT_TAGS:
        value = exif.get(tag)
        if isinstance(value, str) and value:
            tags.append((tag, "s", 0, value.encode("latin-1", "replace"), True))
    return tags


def _pillow_metadata_options(metadata: Metadata, *, dpi: bool, exif_header: bool = True) -> dict[str, object]:
    """Pillow save options for the metadata; the EXIF header is needed in JPEG, not in WebP."""
    options: dict[str, object] = {}
    if metadata.icc_profile:
        options["icc_profile"] = metadata.icc_profile
    if metadata.exif:
        payload = metadata.exif.removeprefix(_EXIF_HEADER)
        options["exif"] = _EXIF_HEADER + payload if exif_header else payload
    if dpi and metadata.dpi:
        options["dpi"] = metadata.dpi
    return options


def _save_with_pillow(pixels: np.ndarray, pillow_format: str, options: dict[str, object]) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).save(buffer, pillow_format, **options)
    return buffer.getvalue()


def _check_max_side(pixels: np.ndarray, max_side: int, name: str) -> None:
    height, width = pixels.shape[:2]
    if max(width, height) > max_side:
        raise ImageError(f"image is {width}×{height}, larger than the {max_side}×{max_side} pixels {name} can store")


def _has_transparency(pixels: np.ndarray) -> bool:
    return bool((pixels[..., -1] < np.iinfo(pixels.dtype).max).any())


def _flatten_onto_white(pixels: np.ndarray) -> np.ndarray:
    """Drop the alpha channel by compositing the colour over white."""
    white = float(np.iinfo(pixels.dtype).max)
    alpha = pixels[..., -1:].astype(np.float32) / white
    flat = pixels[..., :-1].astype(np.float32) * alpha + white * (1.0 - alpha)
    return np.rint(flat).astype(pixels.dtype)


def _grey_to_rgb(pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([np.repeat(pixels[..., :1], 3, axis=2), pixels[..., 1:]], axis=2)


def _is_grey_profile(icc_profile: bytes | None) -> bool:
    """True for an ICC profile whose data colour space (header bytes 16-20) is grey."""
    return icc_profile is not None and icc_profile[16:20] == b"GRAY"


def _to_8bit(pixels: np.ndarray, name: str, notes: list[str]) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    notes.append(f"{name} stores 8 bits per channel: 16-bit image reduced to 8 bits")
    return ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)
