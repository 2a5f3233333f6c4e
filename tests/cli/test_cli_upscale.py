"""`flowsr upscale` end to end: real image files, the real CLI, the bicubic engine."""

from __future__ import annotations

import io
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


@pytest.mark.parametrize("command", [["upscale", "--scale", "2"], ["rescale", "up", "-m", "hcflow-rescale-x2"]])
def test_a_missing_input_with_an_output_file_fails_naming_the_input(
    run_cli: CliInvoker, tmp_path: Path, command: list[str]
) -> None:
    """One named input that does not exist is still one input: ``-o`` may name a file, and the input is the problem."""
    result = run_cli(*command, str(tmp_path / "missing.png"), "-o", str(tmp_path / "out.png"))
    assert result.exit_code == 1
    assert "missing.png: no such file or folder" in result.stderr and "folder;" not in result.stderr
    assert not (tmp_path / "out.png").exists()


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


def test_a_float_tiff_becomes_a_16_bit_tiff_and_one_out_of_range_fails_alone(
    run_cli: CliInvoker, tmp_path: Path
) -> None:
    import tifffile

    rgb = np.random.default_rng(1).random((13, 20, 3)).astype(np.float32)
    tifffile.imwrite(tmp_path / "float.tif", rgb, photometric="rgb", metadata=None)
    tifffile.imwrite(tmp_path / "hdr.tif", rgb * 4, photometric="rgb", metadata=None)
    result = run_cli("upscale", str(tmp_path), "--scale", "2", "-o", str(tmp_path / "out"))
    assert result.exit_code == 1
    upscaled = read_image(tmp_path / "out" / "float_x2.tif")
    assert (upscaled.mode, upscaled.bit_depth, upscaled.pixels.shape) == ("RGB", 16, (26, 40, 3))
    assert "float.tif: 32-bit floating-point TIFF: read and written as 16-bit" in result.stderr
    assert "hdr.tif: floating-point TIFF pixels range from" in result.stderr
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["float_x2.tif"]


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
    assert image_size(tmp_path / "a_x4_srflow_t0.png") == (84, 52)
    assert run_cli("upscale", str(source), "--width", "84", *model).exit_code == 0
    assert image_size(tmp_path / "a_w84_srflow_t0.png") == (84, 52)

    resampled = run_cli("upscale", str(source), "--scale", "3.5", *model, "--allow-resample", "--json")
    assert resampled.exit_code == 0, resampled.output
    assert json.loads(resampled.stdout)["size_out"] == [74, 46]
    assert run_cli("upscale", str(source), "--width", "100", *model, "--allow-resample").exit_code == 0
    assert image_size(tmp_path / "a_w100_srflow_t0.png") == (100, 62)

    import torch

    from flowsr_cli.engine.pipeline import pixels_to_tensor, tensor_to_pixels
    from flowsr_cli.engine.projection import project
    from flowsr_cli.engine.resize import resize
    from flowsr_cli.families.upscalers import UpscalerRequest, create_upscaler
    from flowsr_cli.io.sizing import Size

    native = torch.empty(1, 3, 52, 84)

    def sink(sample: int, rows: range, columns: range, tile: torch.Tensor) -> None:
        native[..., rows.start : rows.stop, columns.start : columns.stop] = tile

    lr = pixels_to_tensor(np.asarray(PILImage.open(source)))
    request = UpscalerRequest(str(srflow_file), device="cpu", temperature=0.0, consistency="off")
    create_upscaler(request).upscale(lr, Size(84, 52), sink)
    expected = tensor_to_pixels(project(resize(native, (46, 74)), lr), np.dtype(np.uint8))
    resampled_file = tmp_path / "a_x3.5_srflow_t0.png"
    written = np.asarray(PILImage.open(resampled_file)).astype(int)
    assert np.array_equal(written, expected), "the float ×4 output, resized, then projected onto the input"


# --------------------------------------------------------------------------- output names and settings


def bundled_model(name: str) -> Path:
    """The bundled model file ``name`` inside the package."""
    from importlib import resources

    return Path(str(resources.files("flowsr_cli").joinpath(f"weights/{name}.safetensors")))


