"""Robustness: a run never destroys data. Another run's output in progress survives, a file flowsr did not
write is never replaced (even if named like an output), and image data that does not reach stdout is an
error. Real processes, real locks, real pipes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from flowsr_cli import __version__
from tests.cli.test_cli_startup import PROBE
from tests.conftest import CliInvoker

pytestmark = pytest.mark.robustness


def _flowsr(*args: str) -> list[str]:
    return [sys.executable, "-m", "flowsr_cli", *args]


def _photo(path: Path, size: int = 20, seed: int = 0, bits: int = 8) -> Path:
    """A small noise image; 16-bit ones as a 16-bit PNG (a 16-bit TIFF when the name says so)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if bits == 16:
        import tifffile

        pixels = rng.integers(0, 65536, (size, size, 3), dtype=np.uint16)
        if path.suffix == ".tif":
            tifffile.imwrite(path, pixels, photometric="rgb", metadata=None)
        else:
            import imagecodecs

            path.write_bytes(imagecodecs.png_encode(pixels))
        return path
    PILImage.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def _error_lines(stderr: bytes | str) -> list[str]:
    text = stderr.decode() if isinstance(stderr, bytes) else stderr
    return [line for line in text.splitlines() if line.startswith("error:")]


def _temp_files(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.endswith(".part"))


# --------------------------------------------------------------------------- concurrent runs

# The real atomic writer in its own process, paused just before it syncs and renames (so its hidden
# temporary file exists) until the test sends a line on stdin.
PAUSED_WRITER = """
import os, sys
from flowsr_cli.io.atomic import atomic_write_bytes

real_fsync = os.fsync
def paused_fsync(fd):
    print("writing", flush=True)
    sys.stdin.readline()
    real_fsync(fd)
os.fsync = paused_fsync
atomic_write_bytes(sys.argv[1], sys.argv[2].encode())
print("written", flush=True)
"""


