"""`flowsr upscale` end to end: real image files, the real CLI, the bicubic engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from flowsr_cli.io.reading import read_image
from tests.conftest import CliInvoker


def make_photo(path: Path, size: tuple[int, int] = (20, 13), mode: str = "RGB", seed: int = 0) -> Path:
    """A small random image file; the format follows the extension."""
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    PILImage.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path)
    return path


def image_size(path: Path) -> tuple[int, int]:
    with PILImage.open(path) as image:
        return image.size


def flowsr_subprocess(*args: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    """Run the installed CLI as users do (a separate process)."""
    return subprocess.run([sys.executable, "-m", "flowsr_cli", *args], capture_output=True, **kwargs)  # type: ignore[call-overload]


def test_scale_gives_exact_rounded_size_and_default_name(run_cli: CliInvoker, tmp_path: Path) -> None:
    source = make_photo(tmp_path / "photo.png", (21, 13))
    result = run_cli("upscale", str(source), "--scale", "3.5", "--model", "bicubic")
    assert result.exit_code == 0, result.output
    assert image_size(tmp_path / "photo_x3.5.png") == (74, 46)  # round(73.5)=74 (half up), round(45.5)=46


def test_integer_scale_name_and_width_height_requests(run_cli: CliInvoker, tmp_path: Path) -> None:
    source = make_photo(tmp_path / "photo.jpg", (20, 13))
    assert run_cli("upscale", str(source), "--scale", "2").exit_code == 0
    assert image_size(tmp_path / "photo_x2.jpg") == (40, 26)
    assert run_cli("upscale", str(source), "--width", "50").exit_code == 0
    assert image_size(tmp_path / "photo_w50.jpg") == (50, 33)  # 13 * 2.5 = 32.5 -> 33
    assert run_cli("upscale", str(source), "--height", "39").exit_code == 0
    assert image_size(tmp_path / "photo_h39.jpg") == (60, 39)


def test_bicubic_output_matches_the_resize_module(run_cli: CliInvoker, tmp_path: Path) -> None:
    import torch

    from flowsr_cli.engine.pipeline import pixels_to_tensor, tensor_to_pixels
    from flowsr_cli.engine.resize import resize

    source = make_photo(tmp_path / "a.png", (17, 11))
    assert run_cli("upscale", str(source), "--scale", "2.5", "-o", str(tmp_path / "b.png")).exit_code == 0
    pixels = np.asarray(PILImage.open(source))
    expected = tensor_to_pixels(resize(pixels_to_tensor(pixels), (28, 43)), np.dtype(np.uint8))
    assert torch.equal(torch.from_numpy(np.array(PILImage.open(tmp_path / "b.png"))), torch.from_numpy(expected))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "bicubic"], "exactly one of --scale"),
        (["--scale", "0.5"], "--scale must be a number >= 1"),
        (["--scale", "2", "--width", "40"], "exactly one of"),
        (["--scale", "2", "--model", "nonexistent"], "unknown model 'nonexistent'"),
        (["--scale", "2", "--format", "gif"], "allowed: same, png"),
        (["--scale", "2", "--shard", "2/2"], "--shard takes I/N"),
        (["--scale", "2", "--device", "cuda"], "CUDA is not available"),
    ],
)
def test_usage_errors_exit_2_with_one_line(run_cli: CliInvoker, tmp_path: Path, args: list[str], message: str) -> None:
    source = make_photo(tmp_path / "a.png")
    result = run_cli("upscale", str(source), *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert sorted(os.listdir(tmp_path)) == ["a.png"]


@pytest.mark.robustness
def test_folder_with_a_corrupt_file_writes_the_rest_and_exits_1(run_cli: CliInvoker, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for index, name in enumerate(["a.png", "b.jpg", "d.webp"]):
        make_photo(folder / name, seed=index)
    (folder / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    result = run_cli("upscale", str(folder), "--scale", "2", "-o", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert sorted(os.listdir(tmp_path / "out")) == ["a_x2.png", "b_x2.jpg", "d_x2.webp"]
    assert "c.png" in result.stderr and "Failed inputs" in result.stderr
    assert "3 upscaled, 0 skipped, 1 failed" in result.stderr
    assert "Traceback" not in result.output


def test_skip_existing_by_default_and_overwrite_on_request(run_cli: CliInvoker, tmp_path: Path) -> None:
    source = make_photo(tmp_path / "a.png")
    target = tmp_path / "a_x2.png"
    assert run_cli("upscale", str(source), "--scale", "2").exit_code == 0
    first = target.stat().st_ino
    result = run_cli("upscale", str(source), "--scale", "2", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["status"] == "skipped"
    assert target.stat().st_ino == first
    assert run_cli("upscale", str(source), "--scale", "2", "--overwrite").exit_code == 0
    assert target.stat().st_ino != first and image_size(target) == (40, 26)


def test_an_existing_file_flowsr_did_not_write_is_skipped_and_never_overwritten(
    run_cli: CliInvoker, tmp_path: Path
) -> None:
    source = make_photo(tmp_path / "a.png")
    target = tmp_path / "a_x2.png"
    target.write_bytes(b"keep me")
    result = run_cli("upscale", str(source), "--scale", "2", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["status"] == "skipped"
    assert run_cli("upscale", str(source), "--scale", "2", "--overwrite").exit_code == 1
    assert target.read_bytes() == b"keep me"


def test_rerun_on_a_folder_does_not_upscale_its_own_outputs(run_cli: CliInvoker, tmp_path: Path) -> None:
    make_photo(tmp_path / "a.png")
    assert run_cli("upscale", str(tmp_path), "--scale", "2").exit_code == 0
    result = run_cli("upscale", str(tmp_path), "--scale", "2", "--json")
    assert result.exit_code == 0
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert {record["status"] for record in records} == {"skipped"}
    assert sorted(os.listdir(tmp_path)) == ["a.png", "a_x2.png"]


def test_output_never_overwrites_an_input(run_cli: CliInvoker, tmp_path: Path) -> None:
    source = make_photo(tmp_path / "a.png")
    before = source.read_bytes()
    result = run_cli("upscale", str(source), "--scale", "2", "--suffix", "", "--overwrite")
    assert result.exit_code == 1
    assert "overwrite the input" in result.stderr
    assert source.read_bytes() == before


def test_shards_partition_the_inputs(run_cli: CliInvoker, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    names = [f"img{index}.png" for index in range(7)]
    for index, name in enumerate(names):
        make_photo(folder / name, seed=index)
    written: list[set[str]] = []
    for shard in range(3):
        out = tmp_path / f"out{shard}"
        assert run_cli("upscale", str(folder), "--scale", "1.5", "-o", str(out), "--shard", f"{shard}/3").exit_code == 0
        written.append(set(os.listdir(out)))
    assert all(written)
    assert set.union(*written) == {name.replace(".png", "_x1.5.png") for name in names}
    assert sum(len(part) for part in written) == len(names)


def test_recursive_mirrors_subfolders_and_json_lines(run_cli: CliInvoker, tmp_path: Path) -> None:
    root = tmp_path / "in"
    (root / "sub" / "deeper").mkdir(parents=True)
    make_photo(root / "top.png")
    make_photo(root / "sub" / "deeper" / "leaf.jpg")
    (root / "notes.txt").write_text("not an image")
    flat = run_cli("upscale", str(root), "--scale", "2", "-o", str(tmp_path / "flat"))
    assert flat.exit_code == 0 and os.listdir(tmp_path / "flat") == ["top_x2.png"]
    result = run_cli("upscale", str(root), "--scale", "2", "-r", "-o", str(tmp_path / "out"), "--json", "--quiet")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "sub" / "deeper" / "leaf_x2.jpg").is_file()
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [record["status"] for record in records] == ["done", "done"]
    leaf = next(record for record in records if record["input"].endswith("leaf.jpg"))
    assert leaf["size_in"] == [20, 13] and leaf["size_out"] == [40, 26] and leaf["error"] is None
    assert leaf["seconds"] >= 0


def test_glob_and_missing_inputs(run_cli: CliInvoker, tmp_path: Path) -> None:
    make_photo(tmp_path / "a.png")
    make_photo(tmp_path / "b.png")
    result = run_cli(
        "upscale", str(tmp_path / "*.png"), str(tmp_path / "missing.png"), "--scale", "2", "-o", str(tmp_path / "out")
    )
    assert result.exit_code == 1
    assert sorted(os.listdir(tmp_path / "out")) == ["a_x2.png", "b_x2.png"]
    assert "missing.png: no such file or folder" in result.stderr


def test_format_conversion_and_output_file(run_cli: CliInvoker, tmp_path: Path) -> None:
    source = make_photo(tmp_path / "a.png", mode="RGBA")
    assert run_cli("upscale", str(source), "--scale", "2", "--format", "jpg").exit_code == 0
    with PILImage.open(tmp_path / "a_x2.jpg") as image:
        assert image.format == "JPEG" and image.mode == "RGB"
    assert run_cli("upscale", str(source), "--scale", "2", "-o", str(tmp_path / "named.webp")).exit_code == 0
    with PILImage.open(tmp_path / "named.webp") as image:
        assert image.format == "WEBP" and image.size == (40, 26)
    conflict = run_cli("upscale", str(source), "--scale", "2", "-o", str(tmp_path / "x.png"), "--format", "jpg")
    assert conflict.exit_code == 2


def test_several_inputs_need_a_folder_for_o(run_cli: CliInvoker, tmp_path: Path) -> None:
    make_photo(tmp_path / "a.png")
    make_photo(tmp_path / "b.png")
    result = run_cli("upscale", str(tmp_path), "--scale", "2", "-o", str(tmp_path / "out.png"))
    assert result.exit_code == 2
    assert "give a folder" in result.stderr


def test_greyscale_16bit_and_alpha_are_kept(run_cli: CliInvoker, tmp_path: Path) -> None:
    import imagecodecs

    grey16 = (np.arange(11 * 17, dtype=np.uint16).reshape(11, 17) * 311).astype(np.uint16)
    (tmp_path / "g16.png").write_bytes(imagecodecs.png_encode(grey16))
    make_photo(tmp_path / "rgba.png", mode="RGBA")
    make_photo(tmp_path / "grey.jpg", mode="L")
    assert run_cli("upscale", str(tmp_path), "--scale", "2", "-o", str(tmp_path / "out")).exit_code == 0
    g16 = read_image(tmp_path / "out" / "g16_x2.png")
    assert g16.mode == "L" and g16.bit_depth == 16 and g16.pixels.max() > 255
    assert read_image(tmp_path / "out" / "rgba_x2.png").mode == "RGBA"
    assert read_image(tmp_path / "out" / "grey_x2.jpg").mode == "L"


def test_transparent_colour_does_not_fringe(run_cli: CliInvoker, tmp_path: Path) -> None:
    pixels = np.zeros((16, 16, 4), dtype=np.uint8)
    pixels[:, :8] = (255, 255, 255, 255)  # opaque white left half; right half transparent black
    PILImage.fromarray(pixels, "RGBA").save(tmp_path / "logo.png")
    assert run_cli("upscale", str(tmp_path / "logo.png"), "--scale", "4").exit_code == 0
    out = np.asarray(PILImage.open(tmp_path / "logo_x4.png"))
    visible = out[..., 3] > 0
    assert visible[:, 32:].any(), "the alpha edge should be interpolated into the right half"
    assert out[visible][:, :3].min() >= 254, "no dark fringe where colour meets transparency"


def test_exif_rotated_jpeg_comes_out_upright(run_cli: CliInvoker, tmp_path: Path) -> None:
    exif = PILImage.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate 90° clockwise
    make_photo(tmp_path / "raw.png", (20, 12))
    PILImage.open(tmp_path / "raw.png").save(tmp_path / "cam.jpg", exif=exif.tobytes())
    assert run_cli("upscale", str(tmp_path / "cam.jpg"), "--scale", "2").exit_code == 0
    with PILImage.open(tmp_path / "cam_x2.jpg") as image:
        assert image.size == (24, 40)
        assert image.getexif().get(0x0112, 1) == 1


def test_stdin_to_stdout(tmp_path: Path) -> None:
    source = make_photo(tmp_path / "a.png")
    with source.open("rb") as stdin:
        result = flowsr_subprocess("upscale", "-", "--scale", "3", stdin=stdin)
    assert result.returncode == 0, result.stderr
    (tmp_path / "out.png").write_bytes(result.stdout)
    assert image_size(tmp_path / "out.png") == (60, 39)


@pytest.mark.robustness
def test_stdin_garbage_is_one_error_line(tmp_path: Path) -> None:
    result = flowsr_subprocess("upscale", "-", "--scale", "2", input=b"not an image at all")
    assert result.returncode == 1
    assert result.stdout == b""
    assert b"<stdin>" in result.stderr and b"Traceback" not in result.stderr


@pytest.mark.robustness
def test_interrupted_write_leaves_no_partial_file(tmp_path: Path) -> None:
    """A real failing write: the file-size limit is hit while the output is being written."""
    make_photo(tmp_path / "a_small.png", (8, 8), seed=1)
    make_photo(tmp_path / "b_big.png", (120, 120), seed=2)
    limit = 60_000  # the first output fits, the second (~170 KB of noise) cannot
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
        "sys.argv = ['flowsr'] + sys.argv[1:]\n"
        "from flowsr_cli.cli import main\n"
        "main()\n"
    )
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-c", script, "upscale", str(tmp_path), "--scale", "2", "-o", str(out)],
        capture_output=True,
    )
    assert result.returncode == 1, result.stderr
    assert os.listdir(out) == ["a_small_x2.png"]
    assert image_size(out / "a_small_x2.png") == (16, 16)
    assert b"b_big.png" in result.stderr and b"cannot write" in result.stderr


@pytest.fixture
def srflow_file(tmp_path: Path) -> Path:
    """A tiny SRFlow model file (fixed ×4)."""
    from flowsr_cli.families.model_file import save_model
    from tests.families.srflow.test_srflow_engine import sensible_tiny_srflow

    path = tmp_path / "srflow.safetensors"
    save_model(sensible_tiny_srflow(), path)
    return path


def test_srflow_is_fixed_x4_unless_resampling(run_cli: CliInvoker, tmp_path: Path, srflow_file: Path) -> None:
    source = make_photo(tmp_path / "a.png", (21, 13))
    model = ["--model", str(srflow_file), "--temperature", "0"]
    for size in (["--scale", "3.5"], ["--width", "80"]):
        refused = run_cli("upscale", str(source), *size, *model)
        assert refused.exit_code == 2, refused.output
        message = (
            f"{srflow_file} is a fixed ×4 model: use --scale 4, --model linf-lp for any scale, or --allow-resample"
        )
        assert message in refused.stderr and refused.stderr.count("error:") == 1
    assert sorted(os.listdir(tmp_path)) == ["a.png", "srflow.safetensors"]

    assert run_cli("upscale", str(source), "--scale", "4", *model).exit_code == 0
    assert image_size(tmp_path / "a_x4.png") == (84, 52)
    assert run_cli("upscale", str(source), "--width", "84", *model).exit_code == 0
    assert image_size(tmp_path / "a_w84.png") == (84, 52)

    resampled = run_cli("upscale", str(source), "--scale", "3.5", *model, "--allow-resample", "--json")
    assert resampled.exit_code == 0, resampled.output
    assert json.loads(resampled.stdout)["size_out"] == [74, 46]
    assert run_cli("upscale", str(source), "--width", "100", *model, "--allow-resample").exit_code == 0
    assert image_size(tmp_path / "a_w100.png") == (100, 62)

    import torch

    from flowsr_cli.engine.pipeline import pixels_to_tensor, tensor_to_pixels
    from flowsr_cli.engine.resize import resize
    from flowsr_cli.families.upscalers import UpscalerRequest, create_upscaler
    from flowsr_cli.io.sizing import Size

    native = torch.empty(1, 3, 52, 84)

    def sink(sample: int, rows: range, columns: range, tile: torch.Tensor) -> None:
        native[..., rows.start : rows.stop, columns.start : columns.stop] = tile

    lr = pixels_to_tensor(np.asarray(PILImage.open(source)))
    create_upscaler(UpscalerRequest(str(srflow_file), device="cpu", temperature=0.0)).upscale(lr, Size(84, 52), sink)
    expected = tensor_to_pixels(resize(native, (46, 74)), np.dtype(np.uint8))
    assert np.array_equal(np.asarray(PILImage.open(tmp_path / "a_x3.5.png")), expected), "the float ×4 output, resized"
