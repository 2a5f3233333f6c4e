"""Robustness: resource limits are refused before work starts, and input files that are not what their
names say (FIFOs, devices, sparse giants) are refused without being read whole.

Runs that would exhaust memory or hang without these checks go through a subprocess with an address-space
cap and a timeout, so a regression fails the test instead of the machine.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from PIL import Image as PILImage

from flowsr_cli.errors import ImageError
from flowsr_cli.io.file_checks import image_size
from flowsr_cli.io.reading import read_image
from tests.conftest import CliInvoker
from tests.test_robust_inputs import mutated_images

pytestmark = pytest.mark.robustness

MEMORY_CAP = 5 * 2**30
"""Address space of a subprocess run: enough for torch, far below what an unchecked request takes."""
TIMEOUT = 120
RAISE_OUTPUT = ("max_output_pixels", "flowsr config set max_output_pixels N", "FLOWSR_MAX_OUTPUT_PIXELS")
RAISE_SAMPLES = ("max_samples", "flowsr config set max_samples N", "FLOWSR_MAX_SAMPLES")


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def _flowsr(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`flowsr ARGS` in a subprocess with capped memory and a timeout (the test's settings are inherited)."""
    return subprocess.run(
        [sys.executable, "-m", "flowsr_cli", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=TIMEOUT,
        preexec_fn=_cap_memory,
    )


def _errors(stderr: str) -> list[str]:
    """The `error:` lines; a traceback or the CLI's fallback for unhandled exceptions fails the test."""
    assert "Traceback" not in stderr and "unexpected" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _one_error(stderr: str, *parts: str) -> str:
    """The single error line, which must contain every part."""
    errors = _errors(stderr)
    assert len(errors) == 1, stderr
    assert all(part in errors[0] for part in parts), errors[0]
    return errors[0]


def _png(path: Path, size: tuple[int, int]) -> Path:
    PILImage.new("RGB", size, (90, 140, 200)).save(path)
    return path


def _size_of(path: Path) -> tuple[int, int]:
    with PILImage.open(path) as image:
        return image.size


# Case 1: --samples is bounded by max_samples before any job is planned.


def test_samples_above_max_samples_are_refused_before_planning(tmp_path: Path) -> None:
    image = _png(tmp_path / "a.png", (6, 4))
    result = _flowsr("upscale", image, "--scale", "2", "--samples", "100000000")
    assert result.returncode == 2, result.stderr
    _one_error(result.stderr, "--samples 100000000", "limit of 100", *RAISE_SAMPLES)
    assert [path.name for path in tmp_path.iterdir()] == ["a.png"]


def test_max_samples_comes_from_the_settings(run_cli: CliInvoker, tmp_path: Path) -> None:
    image = _png(tmp_path / "a.png", (6, 4))
    result = run_cli("upscale", str(image), "--scale", "2", "--samples", "3", env={"FLOWSR_MAX_SAMPLES": "2"})
    assert result.exit_code == 2, result.output
    _one_error(result.stderr, "--samples 3", "limit of 2", *RAISE_SAMPLES)


# Case 2: the output size (all samples together) is bounded by max_output_pixels before the model loads.


def test_an_output_above_max_output_pixels_fails_that_image_and_the_rest_run(tmp_path: Path) -> None:
    big, small = _png(tmp_path / "big.png", (400, 400)), _png(tmp_path / "small.png", (10, 10))
    result = _flowsr("upscale", big, small, "--scale", "50")
    assert result.returncode == 1, result.stderr
    _one_error(result.stderr, "big.png", "20000×20000", "limit of 250,000,000", *RAISE_OUTPUT)
    assert _size_of(tmp_path / "small_x50.png") == (500, 500)
    assert not (tmp_path / "big_x50.png").exists()


def test_the_model_is_not_loaded_when_every_input_is_too_large(run_cli: CliInvoker, tmp_path: Path) -> None:
    """A model that cannot be loaded is never noticed: the size check comes first."""
    image = _png(tmp_path / "a.png", (40, 30))
    result = run_cli("upscale", str(image), "--scale", "4", "--model", "no-such-model", env=_max_output(1000))
    assert result.exit_code == 1, result.output
    _one_error(result.stderr, "a.png", "160×120", "limit of 1,000", *RAISE_OUTPUT)


def test_every_sample_counts_towards_max_output_pixels(run_cli: CliInvoker, tmp_path: Path) -> None:
    image = _png(tmp_path / "a.png", (10, 10))
    result = run_cli(
        "upscale", str(image), "--scale", "2", "--samples", "3", "--model", "no-such-model", env=_max_output(1000)
    )
    assert result.exit_code == 1, result.output
    _one_error(result.stderr, "a.png", "3 samples of 20×20", "1,200", "limit of 1,000", *RAISE_OUTPUT)


def _max_output(pixels: int) -> dict[str, str]:
    return {"FLOWSR_MAX_OUTPUT_PIXELS": str(pixels)}


@pytest.mark.parametrize(("limit", "written"), [(1600, True), (1599, False)])
def test_max_output_pixels_is_the_largest_output_allowed(
    run_cli: CliInvoker, tmp_path: Path, limit: int, written: bool
) -> None:
    image = _png(tmp_path / "a.png", (10, 10))
    result = run_cli("upscale", str(image), "--scale", "4", env=_max_output(limit))
    assert result.exit_code == (0 if written else 1), result.output
    assert (tmp_path / "a_x4.png").exists() == written


def test_the_header_size_is_taken_upright(run_cli: CliInvoker, tmp_path: Path) -> None:
    """A JPEG stored 10 wide and 20 high, shown rotated: --width 40 gives 40×20 (800 pixels), not 40×80."""
    exif = PILImage.Exif()
    exif[0x0112] = 6
    PILImage.new("RGB", (10, 20), (200, 100, 50)).save(tmp_path / "cam.jpg", exif=exif.tobytes())
    result = run_cli("upscale", str(tmp_path / "cam.jpg"), "--width", "40", env=_max_output(1000))
    assert result.exit_code == 0, result.output
    assert _size_of(tmp_path / "cam_w40.jpg") == (40, 20)


@pytest.mark.parametrize(
    ("flag", "value", "shown"),
    [
        ("--scale", "1e308", "--scale 1e+308"),
        ("--scale", "20000", "--scale 20000"),
        ("--width", "99999999999999", "--width 99999999999999"),
        ("--height", "99999999999999", "--height 99999999999999"),
    ],
)
def test_an_absurd_size_is_one_usage_line(tmp_path: Path, flag: str, value: str, shown: str) -> None:
    image = _png(tmp_path / "a.png", (400, 400))
    result = _flowsr("upscale", image, flag, value)
    assert result.returncode == 2, result.stderr
    _one_error(result.stderr, shown, "limit of 250,000,000", *RAISE_OUTPUT)
    assert [path.name for path in tmp_path.iterdir()] == ["a.png"]


def test_an_output_too_large_to_compute_is_an_image_error() -> None:
    """Without a limit (or with an absurd one) the size itself overflows: one image fails, nothing crashes."""
    from flowsr_cli.io.sizing import Size, SizeRequest

    for request in (SizeRequest(scale=1e308), SizeRequest(width=10**400)):
        with pytest.raises(ImageError, match="too large to compute"):
            request.target(Size(400, 400))


# Case 3: inputs that are not regular files, or far larger than an image can be, are refused unread.


def test_a_fifo_named_on_the_command_line_is_refused_not_waited_for(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.png")
    good = _png(tmp_path / "good.png", (6, 4))
    result = _flowsr("upscale", tmp_path / "pipe.png", good, "--scale", "2")
    assert result.returncode == 1, result.stderr
    _one_error(result.stderr, "pipe.png", "named pipe (FIFO)", "not a regular file")
    assert _size_of(tmp_path / "good_x2.png") == (12, 8)


def test_a_fifo_alone_with_an_output_file_is_refused_as_an_input(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.png")
    result = _flowsr("upscale", tmp_path / "pipe.png", "--scale", "2", "-o", tmp_path / "out.png")
    assert result.returncode == 1, result.stderr
    _one_error(result.stderr, "pipe.png", "named pipe (FIFO)")


@pytest.mark.parametrize("how", ["folder", "recursive", "glob"])
def test_folder_and_glob_discovery_pass_over_fifos(tmp_path: Path, how: str) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    os.mkfifo(folder / "pipe.png")
    _png(folder / "good.png", (6, 4))
    arguments = {"folder": [folder], "recursive": [folder, "-r"], "glob": [folder / "*.png"]}[how]
    result = _flowsr("upscale", *arguments, "--scale", "2", "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["good_x2.png"]


def test_a_symlink_to_dev_zero_is_refused_as_a_device(tmp_path: Path) -> None:
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    result = _flowsr("upscale", tmp_path / "zero.png", "--scale", "2")
    assert result.returncode == 1, result.stderr
    _one_error(result.stderr, "zero.png", "character device", "not a regular file")


def test_a_sparse_giant_with_a_valid_header_is_refused_with_its_size(tmp_path: Path) -> None:
    giant = _png(tmp_path / "giant.png", (10, 10))
    os.truncate(giant, 20 * 10**9)  # sparse: takes no disk
    result = _flowsr("upscale", giant, "--scale", "2")
    assert result.returncode == 1, result.stderr
    _one_error(result.stderr, "giant.png", "20.0 GB", "max_pixels", "flowsr config set max_pixels N")
    assert not (tmp_path / "giant_x2.png").exists()


def _finishes(call: Callable[[], object], unblock: Callable[[], None], seconds: float = 20) -> object:
    """``call()``'s result or exception; if it is still running after ``seconds``, unblock it and fail."""
    outcome: list[object] = []

    def target() -> None:
        try:
            outcome.append(call())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        unblock()
        thread.join(seconds)
        pytest.fail(f"still waiting after {seconds} s")
    return outcome[0]


READERS = pytest.mark.parametrize("function", [read_image, image_size], ids=["read_image", "image_size"])


@READERS
def test_the_reader_refuses_a_fifo_without_waiting_for_a_writer(
    tmp_path: Path, function: Callable[..., object]
) -> None:
    """The reader checks again: a file can become a FIFO after discovery saw a regular file."""
    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)

    def unblock() -> None:
        os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))

    outcome = _finishes(lambda: function(pipe), unblock)
    assert isinstance(outcome, ImageError) and "named pipe (FIFO)" in str(outcome), outcome


@READERS
def test_the_reader_refuses_a_file_larger_than_max_pixels_allows(
    tmp_path: Path, function: Callable[..., object]
) -> None:
    padded = _png(tmp_path / "padded.png", (10, 10))
    os.truncate(padded, 200 * 10**6)
    with pytest.raises(ImageError, match=r"200\.0 MB.*max_pixels limit of 100 "):
        function(padded, max_pixels=100)


def test_image_size_reads_the_header_upright(tmp_path: Path) -> None:
    from flowsr_cli.io.sizing import Size

    exif = PILImage.Exif()
    exif[0x0112] = 8
    PILImage.new("RGB", (10, 20)).save(tmp_path / "cam.jpg", exif=exif.tobytes())
    assert image_size(tmp_path / "cam.jpg") == Size(20, 10)
    assert image_size(_png(tmp_path / "a.png", (7, 3))) == Size(7, 3)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated_images())