def _start_paused_writer(target: Path, payload: str) -> subprocess.Popen[str]:
    writer = subprocess.Popen(
        [sys.executable, "-c", PAUSED_WRITER, str(target), payload],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert writer.stdout is not None and writer.stdout.readline() == "writing\n", writer.stderr
    return writer


def test_a_second_run_leaves_the_first_runs_write_in_progress_alone(tmp_path: Path) -> None:
    _photo(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    writer = _start_paused_writer(out / "a_x2.png", "the first run's image")
    in_progress = _temp_files(out)
    assert len(in_progress) == 1

    second = subprocess.run(_flowsr("upscale", str(tmp_path / "in"), "-s", "2", "-o", str(out)), capture_output=True)
    assert second.returncode == 0, second.stderr
    assert in_progress[0] in _temp_files(out), "the second run deleted the first run's temporary file"

    stdout, stderr = writer.communicate("go\n", timeout=60)
    assert writer.returncode == 0 and stdout == "written\n", stderr
    assert (out / "a_x2.png").read_text() == "the first run's image"
    assert _temp_files(out) == []


def test_the_temporary_file_of_a_killed_writer_is_removed_by_the_next_run(tmp_path: Path) -> None:
    _photo(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    writer = _start_paused_writer(out / "a_x2.png", "never finished")
    writer.send_signal(signal.SIGKILL)
    writer.communicate(timeout=60)
    assert writer.returncode == -signal.SIGKILL and len(_temp_files(out)) == 1

    rerun = subprocess.run(_flowsr("upscale", str(tmp_path / "in"), "-s", "2", "-o", str(out)), capture_output=True)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(os.listdir(out)) == ["a_x2.png"]


# --------------------------------------------------------------------------- files flowsr did not write


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["default", "overwrite"])
def test_an_unmarked_file_named_like_an_output_is_an_input_and_is_never_replaced(
    run_cli: CliInvoker, tmp_path: Path, overwrite: list[str]
) -> None:
    _photo(tmp_path / "a.png", seed=1)
    original = _photo(tmp_path / "a_x2.png", size=30, seed=2).read_bytes()
    result = run_cli("upscale", str(tmp_path), "--scale", "2", *overwrite, "--json")

    assert result.exit_code == 1, result.output
    assert (tmp_path / "a_x2.png").read_bytes() == original, "an input was overwritten"
    statuses = {Path(record["input"]).name: record["status"] for record in map(json.loads, result.stdout.splitlines())}
    assert statuses == {"a.png": "failed", "a_x2.png": "done"}, "the photo is an input like any other"
    assert (tmp_path / "a_x2_x2.png").is_file()
    expected = f"error: {tmp_path / 'a.png'}: {tmp_path / 'a_x2.png'} exists and was not written by flowsr; "
    assert _error_lines(result.stderr) == [expected + "not replaced (use --suffix or -o)"]
    assert "unexpected" not in result.output and "Traceback" not in result.output


def test_overwrite_never_replaces_a_file_flowsr_did_not_write(run_cli: CliInvoker, tmp_path: Path) -> None:
    source = _photo(tmp_path / "a.png")
    foreign = _photo(tmp_path / "out" / "a_x2.png", seed=3)
    before = foreign.read_bytes()
    skipped = run_cli("upscale", str(source), "-s", "2", "-o", str(tmp_path / "out"))
    assert skipped.exit_code == 0 and foreign.read_bytes() == before
    refused = run_cli("upscale", str(source), "-s", "2", "-o", str(tmp_path / "out"), "--overwrite")
    assert refused.exit_code == 1 and foreign.read_bytes() == before
    assert _error_lines(refused.stderr) == [
        f"error: {source}: {foreign} exists and was not written by flowsr; not replaced (use --suffix or -o)"
    ]
    single = run_cli("upscale", str(source), "-s", "2", "-o", str(foreign), "--overwrite")
    assert single.exit_code == 1 and foreign.read_bytes() == before


FORMATS = [("png", 8), ("png", 16), ("jpg", 8), ("webp", 8), ("tif", 8), ("tif", 16)]


@pytest.mark.parametrize("strip", [[], ["--strip-metadata"]], ids=["keep", "strip"])
@pytest.mark.parametrize(("ext", "bits"), FORMATS, ids=[f"{ext}{bits}" for ext, bits in FORMATS])
def test_outputs_of_every_format_carry_the_mark_and_are_replaced_on_request(
    run_cli: CliInvoker, tmp_path: Path, ext: str, bits: int, strip: list[str]
) -> None:
    from flowsr_cli.io.provenance import read_mark

    _photo(tmp_path / f"a.{ext}", bits=bits)
    assert run_cli("upscale", str(tmp_path), "-s", "2", *strip).exit_code == 0
    output = tmp_path / f"a_x2.{ext}"
    assert read_mark(output) == {
        "flowsr": __version__,
        "model": "bicubic",
        "model_sha256": None,
        "size": "x2",
        "prior": None,
        "temperature": 0.5,
        "seed": 0,
        "consistency": "off",
        "default_temperature": 0.5,
        "sample": None,
    }
    assert read_mark(tmp_path / f"a.{ext}") is None
    first = output.stat().st_ino

    rerun = run_cli("upscale", str(tmp_path), "-s", "2", "--overwrite", "--json", *strip)
    assert rerun.exit_code == 0, rerun.output
    records = [json.loads(line) for line in rerun.stdout.splitlines()]
    assert [(Path(record["input"]).name, record["status"]) for record in records] == [
        (f"a_x2.{ext}", "skipped"),
        (f"a.{ext}", "done"),
    ], "what needs no work is reported first"
    assert output.stat().st_ino != first, "the earlier output was replaced"
    assert sorted(os.listdir(tmp_path)) == [f"a.{ext}", f"a_x2.{ext}"]


def test_bmp_outputs_carry_no_mark_so_overwrite_never_replaces_them(run_cli: CliInvoker, tmp_path: Path) -> None:
    source = _photo(tmp_path / "a.png")
    assert run_cli("upscale", str(source), "-s", "2", "-f", "bmp").exit_code == 0
    before = (tmp_path / "a_x2.bmp").read_bytes()
    again = run_cli("upscale", str(source), "-s", "2", "-f", "bmp", "--overwrite")
    assert again.exit_code == 1
    assert "a_x2.bmp exists and was not written by flowsr" in _error_lines(again.stderr)[0]
    assert (tmp_path / "a_x2.bmp").read_bytes() == before


def test_earlier_bmp_outputs_are_not_taken_as_new_inputs(run_cli: CliInvoker, tmp_path: Path) -> None:
    source = _photo(tmp_path / "a.png")
    PILImage.open(source).save(tmp_path / "a.bmp")
    source.unlink()
    assert run_cli("upscale", str(tmp_path), "-s", "2").exit_code == 0
    again = run_cli("upscale", str(tmp_path), "-s", "2", "--json")
    assert again.exit_code == 0, again.stderr
    assert sorted(os.listdir(tmp_path)) == ["a.bmp", "a_x2.bmp"]


@pytest.mark.parametrize(
    "second",
    [["-s", "3"], ["-s", "2", "-o", "{tmp}/newdir"], ["-s", "2", "--suffix", "_big"], ["-s", "2", "-f", "webp"]],
    ids=["other-scale", "other-folder", "other-suffix", "other-format"],
)
def test_a_folders_earlier_outputs_are_never_new_inputs(run_cli: CliInvoker, tmp_path: Path, second: list[str]) -> None:
    """`photos/ -s 2` then `photos/ -s 3` (or another -o, suffix or format) upscales the photos only."""
    photos = tmp_path / "photos"
    for index in range(2):
        _photo(photos / f"p{index}.png", seed=index)
    assert run_cli("upscale", str(photos), "-s", "2").exit_code == 0
    (photos / "p1_x2.png").rename(photos / "holiday.png")  # a renamed output is still an output

    args = [arg.replace("{tmp}", str(tmp_path)) for arg in second]
    again = run_cli("upscale", str(photos), *args, "--json")
    assert again.exit_code == 0, again.output
    statuses = {Path(record["input"]).name: record for record in map(json.loads, again.stdout.splitlines())}
    assert {name: record["status"] for name, record in statuses.items()} == {
        "p0.png": "done",
        "p1.png": "done",
        "p0_x2.png": "skipped",
        "holiday.png": "skipped",
    }
    assert statuses["holiday.png"]["reason"] == (
        f"{photos / 'holiday.png'} is a flowsr output; name it on the command line to upscale it again"
    )
    written = sorted(os.listdir(photos)) + sorted(os.listdir(tmp_path / "newdir") if "-o" in args else [])
    assert not [name for name in written if name.startswith(("p0_x2_", "holiday_"))], written


def test_a_glob_skips_earlier_outputs_and_a_named_file_is_upscaled(run_cli: CliInvoker, tmp_path: Path) -> None:
    _photo(tmp_path / "a.png")
    assert run_cli("upscale", str(tmp_path / "a.png"), "-s", "2").exit_code == 0
    globbed = run_cli("upscale", str(tmp_path / "*.png"), "-s", "3")
    assert globbed.exit_code == 0, globbed.output
    assert sorted(os.listdir(tmp_path)) == ["a.png", "a_x2.png", "a_x3.png"]
    named = run_cli("upscale", str(tmp_path / "a_x2.png"), "-s", "3")
    assert named.exit_code == 0, named.output
    assert (tmp_path / "a_x2_x3.png").is_file(), "a file named on the command line is what the user asked for"
    both = run_cli("upscale", str(tmp_path), str(tmp_path / "a_x3.png"), "-s", "1.5", "--json")
    processed = sorted(
        Path(r["input"]).name for r in map(json.loads, both.stdout.splitlines()) if r["status"] == "done"
    )
    assert processed == ["a.png", "a_x3.png"], "named wins over found in a folder"


def test_marks_are_read_without_importing_torch(tmp_path: Path, isolated_settings: Path) -> None:
    _photo(tmp_path / "a.png")
    first = subprocess.run(_flowsr("upscale", str(tmp_path), "-s", "2"), capture_output=True)
    assert first.returncode == 0, first.stderr
    rerun = subprocess.run(
        [sys.executable, "-c", PROBE, "upscale", str(tmp_path), "--scale", "2"], capture_output=True, text=True
    )
    last = rerun.stderr.strip().splitlines()[-1]
    assert "CODE=0" in last and "torch" not in last and "PIL" not in last, rerun.stderr


def test_damaged_files_never_break_mark_reading(tmp_path: Path) -> None:
    from flowsr_cli.io.image import Image
    from flowsr_cli.io.provenance import read_mark
    from flowsr_cli.io.writing import encode_image

    image = Image(np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8), "png")
    path = tmp_path / "damaged"
    for fmt in ("png", "jpeg", "webp", "tiff", "bmp"):
        data, _ = encode_image(image, fmt)
        for end in range(0, len(data), max(1, len(data) // 97)):
            path.write_bytes(data[:end])
            assert read_mark(path) in (None, {"flowsr": __version__})
        flipped = bytearray(data)
        for index in range(0, len(data), 7):
            flipped[index] ^= 0xFF
        path.write_bytes(bytes(flipped))
        assert read_mark(path) in (None, {"flowsr": __version__})
    assert read_mark(tmp_path / "missing.png") is None and read_mark(tmp_path) is None


# --------------------------------------------------------------------------- stdout


def _upscale_to_stdout(source: Path, stdout: int | object) -> subprocess.Popen[bytes]:
    with source.open("rb") as stdin:
        return subprocess.Popen(
            _flowsr("upscale", "-", "--scale", "2"), stdin=stdin, stdout=stdout, stderr=subprocess.PIPE
        )


def _assert_one_stdout_error(process: subprocess.Popen[bytes], problem: str) -> None:
    assert process.stderr is not None
    stderr = process.stderr.read().decode()
    process.wait(timeout=120)
    assert process.returncode == 1, stderr
    assert _error_lines(stderr) == [f"error: cannot write to stdout: {problem}"], stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr and "upscaled" not in stderr


def test_a_reader_that_stops_early_is_a_failed_write(tmp_path: Path) -> None:
    """`flowsr upscale - | head -c 10`: the image (≈ 430 KB) is larger than the pipe's buffer."""
    source = _photo(tmp_path / "big.png", size=200)
    flowsr = _upscale_to_stdout(source, subprocess.PIPE)
    head = subprocess.Popen(["head", "-c", "10"], stdin=flowsr.stdout, stdout=subprocess.PIPE)
    assert flowsr.stdout is not None
    flowsr.stdout.close()
    assert len(head.communicate(timeout=120)[0]) == 10
    _assert_one_stdout_error(flowsr, "Broken pipe")


def test_a_closed_pipe_is_a_failed_write(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    flowsr = _upscale_to_stdout(_photo(tmp_path / "small.png"), write_end)
    os.close(write_end)
    _assert_one_stdout_error(flowsr, "Broken pipe")


def test_a_full_device_on_stdout_is_a_failed_write(tmp_path: Path) -> None:
    with open("/dev/full", "wb") as full:
        flowsr = _upscale_to_stdout(_photo(tmp_path / "small.png"), full)
    _assert_one_stdout_error(flowsr, "No space left on device")


def test_a_closed_stdout_is_a_failed_write(tmp_path: Path) -> None:
    """`flowsr upscale - -s 2 < in.png >&-`: Python starts with no sys.stdout at all."""
    source = _photo(tmp_path / "small.png")
    with source.open("rb") as stdin:
        flowsr = subprocess.Popen(
            _flowsr("upscale", "-", "--scale", "2"),
            stdin=stdin,
            stderr=subprocess.PIPE,
            preexec_fn=lambda: os.close(1),
        )
    _assert_one_stdout_error(flowsr, "stdout is closed")
