"""Robustness: hostile image files, in a folder run of the real CLI and as fuzzed bytes through the reader."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage
from typer.testing import CliRunner

from flowsr_cli.cli import app
from flowsr_cli.console import printable
from flowsr_cli.errors import ImageError
from flowsr_cli.io.reading import read_image
from tests.hostile_inputs import REFUSED, output_name, write_corpus
from tests.image_factory import gradient8, gradient16

pytestmark = pytest.mark.robustness


def _lines_naming(stderr: bytes, name: bytes) -> list[bytes]:
    """The stderr lines about the file ``name`` (printed with undecodable bytes as escapes)."""
    shown = (os.sep + printable(os.fsdecode(name)) + ":").encode()
    return [line for line in stderr.splitlines() if shown in line]


def test_a_folder_of_hostile_files_writes_every_good_one_and_names_every_bad_one(tmp_path: Path) -> None:
    """The default model over the whole corpus in one recursive run, as a shell script would."""
    folder, out = tmp_path / "in", tmp_path / "out"
    corpus = write_corpus(folder)
    env = {key: value for key, value in os.environ.items() if key != "FLOWSR_MODEL"}
    command = [
        sys.executable,
        "-m",
        "flowsr_cli",
        "upscale",
        str(folder),
        "--recursive",
        "--scale",
        "2",
        "-o",
        str(out),
        "--json",
    ]
    result = subprocess.run(command, capture_output=True, env=env, timeout=600)

    assert result.returncode == 1, result.stderr.decode(errors="replace")
    assert b"Traceback" not in result.stderr and b"Traceback" not in result.stdout
    written = refused = 0
    for item in corpus:
        produced = Path(os.fsdecode(os.path.join(os.fsencode(out), output_name(item.name))))
        errors = [line for line in _lines_naming(result.stderr, item.name) if line.startswith(b"error: ")]
        if item.expected == REFUSED:
            refused += 1
            assert len(errors) == 1, (item.name, result.stderr)
            assert not produced.exists(), item.name
            continue
        written += 1
        assert errors == [], (item.name, errors)
        source = read_image(Path(os.fsdecode(os.path.join(os.fsencode(folder), item.name))))
        output = read_image(produced)
        assert (output.width, output.height) == (2 * source.width, 2 * source.height), item.name
        assert output.channels == source.channels, item.name
        if item.warns:
            assert any(line.startswith(b"warning: ") for line in _lines_naming(result.stderr, item.name))
    assert written > 0 and refused > 0
    leftovers = [name for _, _, names in os.walk(out) for name in names if name.startswith(".")]
    assert leftovers == []
    written_files = [name for _, _, names in os.walk(out) for name in names]
    assert len(written_files) == written, "an output was written more than once (symlink loop?) or went missing"
    records = [json.loads(line.decode("utf-8")) for line in result.stdout.splitlines()]
    assert sorted(os.fsencode(record["input"]) for record in records) == sorted(
        os.path.join(os.fsencode(folder), item.name) for item in corpus
    )


_VALID = {
    "png": lambda: _encoded(PILImage.fromarray(gradient8(3, 9, 11)), "PNG"),
    "png16": lambda: _encoded(PILImage.fromarray(gradient16(1, 9, 11)[..., 0]), "PNG"),
    "jpeg": lambda: _encoded(PILImage.fromarray(gradient8(3, 16, 16)), "JPEG"),
    "webp": lambda: _encoded(PILImage.fromarray(gradient8(3, 9, 11)), "WEBP"),
    "tiff": lambda: _encoded(PILImage.fromarray(gradient8(3, 9, 11)), "TIFF"),
    "bmp": lambda: _encoded(PILImage.fromarray(gradient8(3, 9, 11)), "BMP"),
    "gif": lambda: _encoded(PILImage.fromarray(gradient8(3, 9, 11)).convert("P"), "GIF"),
}


def _encoded(image: PILImage.Image, pillow_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, pillow_format)
    return buffer.getvalue()


VALID_BYTES = {name: make() for name, make in _VALID.items()}


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid image file with bytes flipped, a run overwritten, bytes inserted or the tail cut."""
    data = bytearray(VALID_BYTES[draw(st.sampled_from(sorted(VALID_BYTES)))])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "overwrite", "insert", "truncate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "overwrite":
            patch = draw(st.binary(min_size=1, max_size=16))
            data[at : at + len(patch)] = patch
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at:]
    return bytes(data)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated_images())
def test_mutated_image_bytes_decode_or_give_one_image_error(data: bytes) -> None:
    try:
        image = read_image(data)
    except ImageError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert image.width >= 1 and image.height >= 1
    assert image.pixels.dtype in (np.uint8, np.uint16)
    assert image.pixels.shape[:2] == (image.height, image.width)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated_images())
def test_mutated_image_bytes_through_the_cli_give_an_image_or_one_error_line(data: bytes) -> None:
    """stdin to stdout through the real command: exit 0 with an image, or exit 1 with one error line."""
    result = CliRunner().invoke(app, ["upscale", "-", "--scale", "2"], input=data, env={"FLOWSR_MODEL": "bicubic"})
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in result.output
    if result.exit_code == 0:
        assert errors == []
        assert read_image(result.stdout_bytes).width >= 2
    else:
        assert result.exit_code == 1, result.output
        assert len(errors) == 1 and "<stdin>" in errors[0]
        assert result.stdout_bytes == b""
