"""Tests for flowsr_cli.io (image reading and writing) on real files written by Pillow, imagecodecs and tifffile."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image as PILImage
from PIL import ImageCms, ImageOps, PngImagePlugin

from flowsr_cli.errors import ImageError, UsageError
from flowsr_cli.io.formats import FORMAT_EXTENSIONS, IMAGE_EXTENSIONS, INPUT_EXTENSIONS, format_from_suffix
from flowsr_cli.io.image import Image, Metadata
from flowsr_cli.io.provenance import MARK_KEY, mark_json, parse_mark, read_mark
from flowsr_cli.io.reading import read_image
from flowsr_cli.io.writing import encode_image, write_image
from tests.conftest import REPO_ROOT
from tests.image_factory import (
    MAKE_TAG,
    ORIENTATION_TAG,
    exif_bytes,
    gradient8,
    gradient16,
    marker_image,
    png_with_claimed_size,
    save_pillow,
    smooth_rgb,
    srgb_icc_profile,
    to_pillow,
)

MODE_CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}


def _write_tiff16(path: Path, pixels: np.ndarray, **options: object) -> Path:
    channels = pixels.shape[2]
    extrasamples = ("unassalpha",) if channels in (2, 4) else None
    tifffile.imwrite(
        path,
        pixels[..., 0] if channels == 1 else pixels,
        photometric="rgb" if channels >= 3 else "minisblack",
        planarconfig="contig",
        extrasamples=extrasamples,
        metadata=None,
        **options,
    )
    return path


def _mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int32) - b.astype(np.int32)).mean())


def _pillow_exif(path: Path) -> PILImage.Exif:
    with PILImage.open(path) as im:
        return im.getexif()


# --------------------------------------------------------------------------- names


def test_format_from_suffix_is_case_insensitive_and_knows_all_extensions() -> None:
    assert format_from_suffix("a.JPG") == "jpeg"
    assert format_from_suffix(Path("dir.png/b.TiFf")) == "tiff"
    assert format_from_suffix("photo.webp") == "webp"
    assert format_from_suffix("noext") is None
    assert format_from_suffix("a.gif") is None
    assert IMAGE_EXTENSIONS == {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"}
    assert INPUT_EXTENSIONS == IMAGE_EXTENSIONS | {".gif"}
    written_extensions = {fmt: extensions[0] for fmt, extensions in FORMAT_EXTENSIONS.items()}
    assert written_extensions == {
        "png": ".png",
        "jpeg": ".jpg",
        "webp": ".webp",
        "tiff": ".tif",
        "bmp": ".bmp",
    }


def test_image_properties_describe_the_pixel_array() -> None:
    image = Image(gradient16(2), "png")
    assert (image.width, image.height, image.channels) == (37, 23, 2)
    assert (image.bit_depth, image.has_alpha, image.mode) == (16, True, "LA")
    rgb = Image(gradient8(3)[:, ::-1], "jpeg")
    assert (rgb.bit_depth, rgb.has_alpha, rgb.mode) == (8, False, "RGB")
    assert rgb.pixels.flags["C_CONTIGUOUS"]


def test_image_rejects_arrays_it_cannot_describe() -> None:
    with pytest.raises(ValueError, match="shape"):
        Image(np.zeros((4, 4), np.uint8), "png")
    with pytest.raises(ValueError, match="shape"):
        Image(np.zeros((4, 4, 5), np.uint8), "png")
    with pytest.raises(ValueError, match="uint8 or uint16"):
        Image(np.zeros((4, 4, 3), np.float32), "png")


# --------------------------------------------------------------------------- lossless round trips


def _lossless_source(tmp_path: Path, fmt: str, mode: str, bits: int) -> tuple[Path, np.ndarray]:
    """A file written by another library, and the pixels it holds."""
    channels = MODE_CHANNELS[mode]
    pixels = gradient16(channels) if bits == 16 else gradient8(channels)
    path = tmp_path / f"source.{fmt}"
    if fmt == "png" and bits == 16:
        path.write_bytes(imagecodecs.png_encode(pixels))
    elif fmt == "tiff" and bits == 16:
        _write_tiff16(path, pixels, compression="lzw")
    elif fmt == "tiff":
        save_pillow(path, pixels, "TIFF", compression="tiff_lzw")
    else:
        save_pillow(path, pixels, fmt.upper())
    return path, pixels


LOSSLESS_CASES = [
    *[("png", mode, bits) for mode in MODE_CHANNELS for bits in (8, 16)],
    *[("tiff", mode, bits) for mode in ("L", "LA", "RGB", "RGBA") for bits in (8, 16)],
    ("bmp", "RGB", 8),
    ("bmp", "L", 8),
]


@pytest.mark.parametrize(("fmt", "mode", "bits"), LOSSLESS_CASES)
def test_lossless_round_trip_keeps_channels_depth_and_exact_values(
    tmp_path: Path, fmt: str, mode: str, bits: int
) -> None:
    source, pixels = _lossless_source(tmp_path, fmt, mode, bits)
    if bits == 16:
        assert np.count_nonzero(pixels % 257) > pixels.size * 0.8  # truncation would show

    image = read_image(source)
    assert (image.format, image.mode, image.bit_depth) == (fmt, mode, bits)
    np.testing.assert_array_equal(image.pixels, pixels)

    out = tmp_path / f"out{FORMAT_EXTENSIONS[fmt][0]}"
    assert write_image(image, out, fmt) == []
    again = read_image(out)
    assert (again.mode, again.bit_depth, again.pixels.dtype) == (mode, bits, pixels.dtype)
    np.testing.assert_array_equal(again.pixels, pixels)


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_16_bit_output_is_readable_by_independent_decoders(tmp_path: Path, mode: str) -> None:
    pixels = gradient16(MODE_CHANNELS[mode])
    image = Image(pixels, "png", Metadata(icc_profile=srgb_icc_profile(), dpi=(300.0, 300.0)))
    write_image(image, tmp_path / "out.png", "png")
    write_image(image, tmp_path / "out.tif", "tiff")
    decoded_png = imagecodecs.png_decode((tmp_path / "out.png").read_bytes())
    np.testing.assert_array_equal(decoded_png.reshape(pixels.shape), pixels)
    decoded_tiff = tifffile.imread(tmp_path / "out.tif")
    np.testing.assert_array_equal(decoded_tiff.reshape(pixels.shape), pixels)


@settings(max_examples=25, deadline=None)
@given(
    arrays(
        np.uint16,
        st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 4)),
        elements=st.integers(0, 65535),
    ),
    st.sampled_from(["png", "tiff"]),
)
def test_any_16_bit_array_survives_lossless_formats_exactly(pixels: np.ndarray, fmt: str) -> None:
    data, notes = encode_image(Image(pixels, fmt), fmt)
    decoded = read_image(data)
    assert notes == []
    assert decoded.pixels.dtype == np.uint16
    np.testing.assert_array_equal(decoded.pixels, pixels)


def test_palette_png_with_transparency_becomes_rgba(tmp_path: Path) -> None:
    palette_image = PILImage.new("P", (5, 4), 0)
    palette_image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    palette_image.putpixel((1, 1), 1)
    palette_image.putpixel((2, 3), 2)
    palette_image.save(tmp_path / "p.png", transparency=bytes([0, 128, 255]))

    image = read_image(tmp_path / "p.png")
    assert image.mode == "RGBA"
    assert tuple(image.pixels[0, 0]) == (255, 0, 0, 0)
    assert tuple(image.pixels[1, 1]) == (0, 255, 0, 128)
    assert tuple(image.pixels[3, 2]) == (0, 0, 255, 255)
    write_image(image, tmp_path / "out.png", "png")
    np.testing.assert_array_equal(read_image(tmp_path / "out.png").pixels, image.pixels)


def test_grey_png_with_transparent_colour_gets_an_alpha_channel(tmp_path: Path) -> None:
    pixels = gradient8(1)
    save_pillow(tmp_path / "g.png", pixels, "PNG", transparency=int(pixels[0, 0, 0]))
    image = read_image(tmp_path / "g.png")
    assert image.mode == "LA"
    np.testing.assert_array_equal(image.pixels[..., 0], pixels[..., 0])
    assert image.pixels[0, 0, 1] == 0
    assert image.pixels[-1, -1, 1] == 255


def test_one_bit_png_reads_as_8_bit_grey(tmp_path: Path) -> None:
    bilevel = PILImage.new("1", (6, 3), 0)
    bilevel.putpixel((4, 1), 1)
    bilevel.save(tmp_path / "b.png")
    image = read_image(tmp_path / "b.png")
    assert (image.mode, image.bit_depth) == ("L", 8)
    assert image.pixels[1, 4, 0] == 255
    assert image.pixels.sum() == 255


# --------------------------------------------------------------------------- lossy round trips


@pytest.mark.parametrize(("fmt", "mode"), [("jpeg", "L"), ("jpeg", "RGB"), ("webp", "RGB"), ("webp", "RGBA")])
def test_lossy_round_trip_keeps_channels_and_stays_close(tmp_path: Path, fmt: str, mode: str) -> None:
    rgb = smooth_rgb()
    pixels = {
        "L": rgb[..., :1],
        "RGB": rgb,
        "RGBA": np.concatenate([rgb, rgb[..., :1]], axis=2),
    }[mode]
    source = save_pillow(tmp_path / f"source.{fmt}", np.ascontiguousarray(pixels), fmt.upper(), quality=95)

    image = read_image(source)
    assert (image.format, image.mode, image.bit_depth) == (fmt, mode, 8)
    assert _mean_abs_diff(image.pixels, pixels) < 3

    out = tmp_path / f"out{FORMAT_EXTENSIONS[fmt][0]}"
    write_image(image, out, fmt, quality=95)
    again = read_image(out)
    assert (again.mode, again.bit_depth) == (mode, 8)
    assert _mean_abs_diff(again.pixels, pixels) < 3


def test_quality_setting_reaches_the_jpeg_encoder() -> None:
    image = Image(gradient8(3), "png")
    small, _ = encode_image(image, "jpeg", quality=10)
    large, _ = encode_image(image, "jpeg", quality=100)
    assert len(small) < len(large)


def test_cmyk_jpeg_reads_as_rgb(tmp_path: Path) -> None:
    cmyk = PILImage.frombytes("CMYK", (37, 23), gradient8(4).tobytes())
    cmyk.save(tmp_path / "cmyk.jpg", quality=95)
    image = read_image(tmp_path / "cmyk.jpg")
    assert (image.mode, image.format) == ("RGB", "jpeg")
    with PILImage.open(tmp_path / "cmyk.jpg") as reference:
        expected = np.asarray(reference.convert("RGB"))
    np.testing.assert_array_equal(image.pixels, expected)


def test_cielab_tiff_reads_as_srgb_with_a_note(tmp_path: Path) -> None:
    """8-bit Lab clips the most saturated sRGB corners, so the round trip is close on average only."""
    rgb = PILImage.fromarray(smooth_rgb())
    srgb, lab_profile = ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB")
    lab = ImageCms.applyTransform(rgb, ImageCms.buildTransform(srgb, lab_profile, "RGB", "LAB"))
    lab.save(tmp_path / "lab.tif", "TIFF")
    image = read_image(tmp_path / "lab.tif")
    assert image.channels == 3 and image.warnings == ["CIELab image: converted to sRGB"]
    in_memory = ImageCms.applyTransform(lab, ImageCms.buildTransform(lab_profile, srgb, "LAB", "RGB"))
    np.testing.assert_array_equal(image.pixels, np.asarray(in_memory))
    assert np.abs(image.pixels.astype(int) - np.asarray(rgb).astype(int)).mean() < 1.5


def test_greyscale_webp_is_stored_as_rgb_with_equal_channels() -> None:
    data, _ = encode_image(Image(smooth_rgb()[..., :1].copy(), "png"), "webp", quality=95)
    image = read_image(data)
    assert image.mode == "RGB"
    assert _mean_abs_diff(image.pixels[..., 0], image.pixels[..., 2]) < 2


def test_16_bit_to_8_bit_formats_rounds_and_warns() -> None:
    pixels = gradient16(3)
    data, notes = encode_image(Image(pixels, "png"), "bmp")
    assert notes == ["BMP stores 8 bits per channel: 16-bit image reduced to 8 bits"]
    expected = np.rint(pixels / 257).astype(np.uint8)
    np.testing.assert_array_equal(read_image(data).pixels, expected)


def test_jpeg_output_of_rgba_flattens_onto_white_with_a_warning() -> None:
    colour = np.zeros((32, 32, 3), np.uint8)
    colour[..., 0] = 200
    alpha = np.zeros((32, 32, 1), np.uint8)
    alpha[:, 16:] = 255
    alpha[16:, :16] = 128
    data, notes = encode_image(Image(np.concatenate([colour, alpha], axis=2), "png"), "jpeg")
    assert notes == ["JPEG has no alpha channel: transparent areas flattened onto white"]
    image = read_image(data)
    assert image.mode == "RGB"
    block_centres = image.pixels[4:-4:16, 4:-4:16].astype(int)  # away from JPEG block edges
    assert np.abs(block_centres[0, 0] - (255, 255, 255)).max() <= 3  # alpha 0: white
    assert np.abs(block_centres[1, 0] - (228, 127, 127)).max() <= 3  # alpha 128/255: mixed
    assert np.abs(block_centres[:, 1] - (200, 0, 0)).max() <= 3  # opaque: the colour


def test_opaque_alpha_is_dropped_silently_for_jpeg() -> None:
    pixels = np.concatenate([smooth_rgb(), np.full((23, 37, 1), 255, np.uint8)], axis=2)
    _, notes = encode_image(Image(pixels, "png"), "jpeg")
    assert notes == []


def test_grey_with_alpha_becomes_rgba_in_bmp() -> None:
    pixels = gradient8(2)
    pixels[..., 1] = 255
    image = read_image(encode_image(Image(pixels, "png"), "bmp")[0])
    assert image.mode == "RGB"
    np.testing.assert_array_equal(image.pixels, np.repeat(pixels[..., :1], 3, axis=2))


def test_unknown_output_format_is_a_usage_error_and_aliases_work() -> None:
    image = Image(gradient8(3), "png")
    with pytest.raises(UsageError, match="unknown output format 'gif'"):
        encode_image(image, "gif")
    data, _ = encode_image(image, "JPG")
    assert read_image(data).format == "jpeg"


def test_too_wide_for_jpeg_is_an_image_error() -> None:
    with pytest.raises(ImageError, match="65535×65535 pixels JPEG can store"):
        encode_image(Image(np.zeros((1, 65536, 3), np.uint8), "png"), "jpeg")


# --------------------------------------------------------------------------- metadata


def _save_with_metadata(path: Path, fmt: str, bits: int, icc: bytes, exif: bytes) -> np.ndarray:
    pixels = gradient16(3) if bits == 16 else gradient8(3)
    if fmt == "tiff" and bits == 16:
        make = PILImage.Exif()
        make.load(exif)
        _write_tiff16(
            path,
            pixels,
            iccprofile=icc,
            resolution=(300, 300),
            resolutionunit="inch",
            extratags=[(MAKE_TAG, "s", 0, make[MAKE_TAG], True)],
        )
    elif bits == 16:
        image = Image(pixels, "png", Metadata(icc_profile=icc, exif=exif, dpi=(300.0, 300.0)))
        write_image(image, path, "png")
    else:
        pillow_format = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF"}[fmt]
        save_pillow(path, pixels, pillow_format, icc_profile=icc, exif=exif, dpi=(300, 300))
    return pixels


METADATA_CASES = [("png", 8), ("png", 16), ("jpeg", 8), ("tiff", 8), ("tiff", 16)]


@pytest.mark.parametrize(("fmt", "bits"), METADATA_CASES)
def test_icc_exif_and_dpi_survive_a_round_trip(tmp_path: Path, fmt: str, bits: int) -> None:
    icc = srgb_icc_profile()
    source = tmp_path / f"source{FORMAT_EXTENSIONS[fmt][0]}"
    _save_with_metadata(source, fmt, bits, icc, exif_bytes("FlowsrCam"))

    image = read_image(source)
    assert image.bit_depth == bits
    assert image.metadata.icc_profile == icc
    assert image.metadata.dpi == pytest.approx((300, 300), abs=0.01)
    read_exif = PILImage.Exif()
    read_exif.load(image.metadata.exif)
    assert read_exif[MAKE_TAG] == "FlowsrCam"

    out = tmp_path / f"out{FORMAT_EXTENSIONS[fmt][0]}"
    write_image(image, out, fmt)
    with PILImage.open(out) as written:
        assert written.info["icc_profile"] == icc
        assert written.info["dpi"] == pytest.approx((300, 300), abs=0.01)
        assert written.getexif()[MAKE_TAG] == "FlowsrCam"
    assert read_image(out).bit_depth == bits


def test_exif_sub_ifd_survives_png_jpeg_and_webp(tmp_path: Path) -> None:
    exif = PILImage.Exif()
    exif[MAKE_TAG] = "FlowsrCam"
    exif[0x8769] = {0x9003: "2024:05:06 07:08:09"}
    image = Image(smooth_rgb(), "png", Metadata(exif=exif.tobytes()))
    for fmt in ("png", "jpeg", "webp"):
        write_image(image, tmp_path / f"out.{fmt}", fmt)
        exif_ifd = _pillow_exif(tmp_path / f"out.{fmt}").get_ifd(0x8769)
        assert exif_ifd[0x9003] == "2024:05:06 07:08:09"


@pytest.mark.parametrize("bits", [8, 16])
def test_png_text_chunks_survive_a_round_trip(tmp_path: Path, bits: int) -> None:
    text = {"Title": "Sunset", "Comment": "ünïcödé ☃ needs iTXt", "Long": "x" * 5000}
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    save_pillow(tmp_path / "text.png", gradient8(3), "PNG", pnginfo=info)
    image = read_image(tmp_path / "text.png")
    assert image.metadata.text == text

    if bits == 16:
        image = Image(gradient16(3), "png", image.metadata)
    write_image(image, tmp_path / "out.png", "png")
    marked = {**text, MARK_KEY: mark_json()}  # flowsr's provenance mark is one more text chunk
    with PILImage.open(tmp_path / "out.png") as written:
        written.load()
        assert written.text == marked
    assert read_image(tmp_path / "out.png").metadata.text == marked


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp", "tiff"])
@pytest.mark.parametrize("bits", [8, 16])
def test_strip_metadata_writes_none(tmp_path: Path, fmt: str, bits: int) -> None:
    metadata = Metadata(
        icc_profile=srgb_icc_profile(),
        exif=exif_bytes("FlowsrCam"),
        dpi=(300.0, 300.0),
        text={"Title": "Sunset"},
    )
    image = Image(gradient16(3) if bits == 16 else gradient8(3), "png", metadata)
    out = tmp_path / f"out{FORMAT_EXTENSIONS[fmt][0]}"
    write_image(image, out, fmt, strip_metadata=True)

    with PILImage.open(out) as written:
        written.load()
        assert "icc_profile" not in written.info
        assert "dpi" not in written.info
        assert MAKE_TAG not in written.getexif()
        assert "Title" not in written.info
    assert read_image(out).metadata == Metadata(text={MARK_KEY: mark_json()} if fmt == "png" else {})
    assert parse_mark(mark_json()) == read_mark(out), "flowsr's provenance mark is written even when stripping"
    assert image.metadata.icc_profile is not None  # the image itself is unchanged


# --------------------------------------------------------------------------- orientation


def _stored_for_orientation(upright: np.ndarray, orientation: int) -> np.ndarray:
    """Pixels that a viewer applying `orientation` shows as `upright`."""
    inverse = {
        3: PILImage.Transpose.ROTATE_180,
        6: PILImage.Transpose.ROTATE_90,
        8: PILImage.Transpose.ROTATE_270,
    }[orientation]
    return np.asarray(to_pillow(upright).transpose(inverse))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_jpeg_comes_out_upright(tmp_path: Path, orientation: int) -> None:
    upright = marker_image()
    stored = _stored_for_orientation(upright, orientation)
    assert stored.shape != upright.shape or orientation == 3
    exif = exif_bytes(orientation=orientation)
    path = save_pillow(tmp_path / "rotated.jpg", stored, "JPEG", quality=95, exif=exif)

    image = read_image(path)
    assert image.pixels.shape == upright.shape
    assert _mean_abs_diff(image.pixels, upright) < 4
    assert np.abs(image.pixels[2, 2].astype(int) - (255, 0, 0)).max() <= 12
    assert np.abs(image.pixels[-3, 2].astype(int) - (0, 0, 255)).max() <= 12

    stored_exif = PILImage.Exif()
    stored_exif.load(image.metadata.exif)
    assert stored_exif[ORIENTATION_TAG] == 1
    assert stored_exif[MAKE_TAG] == "FlowsrCam"
    write_image(image, tmp_path / "out.jpg", "jpeg")
    assert _pillow_exif(tmp_path / "out.jpg").get(ORIENTATION_TAG, 1) == 1
    assert _mean_abs_diff(read_image(tmp_path / "out.jpg").pixels, upright) < 5


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow_exif_transpose(tmp_path: Path, orientation: int) -> None:
    stored = gradient8(3)
    path = save_pillow(tmp_path / "o.png", stored, "PNG", exif=exif_bytes(orientation=orientation))
    with PILImage.open(path) as reference:
        expected = np.asarray(ImageOps.exif_transpose(reference))
    np.testing.assert_array_equal(read_image(path).pixels, expected)


def test_orientation_is_applied_to_16_bit_pixels(tmp_path: Path) -> None:
    stored = gradient16(4)
    image = Image(stored, "png", Metadata(exif=exif_bytes(orientation=6)))
    write_image(image, tmp_path / "o.png", "png")
    write_image(image, tmp_path / "o.tif", "tiff")
    expected = np.rot90(stored, k=-1)
    np.testing.assert_array_equal(read_image(tmp_path / "o.png").pixels, expected)
    tifffile_source = _write_tiff16(tmp_path / "t.tif", stored, extratags=[(ORIENTATION_TAG, "H", 1, 6, True)])
    np.testing.assert_array_equal(read_image(tifffile_source).pixels, expected)


def test_xmp_orientation_in_png_text_is_reset(tmp_path: Path) -> None:
    xmp = '<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp)
    save_pillow(tmp_path / "x.png", gradient8(3), "PNG", pnginfo=info)
    image = read_image(tmp_path / "x.png")
    assert image.pixels.shape == (37, 23, 3)
    assert 'tiff:Orientation="1"' in image.metadata.text["XML:com.adobe.xmp"]


# --------------------------------------------------------------------------- limits and errors


@pytest.mark.robustness
def test_max_pixels_guard_uses_the_header_only() -> None:
    data = png_with_claimed_size(60000, 60000)
    with pytest.raises(ImageError) as excinfo:
        read_image(data)
    message = str(excinfo.value)
    assert "60000×60000" in message
    assert "3.6 G pixels" in message
    assert "max_pixels limit of 200,000,000" in message
    assert "flowsr config set max_pixels" in message
    with pytest.raises(ImageError, match="truncated PNG data"):
        read_image(png_with_claimed_size(600, 600))  # same file, decoded once under the limit


@pytest.mark.parametrize("fmt", ["png", "tiff", "jpeg"])
def test_max_pixels_is_configurable(tmp_path: Path, fmt: str) -> None:
    path = save_pillow(tmp_path / f"a.{fmt}", gradient8(3), fmt.upper())
    assert read_image(path, max_pixels=37 * 23).width == 37
    with pytest.raises(ImageError, match="max_pixels limit of 850"):
        read_image(path, max_pixels=37 * 23 - 1)


def test_pillow_bomb_check_does_not_preempt_ours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)
    path = save_pillow(tmp_path / "a.png", gradient8(3), "PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = read_image(path)
    assert image.warnings == []


def _truncated(fmt: str) -> bytes:
    buffer = io.BytesIO()
    to_pillow(gradient8(3)).save(buffer, fmt.upper())
    data = buffer.getvalue()
    return data[: len(data) * 2 // 3]


BAD_DATA = {
    "empty": (b"", "empty file"),
    "random": (np.random.default_rng(7).bytes(300), "not an image"),
    "text": (b"hello, this is not a picture\n", "not an image"),
    "truncated png": (_truncated("png"), "truncated PNG data"),
    "truncated jpeg": (_truncated("jpeg"), "truncated JPEG data"),
    "png header only": (b"\x89PNG\r\n\x1a\n\x00\x00", "PNG header is damaged or truncated"),
    "truncated 16-bit png": (imagecodecs.png_encode(gradient16(3))[:400], "truncated PNG data"),
    "truncated tiff": (b"II*\x00\x08\x00\x00\x00\x20", "TIFF"),
}


@pytest.mark.robustness
@pytest.mark.parametrize("case", BAD_DATA)
def test_bad_data_gives_one_line_image_error_from_path_and_bytes(tmp_path: Path, case: str) -> None:
    data, expected = BAD_DATA[case]
    path = tmp_path / "broken-file-name.png"
    path.write_bytes(data)
    messages = []
    for source in (path, data):
        with pytest.raises(ImageError) as excinfo:
            read_image(source)
        messages.append(str(excinfo.value))
    assert messages[0] == messages[1]
    assert expected in messages[0]
    assert "\n" not in messages[0]
    assert "broken-file-name" not in messages[0]


def test_corrupt_png_data_is_described(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    to_pillow(gradient8(3)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[60] ^= 0xFF
    with pytest.raises(ImageError, match=r"^corrupt PNG data \(.+\)$"):
        read_image(bytes(data))


def test_unreadable_paths_give_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="^cannot read: No such file or directory$"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="^cannot read: Is a directory$"):
        read_image(tmp_path)


def test_reading_from_bytes_equals_reading_from_path(tmp_path: Path) -> None:
    path = save_pillow(tmp_path / "a.png", gradient8(4), "PNG", dpi=(72, 72))
    from_path, from_bytes = read_image(path), read_image(path.read_bytes())
    np.testing.assert_array_equal(from_path.pixels, from_bytes.pixels)
    assert from_path.metadata == from_bytes.metadata


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animated_image_gives_first_frame_and_a_warning(tmp_path: Path, fmt: str) -> None:
    frames = [PILImage.new("RGB", (6, 5), colour) for colour in ((250, 0, 0), (0, 0, 250))]
    path = tmp_path / f"anim.{fmt.lower()}"
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], lossless=True)
    image = read_image(path)
    assert image.warnings == ["animated image: only the first frame is used"]
    assert np.abs(image.pixels[..., :3].astype(int) - (250, 0, 0)).max() <= 2


def test_multi_page_tiff_gives_first_page_and_a_warning(tmp_path: Path) -> None:
    pages = np.stack([gradient16(3), gradient16(3)[::-1].copy()])
    tifffile.imwrite(tmp_path / "pages.tif", pages, photometric="rgb", metadata=None)
    image = read_image(tmp_path / "pages.tif")
    assert image.warnings == ["multi-page TIFF: only the first page is used"]
    np.testing.assert_array_equal(image.pixels, pages[0])


def test_planar_16_bit_tiff_is_read_as_interleaved(tmp_path: Path) -> None:
    pixels = gradient16(3)
    tifffile.imwrite(
        tmp_path / "planar.tif",
        np.moveaxis(pixels, -1, 0),
        photometric="rgb",
        planarconfig="separate",
        metadata=None,
    )
    np.testing.assert_array_equal(read_image(tmp_path / "planar.tif").pixels, pixels)


def test_premultiplied_16_bit_tiff_alpha_is_undone(tmp_path: Path) -> None:
    pixels = gradient16(4)
    pixels[..., 3] = np.linspace(1000, 65535, pixels.shape[1]).astype(np.uint16)
    alpha = pixels[..., 3:].astype(np.float64) / 65535
    premultiplied = pixels.copy()
    premultiplied[..., :3] = np.rint(pixels[..., :3] * alpha).astype(np.uint16)
    tifffile.imwrite(
        tmp_path / "assoc.tif",
        premultiplied,
        photometric="rgb",
        extrasamples=("assocalpha",),
        metadata=None,
    )
    image = read_image(tmp_path / "assoc.tif")
    np.testing.assert_array_equal(image.pixels[..., 3], pixels[..., 3])
    assert np.abs(image.pixels[..., :3].astype(int) - pixels[..., :3]).max() <= 40


def test_32_bit_integer_tiff_is_clipped_to_16_bit(tmp_path: Path) -> None:
    values = np.array([[-5, 0, 1000, 70000]], np.int32)
    tifffile.imwrite(tmp_path / "i32.tif", values, metadata=None)
    image = read_image(tmp_path / "i32.tif")
    assert (image.mode, image.bit_depth) == ("L", 16)
    assert image.pixels[..., 0].tolist() == [[0, 0, 1000, 65535]]


def test_bigtiff_metadata_is_read(tmp_path: Path) -> None:
    _write_tiff16(
        tmp_path / "big.tif",
        gradient16(3),
        bigtiff=True,
        iccprofile=srgb_icc_profile(),
        resolution=(300, 300),
        resolutionunit="inch",
        extratags=[(MAKE_TAG, "s", 0, "FlowsrCam", True), (ORIENTATION_TAG, "H", 1, 3, True)],
    )
    image = read_image(tmp_path / "big.tif")
    np.testing.assert_array_equal(image.pixels, gradient16(3)[::-1, ::-1])
    assert image.metadata.icc_profile == srgb_icc_profile()
    assert image.metadata.dpi == (300.0, 300.0)
    exif = PILImage.Exif()
    exif.load(image.metadata.exif)
    assert (exif[MAKE_TAG], exif[ORIENTATION_TAG]) == ("FlowsrCam", 1)


def test_float_tiff_in_0_1_is_read_as_16_bit_with_a_note(tmp_path: Path) -> None:
    """Grey float32 as Pillow writes it, RGB float32 and float16 as tifffile does, RGBA with associated alpha."""
    grey = np.linspace(0, 1, 24, dtype=np.float32).reshape(4, 6)
    PILImage.fromarray(grey, "F").save(tmp_path / "grey.tif")
    rgb = np.random.default_rng(0).random((5, 7, 3)).astype(np.float32)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb", metadata=None)
    tifffile.imwrite(tmp_path / "half.tif", rgb.astype(np.float16), photometric="rgb", metadata=None)
    cases = [("grey", grey[..., np.newaxis], 32), ("rgb", rgb, 32), ("half", rgb.astype(np.float16), 16)]
    for name, values, bits in cases:
        image = read_image(tmp_path / f"{name}.tif")
        assert image.pixels.dtype == np.uint16 and image.bit_depth == 16, name
        np.testing.assert_array_equal(image.pixels, np.rint(values.astype(np.float64) * 65535).astype(np.uint16))
        assert image.warnings == [f"{bits}-bit floating-point TIFF: read and written as 16-bit"], name
    premultiplied = np.concatenate([rgb * 0.5, np.full((5, 7, 1), 0.5, np.float32)], axis=2)
    tifffile.imwrite(tmp_path / "rgba.tif", premultiplied, photometric="rgb", extrasamples=[1], metadata=None)
    image = read_image(tmp_path / "rgba.tif")
    assert np.abs(image.pixels[..., :3].astype(np.float64) / 65535 - rgb).max() < 1e-4, "alpha undone"


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        (np.array([[-0.5, 0.2], [0.3, 2.0]], np.float32), "pixels range from -0.5 to 2; flowsr reads them in [0, 1]"),
        (np.array([[0.5, np.nan]], np.float32), "non-finite pixels"),
        (np.array([[0.5, np.inf]], np.float32), "non-finite pixels"),
    ],
)
def test_float_tiff_outside_0_1_is_refused_in_one_line(tmp_path: Path, values: np.ndarray, problem: str) -> None:
    tifffile.imwrite(tmp_path / "f.tif", values, metadata=None)
    with pytest.raises(ImageError, match=re.escape(problem)):
        read_image(tmp_path / "f.tif")


def test_a_tiff_layout_pillow_cannot_read_is_named_not_called_damaged(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "u32.tif", np.zeros((4, 5, 3), np.uint32), photometric="rgb", metadata=None)
    with pytest.raises(ImageError, match=r"^unsupported TIFF layout \(32-bit unsigned samples, rgb\)$"):
        read_image(tmp_path / "u32.tif")


# --------------------------------------------------------------------------- atomic writes


def _part_files(directory: Path) -> list[Path]:
    return [path for path in directory.iterdir() if path.name.endswith(".part")]


def test_write_creates_file_with_umask_permissions_and_no_leftovers(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    write_image(Image(gradient8(3), "png"), target, "png")
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert _part_files(tmp_path) == []
    np.testing.assert_array_equal(read_image(target).pixels, gradient8(3))


def test_failed_encoding_keeps_the_old_target(tmp_path: Path) -> None:
    target = tmp_path / "out.jpg"
    target.write_bytes(b"old content")
    too_wide = Image(np.zeros((1, 65536, 3), np.uint8), "png")
    with pytest.raises(ImageError):
        write_image(too_wide, target, "jpeg")
    with pytest.raises(UsageError):
        write_image(too_wide, target, "gif")
    assert target.read_bytes() == b"old content"
    assert _part_files(tmp_path) == []


def test_missing_directory_is_an_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="^cannot write: No such file or directory$"):
        write_image(Image(gradient8(3), "png"), tmp_path / "no" / "such" / "dir.png", "png")


@pytest.mark.robustness
@pytest.mark.skipif(sys.platform == "win32", reason="needs RLIMIT_FSIZE")
def test_write_failing_midway_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    target.write_bytes(b"old content")
    script = (
        "import resource, signal, sys\n"
        "from flowsr_cli.errors import ImageError\n"
        "from flowsr_cli.io.image import Image\nfrom flowsr_cli.io.writing import write_image\n"
        "import numpy as np\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "try:\n"
        "    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)\n"
        "    write_image(Image(noise, 'png'), sys.argv[1], 'png')\n"
        "except ImageError as exc:\n"
        "    sys.exit(f'ImageError: {exc}')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(target)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "ImageError: cannot write: File too large"
    assert target.read_bytes() == b"old content"
    assert _part_files(tmp_path) == []


# --------------------------------------------------------------------------- provenance mark


def test_the_mark_can_carry_run_settings_through_an_xmp_packet(tmp_path: Path) -> None:
    import xml.etree.ElementTree as ElementTree

    from flowsr_cli import __version__
    from flowsr_cli.io.provenance import xmp_packet

    settings = {"model": 'a "quoted" & <odd> name', "scale": 3.5, "seed": 7}
    mark = mark_json(settings)
    assert parse_mark(mark) == {"flowsr": __version__, **settings}
    packet = xmp_packet(mark)
    ElementTree.fromstring(packet.split(b"?>", 1)[1].rsplit(b"<?", 1)[0])  # well-formed XML
    tiff = tmp_path / "marked.tif"
    tifffile.imwrite(tiff, gradient8(3), metadata=None, extratags=[(700, "B", len(packet), packet, True)])
    assert read_mark(tiff) == parse_mark(mark)
    assert parse_mark('{"other": "1.0"}') is None and parse_mark("[" * 100_000) is None