def test_the_header_check_agrees_with_decoding(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    """On mutated files of every format: a header the check refuses is refused by decoding with the same
    message, and a file that decodes has the size its header declared (or a header the check could not parse)."""

    path = tmp_path_factory.mktemp("mutated") / "image"
    path.write_bytes(data)
    try:
        declared = image_size(path)
    except ImageError as refused:
        with pytest.raises(ImageError) as decoding:
            read_image(path)
        assert str(decoding.value) == str(refused)
        return
    try:
        image = read_image(path)
    except ImageError:
        return
    assert declared is None or declared == (image.width, image.height)


def test_stdin_longer_than_any_image_within_max_pixels_is_refused_unread(tmp_path: Path) -> None:
    endless = subprocess.Popen(["yes"], stdout=subprocess.PIPE)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "flowsr_cli", "upscale", "-", "--scale", "2", "-o", str(tmp_path / "out.png")],
            stdin=endless.stdout,
            capture_output=True,
            text=True,
            env={**os.environ, "FLOWSR_MAX_PIXELS": "1000"},
            timeout=TIMEOUT,
            preexec_fn=_cap_memory,
        )
    finally:
        endless.kill()
        endless.wait()
    assert result.returncode == 1, result.stderr
    _one_error(result.stderr, "<stdin>", "the input is more than", "max_pixels", "FLOWSR_MAX_PIXELS")
    assert not (tmp_path / "out.png").exists()