def unloadable_copy(name: str, target: Path) -> Path:
    """A copy of a bundled model whose header (spec and metadata) is intact but whose weights cannot be loaded:
    one tensor is missing, which only loading the weights notices."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    source = bundled_model(name)
    with safe_open(source, framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(source)
    tensors.pop(sorted(tensors)[0])
    save_file(tensors, target, metadata=metadata)
    return target


def records(result: object) -> list[dict[str, object]]:
    return [json.loads(line) for line in result.stdout.splitlines()]  # type: ignore[attr-defined]


def test_the_readme_model_examples_write_one_output_each(run_cli: CliInvoker, tmp_path: Path) -> None:
    """README, Models: `--model linf -t 0`, then `--model linf -t 0.8 --seed 7`: two different outputs."""
    source = make_photo(tmp_path / "photo.png", (12, 9))
    assert run_cli("upscale", str(source), "-s", "4", "--model", "linf", "-t", "0").exit_code == 0
    second = run_cli("upscale", str(source), "-s", "4", "--model", "linf", "-t", "0.8", "--seed", "7", "--json")
    assert second.exit_code == 0, second.output
    assert records(second)[0]["status"] == "done"
    assert sorted(os.listdir(tmp_path)) == ["photo.png", "photo_x4_linf_t0.8_seed7.png", "photo_x4_linf_t0.png"]
    samples = run_cli("upscale", str(source), "-s", "4", "--model", "linf", "--samples", "2")
    assert samples.exit_code == 0, samples.output
    assert (tmp_path / "photo_x4_linf_s1.png").is_file()


def test_the_default_model_with_its_defaults_keeps_todays_names(run_cli: CliInvoker, tmp_path: Path) -> None:
    source = make_photo(tmp_path / "a.png")
    for args in ([], ["--model", "bicubic"], ["-t", "0.5", "--seed", "0"]):
        result = run_cli("upscale", str(source), "-s", "2", *args, "--overwrite", "--quiet")
        assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path)) == ["a.png", "a_x2.png"]


def test_a_model_file_is_named_by_its_stem(run_cli: CliInvoker, tmp_path: Path) -> None:
    model = tmp_path / "my model {v2}.safetensors"
    model.write_bytes(bundled_model("linf").read_bytes())
    source = make_photo(tmp_path / "a.png")
    result = run_cli("upscale", str(source), "-s", "2", "--model", str(model), "--prior", "gaussian")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "a_x2_my-model-v2_gaussian.png").is_file()


def test_the_mark_records_the_settings_that_change_pixels(run_cli: CliInvoker, tmp_path: Path) -> None:
    from flowsr_cli import __version__
    from flowsr_cli.hub.download import sha256_of
    from flowsr_cli.io.provenance import read_mark

    source = make_photo(tmp_path / "a.png", (8, 6))
    result = run_cli("upscale", str(source), "--width", "20", "--model", "linf", "-t", "0.3", "--samples", "2")
    assert result.exit_code == 0, result.output
    assert read_mark(tmp_path / "a_w20_linf_t0.3_s1.png") == {
        "flowsr": __version__,
        "model": "linf",
        "model_sha256": sha256_of(bundled_model("linf")),
        "size": "w20",
        "prior": None,
        "temperature": 0.3,
        "seed": 0,
        "consistency": "on",
        "default_temperature": 0.5,
        "sample": 1,
    }


def test_a_skip_says_why(run_cli: CliInvoker, tmp_path: Path) -> None:
    source = make_photo(tmp_path / "a.png")
    assert run_cli("upscale", str(source), "-s", "2").exit_code == 0
    again = run_cli("upscale", str(source), "-s", "2", "--json")
    assert again.exit_code == 0
    reason = f"{tmp_path / 'a_x2.png'} exists (written by flowsr with the same settings); --overwrite replaces it"
    assert records(again)[0]["reason"] == reason
    assert f"note: skipped: {reason}" in again.stderr
    assert "0 upscaled, 1 skipped, 0 failed" in again.stderr


def test_skips_of_one_kind_are_one_line(run_cli: CliInvoker, tmp_path: Path) -> None:
    for index in range(3):
        make_photo(tmp_path / f"p{index}.png", seed=index)
    assert run_cli("upscale", str(tmp_path), "-s", "2", "-o", str(tmp_path / "out")).exit_code == 0
    again = run_cli("upscale", str(tmp_path), "-s", "2", "-o", str(tmp_path / "out"))
    assert again.exit_code == 0
    notes = [line for line in again.stderr.splitlines() if line.startswith("note:")]
    assert notes == [
        "note: skipped 3: outputs exist (written by flowsr with the same settings); --overwrite replaces them"
    ]


@pytest.mark.parametrize("naming", [["--suffix", "_big"], ["-o", "{tmp}/big.png"]], ids=["suffix", "output"])
def test_an_output_of_other_settings_is_never_taken_as_done(
    run_cli: CliInvoker, tmp_path: Path, naming: list[str]
) -> None:
    """With names the user chose, flowsr compares the settings recorded in the existing output."""
    source = make_photo(tmp_path / "a.png")
    naming = [arg.replace("{tmp}", str(tmp_path)) for arg in naming]
    target = tmp_path / "a_big.png" if "--suffix" in naming else tmp_path / "big.png"
    assert run_cli("upscale", str(source), "-s", "2", *naming).exit_code == 0
    before = target.read_bytes()

    other = run_cli("upscale", str(source), "-s", "2", *naming, "--model", "linf", "-t", "0.8", "--json")
    assert other.exit_code == 1, other.output
    assert records(other)[0]["status"] == "failed" and target.read_bytes() == before
    errors = [line for line in other.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {source}: {target} exists, written by flowsr with other settings (model bicubic, not linf; "
        "temperature 0.5, not 0.8; consistency off, not on); --overwrite replaces it, or choose another name "
        "with --suffix or -o"
    ]
    replaced = run_cli("upscale", str(source), "-s", "2", *naming, "--model", "linf", "-t", "0.8", "--overwrite")
    assert replaced.exit_code == 0 and target.read_bytes() != before
    same = run_cli("upscale", str(source), "-s", "2", *naming, "--model", "linf", "-t", "0.8", "--json")
    assert same.exit_code == 0 and records(same)[0]["status"] == "skipped"


def test_a_changed_model_file_is_other_settings(run_cli: CliInvoker, tmp_path: Path) -> None:
    model = tmp_path / "mine.safetensors"
    model.write_bytes(bundled_model("linf").read_bytes())
    source = make_photo(tmp_path / "a.png")
    run = ["upscale", str(source), "-s", "2", "--model", str(model), "--suffix", "_mine"]
    assert run_cli(*run).exit_code == 0
    model.write_bytes(bundled_model("linf-lp").read_bytes())
    again = run_cli(*run)
    assert again.exit_code == 1 and "model file changed" in again.stderr


# --------------------------------------------------------------------------- sampling flags the model ignores


@pytest.mark.parametrize(
    ("model", "base", "args", "note"),
    [
        (
            None,
            [],
            ["-t", "0.8", "--seed", "7"],
            "linf-lp runs its learned prior, which is deterministic: --temperature and --seed are ignored "
            "(add --prior gaussian to sample its flow)",
        ),
        ("bicubic", [], ["--seed", "3"], "bicubic does not sample: --seed is ignored"),
        (
            "linf",
            ["-t", "0"],
            ["-t", "0", "--seed", "3"],
            "at temperature 0 the output is deterministic: --seed is ignored",
        ),
    ],
    ids=["learned-prior", "bicubic", "temperature-0"],
)
def test_sampling_flags_a_model_ignores_are_noted_once(
    run_cli: CliInvoker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    model: str | None,
    base: list[str],
    args: list[str],
    note: str,
) -> None:
    if model is None:
        monkeypatch.delenv("FLOWSR_MODEL")  # the default model, linf-lp
    source = make_photo(tmp_path / "a.png", (10, 8))
    chosen = ["--model", model] if model else []
    plain = run_cli("upscale", str(source), "-s", "2", *chosen, *base, "-o", "-")
    result = run_cli("upscale", str(source), "-s", "2", *chosen, *args, "-o", "-")
    assert plain.exit_code == 0 and result.exit_code == 0, result.stderr
    assert result.stderr.count(f"note: {note}") == 1, result.stderr
    assert "ignored" not in plain.stderr
    pixels = [np.asarray(PILImage.open(io.BytesIO(run.stdout_bytes))) for run in (plain, result)]
    assert np.array_equal(*pixels)


# --------------------------------------------------------------------------- usage errors before the model loads


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("out.xyz", "-o {tmp}/out.xyz: .xyz is not an image format flowsr writes"),
        ("out.gif", "-o {tmp}/out.gif: .gif is not an image format flowsr writes"),
        ("result", "-o {tmp}/result: no extension names the format"),
    ],
)
def test_an_output_file_without_a_known_extension_is_refused(
    run_cli: CliInvoker, tmp_path: Path, output: str, message: str
) -> None:
    source = make_photo(tmp_path / "a.png")
    result = run_cli("upscale", str(source), "-s", "2", "-o", str(tmp_path / output))
    assert result.exit_code == 2, result.output
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and error[0].startswith("error: " + message.format(tmp=tmp_path)), result.stderr
    assert "png, jpg, webp, tiff or bmp" in error[0] and "--format" in error[0]
    assert sorted(os.listdir(tmp_path)) == ["a.png"]
    chosen = run_cli("upscale", str(source), "-s", "2", "-o", str(tmp_path / output), "--format", "png")
    assert chosen.exit_code == 0, "an explicit --format may use any name"


@pytest.mark.parametrize(
    ("model", "args", "message"),
    [
        ("linf-lp", ["-s", "2", "--samples", "3"], "--samples 3: {model} gives one output per input"),
        ("srflow", ["-s", "3"], "{model} is a fixed ×4 model: use --scale 4"),
        ("linf", ["-s", "2", "--prior", "learned"], "model '{model}' has no learned prior; use --prior gaussian"),
        ("linf", ["-s", "2", "--device", "cuda"], "--device cuda: CUDA is not available"),
    ],
    ids=["samples", "fixed-scale", "prior", "device"],
)
def test_usage_errors_come_before_the_weights_are_read(
    run_cli: CliInvoker, tmp_path: Path, model: str, args: list[str], message: str
) -> None:
    """The model file's weights cannot be loaded: each error must come from a check made before loading."""
    import torch

    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    broken = unloadable_copy(model, tmp_path / f"{model}.safetensors")
    source = make_photo(tmp_path / "a.png")
    result = run_cli("upscale", str(source), *args, "--model", str(broken))
    assert result.exit_code == 2, result.output
    assert message.format(model=broken) in result.stderr, result.stderr
    assert "weights" not in result.stderr
    loading = run_cli("upscale", str(source), "-s", "4", "--model", str(broken))
    assert loading.exit_code == 2 and "weights do not fit the spec" in loading.stderr, "the copy cannot be loaded"


def test_bad_inputs_are_reported_before_the_model_loads(run_cli: CliInvoker, tmp_path: Path) -> None:
    broken = unloadable_copy("linf", tmp_path / "broken.safetensors")
    folder = tmp_path / "in"
    folder.mkdir()
    make_photo(folder / "a.png")
    (folder / "t.png").write_text("not an image\n")
    result = run_cli("upscale", str(folder), "-s", "2", "--model", str(broken))
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2, result.stderr
    assert "t.png: not an image" in errors[0] and "weights do not fit the spec" in errors[1]


def test_an_unknown_model_is_refused_before_torch_is_imported(tmp_path: Path, isolated_settings: Path) -> None:
    from tests.cli.test_cli_startup import PROBE

    source = make_photo(tmp_path / "a.png")
    result = subprocess.run(
        [sys.executable, "-c", PROBE, "upscale", str(source), "-s", "2", "--model", "nope"],
        capture_output=True,
        text=True,
    )
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: unknown model 'nope'"), result.stderr
    assert "CODE=2" in lines[-1] and "torch" not in lines[-1], result.stderr


def test_errors_do_not_start_with_a_blank_line(tmp_path: Path) -> None:
    source = make_photo(tmp_path / "a.png")
    for args in (["--model", "srflow", "-s", "3"], ["--model", "nope", "-s", "2"], ["--samples", "2", "-s", "2"]):
        result = flowsr_subprocess("upscale", str(source), *args)
        assert result.returncode == 2
        assert result.stderr.startswith(b"error: "), result.stderr


@pytest.mark.parametrize(
    ("where", "noted"), [("flag", False), ("config", False), ("auto", True)], ids=["flag", "config", "auto"]
)
def test_the_cpu_note_is_only_for_device_auto(
    run_cli: CliInvoker, tmp_path: Path, isolated_settings: Path, where: str, noted: bool
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    source = make_photo(tmp_path / "a.png")
    if where == "config":
        isolated_settings.write_text('device = "cpu"\n')
    flags = {"flag": ["--device", "cpu"], "config": [], "auto": ["--device", "auto"]}[where]
    result = run_cli("upscale", str(source), "-s", "2", *flags)
    assert result.exit_code == 0, result.output
    assert ("no CUDA device found" in result.stderr) == noted


# --------------------------------------------------------------------------- help


def option_help(help_text: str, option: str) -> str:
    """The help of one option in `--help`: its row and the rows its text wraps onto, as one line."""
    rows = help_text.splitlines()
    start = next(index for index, row in enumerate(rows) if row.startswith(f"│ {option} "))
    end = next(index for index in range(start + 1, len(rows)) if not rows[index].startswith("│   "))
    return " ".join(" ".join(row.strip("│ ") for row in rows[start:end]).split())


def test_help_shows_defaults_and_ends_with_examples(run_cli: CliInvoker) -> None:
    result = run_cli("upscale", "--help")
    assert result.exit_code == 0
    for option, default in (("--model", "linf-lp"), ("--format", "same"), ("--tile", "auto")):
        assert f"[default: {default}]" in option_help(result.stdout, option)
    temperature = option_help(result.stdout, "--temperature")
    assert "for --prior gaussian" in temperature and "ignores it" in temperature
    assert "[default: (the model's: 0.5, HCFlow 0.9 as in its paper)]" in temperature
    assert "Usage: flowsr upscale [OPTIONS] INPUT..." in result.stdout
    tail = result.stdout.rstrip().splitlines()[-5:]
    assert all(line.strip().startswith("flowsr upscale ") for line in tail), tail
