"""`flowsr rescale down` and `flowsr rescale up` end to end: the real CLI on real image files with tiny rescaling
models saved as model files: the round trip and its chunk, input kinds, refusals and --force, and `upscale`'s batch
contract (skip-existing, --json, exit codes, no partial files, stdin/stdout)."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from PIL import ImageCms

from flowsr_cli.families.model_file import save_model
from flowsr_cli.families.registry import make
from flowsr_cli.io.image import Image
from flowsr_cli.io.provenance import MARK_KEY, read_mark
from flowsr_cli.io.reading import read_image
from flowsr_cli.io.rescale_mark import lossy_format, lr_sha256
from flowsr_cli.io.writing import encode_image
from tests.conftest import CliInvoker
from tests.families.hcflow.original_rescaling import tamed_original_rescaling
from tests.families.hcflow.test_import_rescaling import FILE, ORIGINAL
from tests.families.hcflow.test_rescaling import TINY, TINY_X2, tiny_rescaler

pytestmark = pytest.mark.usefixtures("one_thread")

REFUSED = "--force restores it anyway"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny x4 models: ``untrained`` (its LR is the box mean, its heat-0 inverse the nearest upsampling), ``tamed``
    and ``other`` (random weights away from the start), and an untrained ``x2``."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    built = {
        "untrained": make({"name": "hcflow-rescale", "args": TINY}),
        "x2": make({"name": "hcflow-rescale", "args": TINY_X2}),
        "tamed": tiny_rescaler(dict(TINY)),
        "other": tiny_rescaler(dict(TINY), seed=5),
    }
    for name, model in built.items():
        save_model(model, folder / f"{name}.safetensors")
    return {name: folder / f"{name}.safetensors" for name in built}


def make_photo(path: Path, size: tuple[int, int] = (50, 37), mode: str = "RGB", seed: int = 0, **save: object) -> Path:
    """A random image file of ``size`` (width, height); ``mode`` L, RGB, RGBA or RGB16 (a 16-bit PNG)."""
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4, "RGB16": 3}[mode]
    if mode == "RGB16":
        path.write_bytes(imagecodecs.png_encode(rng.integers(0, 65536, (size[1], size[0], 3), dtype=np.uint16)))
        return path
    pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    PILImage.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path, **save)
    return path


def pixels(path: Path) -> np.ndarray:
    return read_image(path).pixels


def one_error(result: object, *parts: str) -> str:
    """The run's single error line, which holds every part."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]  # type: ignore[attr-defined]
    assert len(lines) == 1, result.stderr  # type: ignore[attr-defined]
    assert all(part in lines[0] for part in parts), lines[0]
    return lines[0]


def down(run_cli: CliInvoker, source: Path, model: Path, *args: str) -> Path:
    result = run_cli("rescale", "down", str(source), "-s", "4", "--model", str(model), *args)
    assert result.exit_code == 0, result.output
    return source.with_name(f"{source.stem}_lr4.png")


def box_mean(hr: np.ndarray, scale: int, padding: tuple[int, int]) -> np.ndarray:
    padded = np.pad(hr.astype(float), ((0, padding[1]), (0, padding[0]), (0, 0)), mode="reflect")
    height, width, channels = padded.shape
    return padded.reshape(height // scale, scale, width // scale, scale, channels).mean(axis=(1, 3))


def nearest(lr: np.ndarray, scale: int, size: tuple[int, int]) -> np.ndarray:
    return np.repeat(np.repeat(lr, scale, axis=0), scale, axis=1)[: size[1], : size[0]]


def test_down_then_up_round_trips_an_odd_size_photo(run_cli: CliInvoker, tmp_path: Path, models: dict) -> None:
    """50 x 37 at x4: padded by 2 columns and 3 rows (mirrored); the untrained model's LR is the block mean, and at
    heat 0 its inverse is the LR repeated, cropped back to 50 x 37."""
    source = make_photo(tmp_path / "photo.png")
    result = run_cli("rescale", "down", str(source), "-s", "4", "--model", str(models["untrained"]))
    assert result.exit_code == 0 and "1 downscaled, 0 skipped, 0 failed" in result.stderr
    lr_path = tmp_path / "photo_lr4.png"
    lr = pixels(lr_path)
    assert lr.shape == (10, 13, 3) and lr.dtype == np.uint8
    assert np.abs(lr - box_mean(pixels(source), 4, (2, 3))).max() <= 0.5 + 1e-3
    mark = read_mark(lr_path)
    assert mark == {
        MARK_KEY: mark[MARK_KEY],
        "rescale": "down",
        "model": str(models["untrained"]),
        "model_sha256": hashlib.sha256(models["untrained"].read_bytes()).hexdigest(),
        "scale": 4,
        "seed": 0,
        "temperature": 1.0,
        "size": [50, 37],
        "padding": [2, 3],
        "grey": False,
        "bit_depth": 8,
        "lr_sha256": lr_sha256(lr),
    }
    with PILImage.open(lr_path) as image:  # one text chunk: the mark
        assert list(image.text) == [MARK_KEY]
    result = run_cli("rescale", "up", str(lr_path), "-t", "0")
    assert result.exit_code == 0 and "1 restored, 0 skipped, 0 failed" in result.stderr
    restored = tmp_path / "photo_lr4_up.png"
    assert np.array_equal(pixels(restored), nearest(lr, 4, (50, 37)))
    up_mark = read_mark(restored)
    assert up_mark is not None and up_mark["rescale"] == "up" and up_mark["temperature"] == 0.0
    assert up_mark["lr_sha256"] == mark["lr_sha256"] and up_mark["forced"] is False


@pytest.mark.parametrize(
    ("name", "mode", "lr_channels", "restored"),
    [
        ("photo.jpg", "RGB", 3, ("RGB", np.uint8)),
        ("grey.png", "L", 3, ("L", np.uint8)),
        ("deep.png", "RGB16", 3, ("RGB", np.uint16)),
        ("cutout.png", "RGBA", 4, ("RGBA", np.uint8)),
    ],
)
def test_jpeg_grey_16_bit_and_alpha_inputs(
    run_cli: CliInvoker,
    tmp_path: Path,
    models: dict,
    name: str,
    mode: str,
    lr_channels: int,
    restored: tuple[str, type],
) -> None:
    """The LR is always 8-bit RGB (RGBA with alpha, averaged down); `up` gives back the original's channels and
    depth, its colour the LR repeated (untrained model, heat 0), its alpha the bicubic of the LR's."""
    source = make_photo(tmp_path / name, (21, 14), mode)
    result = run_cli("rescale", "down", str(source), "-s", "4", "--model", str(models["untrained"]))
    assert result.exit_code == 0, result.output
    assert ("16-bit image: its LR is 8-bit" in result.stderr) == (mode == "RGB16")
    lr_path = tmp_path / f"{source.stem}_lr4.png"
    lr = pixels(lr_path)
    assert lr.shape == (4, 6, lr_channels) and lr.dtype == np.uint8
    assert read_mark(lr_path)["grey"] == (mode == "L")  # type: ignore[index]
    if mode == "RGBA":
        assert np.abs(lr[..., 3] - box_mean(pixels(source)[..., 3:], 4, (3, 2))[..., 0]).max() <= 0.5 + 1e-3
    assert run_cli("rescale", "up", str(lr_path), "-t", "0").exit_code == 0
    out = read_image(tmp_path / f"{source.stem}_lr4_up.png")
    assert (out.mode, out.pixels.dtype, out.width, out.height) == (*restored, 21, 14)
    colour = out.pixels[..., : 1 if mode == "L" else 3].astype(float) / np.iinfo(out.pixels.dtype).max * 255
    assert np.abs(colour - nearest(lr[..., : 1 if mode == "L" else 3].astype(float), 4, (21, 14))).max() < 0.01
    if mode == "RGBA":
        assert np.abs(out.pixels[..., 3].astype(float) - nearest(lr[..., 3:], 4, (21, 14))[..., 0]).mean() < 40


def test_exif_and_icc_profile_are_kept_both_ways(run_cli: CliInvoker, tmp_path: Path, models: dict) -> None:
    exif = PILImage.Exif()
    exif[0x010F] = "CameraMaker"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = make_photo(tmp_path / "cam.jpg", (16, 12), exif=exif.tobytes(), icc_profile=icc)
    lr_path = down(run_cli, source, models["untrained"])
    assert run_cli("rescale", "up", str(lr_path)).exit_code == 0
    for path in (lr_path, tmp_path / "cam_lr4_up.png"):
        with PILImage.open(path) as image:
            assert image.info.get("icc_profile") == icc and image.getexif().get(0x010F) == "CameraMaker"


def _resave(lr_path: Path, target: Path, change: np.ndarray | None = None, fmt: str = "png", **entries: object) -> Path:
    """The LR's pixels (or ``change``) saved again in ``fmt`` (lossy for WebP) with its chunk (``entries``
    replaced)."""
    mark = {key: value for key, value in (read_mark(lr_path) or {}).items() if key != MARK_KEY}
    mark.update(entries)
    image = Image(pixels(lr_path) if change is None else change, "png")
    target.write_bytes(encode_image(image, fmt, settings=mark)[0])
    return target


def _edited(lr_path: Path) -> Path:
    changed = pixels(lr_path).copy()
    changed[0, 0, 0] ^= 1
    return _resave(lr_path, lr_path.with_name("edited.png"), changed)


def _resized(lr_path: Path) -> Path:
    return _resave(lr_path, lr_path.with_name("resized.png"), pixels(lr_path)[:, :-1])


def _unmarked(lr_path: Path) -> Path:
    target = lr_path.with_name("stripped.png")
    PILImage.fromarray(pixels(lr_path)).save(target)
    return target


def _damaged(lr_path: Path) -> Path:
    return _resave(lr_path, lr_path.with_name("damaged.png"), padding=[9, 9])


def _lossy_webp(lr_path: Path) -> Path:
    target = _resave(lr_path, lr_path.with_name("lossy.webp"), fmt="webp")
    assert lossy_format(target) == "lossy WebP"
    return target


CASES = {
    "no-chunk": (_unmarked, "no flowsr rescale chunk: not an LR that `flowsr rescale down` wrote", "as if it were"),
    "edited": (_edited, "its pixels changed since `flowsr rescale down` wrote it", "expect no better than bicubic"),
    "resized": (_resized, "its pixels changed since", "expect no better than bicubic"),
    "damaged": (_damaged, "chunk is damaged (padding [9, 9] is not two integers from 0 to 3)", "uncropped"),
    "lossy-webp": (_lossy_webp, "it is a lossy WebP: lossy encoding changed the LR's pixels", "worse than plain"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_an_lr_that_cannot_come_back_is_refused_in_one_line_and_force_restores_it(
    run_cli: CliInvoker, tmp_path: Path, models: dict, case: str
) -> None:
    make_bad, refusal, warning = CASES[case]
    bad = make_bad(down(run_cli, make_photo(tmp_path / "photo.png"), models["untrained"]))
    result = run_cli("rescale", "up", str(bad))
    assert result.exit_code == 1
    one_error(result, str(bad), refusal, REFUSED)
    assert not list(tmp_path.glob(f"{bad.stem}_up*")) and not list(tmp_path.glob(".*"))
    forced = run_cli("rescale", "up", str(bad), "--force", "--model", str(models["untrained"]), "-f", "png")
    assert forced.exit_code == 0, forced.output
    assert f"warning: {bad}: " in forced.stderr and warning in forced.stderr
    out = read_image(tmp_path / f"{bad.stem}_up.png")
    expected = {"no-chunk": (52, 40), "damaged": (52, 40), "resized": (48, 40)}.get(case, (50, 37))  # uncropped
    assert (out.width, out.height) == expected and read_mark(tmp_path / f"{bad.stem}_up.png")["forced"] is True  # type: ignore[index]


def test_force_without_a_chunk_needs_a_model(run_cli: CliInvoker, tmp_path: Path) -> None:
    plain = make_photo(tmp_path / "plain.png", (8, 8))
    one_error(run_cli("rescale", "up", str(plain), "--force"), "--force needs --model NAME|FILE")


def test_another_model_is_refused_and_force_restores_with_it(run_cli: CliInvoker, tmp_path: Path, models: dict) -> None:
    lr_path = down(run_cli, make_photo(tmp_path / "photo.png"), models["tamed"])
    result = run_cli("rescale", "up", str(lr_path), "--model", str(models["other"]))
    assert result.exit_code == 1
    one_error(result, "made at x4 by", "only the model that made an LR can restore it", REFUSED)
    forced = run_cli("rescale", "up", str(lr_path), "--model", str(models["other"]), "--force")
    assert forced.exit_code == 0 and "another model's inverse brings back wrong details" in forced.stderr
    changed = tmp_path / "changed.safetensors"  # the recorded model file itself replaced
    changed.write_bytes(models["other"].read_bytes())
    lr_path = down(run_cli, tmp_path / "photo.png", changed, "--overwrite")
    changed.write_bytes(models["tamed"].read_bytes())
    one_error(run_cli("rescale", "up", str(lr_path), "--overwrite"), "only the model that made an LR", REFUSED)


def test_a_jpeg_lr_needs_allow_lossy_and_is_then_refused_by_up(
    run_cli: CliInvoker, tmp_path: Path, models: dict
) -> None:
    source = make_photo(tmp_path / "photo.png")
    args = (
        "rescale",
        "down",
        str(source),
        "-s",
        "4",
        "--model",
        str(models["untrained"]),
        "-o",
        str(tmp_path / "lr.jpg"),
    )
    refused = run_cli(*args)
    assert refused.exit_code == 2 and "--allow-lossy" in one_error(refused, "a JPEG LR loses")
    assert not (tmp_path / "lr.jpg").exists()
    allowed = run_cli(*args, "--allow-lossy")
    assert allowed.exit_code == 0 and "one JPEG pass at quality 90 puts HCFlow x4 below plain bicubic" in allowed.stderr
    result = run_cli("rescale", "up", str(tmp_path / "lr.jpg"))
    assert result.exit_code == 1
    one_error(result, "it is a JPEG: lossy encoding changed the LR's pixels", REFUSED)


@pytest.mark.parametrize(("fmt", "suffix"), [("webp", "webp"), ("tiff", "tif")])
def test_a_webp_or_tiff_lr_is_lossless(
    run_cli: CliInvoker, tmp_path: Path, models: dict, fmt: str, suffix: str
) -> None:
    source = make_photo(tmp_path / "photo.png", mode="RGBA")
    result = run_cli("rescale", "down", str(source), "-s", "4", "--model", str(models["tamed"]), "-f", fmt)
    assert result.exit_code == 0, result.output
    lr_path = tmp_path / f"photo_lr4.{suffix}"
    assert lossy_format(lr_path) is None and read_mark(lr_path)["lr_sha256"] == lr_sha256(pixels(lr_path)[..., :3])  # type: ignore[index]
    assert run_cli("rescale", "up", str(lr_path), "-f", "png").exit_code == 0
    assert read_image(tmp_path / "photo_lr4_up.png").mode == "RGBA"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["-s", "4", "--model", "nosuch"], 2, "unknown model 'nosuch'; image rescaling models: hcflow-rescale-x2"),
        (["-s", "3", "--model", "x2"], 2, "--scale: invalid value '3'; allowed: 2 or 4"),
        (["-s", "4", "--model", "x2"], 2, "it rescales by 2, not by --scale 4"),
        (["-s", "4", "--model", "srflow"], 2, "'srflow' is a srflow, not an image rescaling model"),
        (["-s", "4", "--model", "nowhere.safetensors"], 2, "model file nowhere.safetensors: not found"),
        (["-s", "4", "--model", "untrained", "-o", "{tmp}/lr.bmp"], 2, "rescale down writes PNG, WebP or TIFF LRs"),
    ],
)
def test_down_usage_errors_exit_2_in_one_line_and_write_nothing(
    run_cli: CliInvoker, tmp_path: Path, models: dict, args: list[str], code: int, message: str
) -> None:
    source = make_photo(tmp_path / "a.png", (8, 8))
    named = [str(models[arg]) if arg in models else arg.replace("{tmp}", str(tmp_path)) for arg in args]
    result = run_cli("rescale", "down", str(source), *named)
    assert result.exit_code == code
    one_error(result, message)
    assert sorted(os.listdir(tmp_path)) == ["a.png"]


def test_folders_skip_existing_json_and_exit_codes(run_cli: CliInvoker, tmp_path: Path, models: dict) -> None:
    """A corrupt file fails (exit 1) while the others are written; a rerun skips them; `up` on the same folder
    reads only the LRs (the originals and the corrupt file are skipped as not LRs)."""
    folder = tmp_path / "in"
    folder.mkdir()
    make_photo(folder / "a.png", seed=1)
    make_photo(folder / "b.jpg", (9, 7), seed=2)
    (folder / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    args = ("rescale", "down", str(folder), "-s", "4", "--model", str(models["untrained"]), "--json")
    result = run_cli(*args)
    assert result.exit_code == 1 and "2 downscaled, 0 skipped, 1 failed" in result.stderr
    records = {Path(record["input"]).name: record for record in map(json.loads, result.stdout.splitlines())}
    assert {name: record["status"] for name, record in records.items()} == {
        "a.png": "done",
        "b.jpg": "done",
        "c.png": "failed",
    }
    assert records["a.png"]["size_out"] == [13, 10] and records["b.jpg"]["size_out"] == [3, 2]
    written = (folder / "a_lr4.png").stat().st_ino
    rerun = run_cli(*args)
    statuses = {Path(record["input"]).name: record["status"] for record in map(json.loads, rerun.stdout.splitlines())}
    assert statuses == {
        "a.png": "skipped",
        "b.jpg": "skipped",
        "c.png": "failed",
        "a_lr4.png": "skipped",
        "b_lr4.png": "skipped",
    }
    assert rerun.exit_code == 1 and (folder / "a_lr4.png").stat().st_ino == written
    other_seed = run_cli(
        "rescale", "down", str(folder / "a.png"), "-s", "4", "--model", str(models["untrained"]), "--seed", "1"
    )
    one_error(other_seed, "a_lr4.png exists, written by flowsr with other settings (seed 0, not 1)")
    up = run_cli("rescale", "up", str(folder), "--json", "-t", "0")
    assert up.exit_code == 0, up.output
    statuses = {Path(record["input"]).name: record["status"] for record in map(json.loads, up.stdout.splitlines())}
    assert statuses == {
        "a.png": "skipped",
        "b.jpg": "skipped",
        "c.png": "skipped",
        "a_lr4.png": "done",
        "b_lr4.png": "done",
    }
    assert "2 restored, 3 skipped, 0 failed" in up.stderr and "have no flowsr rescale chunk" in up.stderr
    assert sorted(os.listdir(folder)) == [
        "a.png",
        "a_lr4.png",
        "a_lr4_up.png",
        "b.jpg",
        "b_lr4.png",
        "b_lr4_up.png",
        "c.png",
    ]
    assert (
        json.loads(run_cli("rescale", "up", str(folder / "a_lr4.png"), "--json", "-t", "0").stdout)["status"]
        == "skipped"
    )


def test_a_failed_image_leaves_no_file(run_cli: CliInvoker, tmp_path: Path, models: dict) -> None:
    lr_path = down(run_cli, make_photo(tmp_path / "photo.png"), models["untrained"])
    result = run_cli("rescale", "up", str(lr_path), env={"FLOWSR_MAX_OUTPUT_PIXELS": "1000"})
    assert result.exit_code == 1
    one_error(result, "the restored image would be 50×37 = 1,850 pixels, above the max_output_pixels limit of 1,000")
    assert sorted(os.listdir(tmp_path)) == ["photo.png", "photo_lr4.png"]


def test_the_lr_does_not_depend_on_tiles_and_the_restored_image_barely(
    run_cli: CliInvoker, tmp_path: Path, models: dict
) -> None:
    """A 300 x 212 photo (LR 75 x 53): the LR's bytes are the same for tile settings 64, 256 and 0; `up` with 16-pixel
    tiles is within one level of the untiled at heat 1."""
    source = make_photo(tmp_path / "photo.png", (300, 212))
    lrs = []
    for tile in ("64", "256", "0"):
        output = tmp_path / f"lr_{tile}.png"
        result = run_cli(
            "rescale",
            "down",
            str(source),
            "-s",
            "4",
            "--model",
            str(models["tamed"]),
            "-o",
            str(output),
            env={"FLOWSR_TILE": tile},
        )
        assert result.exit_code == 0, result.output
        lrs.append(pixels(output))
    assert all(np.array_equal(lr, lrs[0]) for lr in lrs) and lrs[0].shape == (53, 75, 3)
    for tile in ("16", "0"):
        assert (
            run_cli(
                "rescale", "up", str(tmp_path / "lr_0.png"), "--tile", tile, "-o", str(tmp_path / f"up_{tile}.png")
            ).exit_code
            == 0
        )
    difference = np.abs(pixels(tmp_path / "up_16.png").astype(int) - pixels(tmp_path / "up_0.png").astype(int))
    assert difference.max() <= 1 and difference.mean() < 0.01


def test_stdin_to_stdout_both_ways(run_cli: CliInvoker, tmp_path: Path, models: dict) -> None:
    data = make_photo(tmp_path / "photo.png").read_bytes()
    lr = run_cli("rescale", "down", "-", "-s", "4", "--model", str(models["untrained"]), "-o", "-", input=data)
    assert lr.exit_code == 0, lr.stderr
    assert PILImage.open(io.BytesIO(lr.stdout_bytes)).size == (13, 10)
    restored = run_cli("rescale", "up", "-", "-o", "-", "-t", "0", input=lr.stdout_bytes)
    assert restored.exit_code == 0, restored.stderr
    assert PILImage.open(io.BytesIO(restored.stdout_bytes)).size == (50, 37)


def test_upscale_and_models_import_point_rescalers_to_rescale(
    run_cli: CliInvoker, tmp_path: Path, models: dict
) -> None:
    make_photo(tmp_path / "photo.png", (8, 8))
    result = run_cli("upscale", str(tmp_path / "photo.png"), "-s", "4", "--model", str(models["untrained"]))
    assert result.exit_code == 2
    one_error(
        result,
        "which `upscale` cannot run: it is an image rescaling model",
        "use `flowsr rescale down` and `flowsr rescale up`",
    )
    torch.save(tamed_original_rescaling(**ORIGINAL, seed=1).state_dict(), tmp_path / FILE)
    imported = run_cli("models", "import", str(tmp_path / FILE), "--name", "mine")
    assert imported.exit_code == 0, imported.output
    assert (
        "use it with: flowsr rescale down IMAGE.png --scale 4 --model mine, then flowsr rescale up IMAGE_lr4.png"
        in imported.stdout
    )
    assert "flowsr upscale" not in imported.stdout
    lr = down(run_cli, tmp_path / "photo.png", Path("mine"))
    assert read_mark(lr)["model"] == "mine" and run_cli("rescale", "up", str(lr)).exit_code == 0  # type: ignore[index]
    unknown_upscaler = run_cli("upscale", str(tmp_path / "photo.png"), "-s", "4", "--model", "nope")
    assert "available: bicubic, linf," in unknown_upscaler.stderr and "mine" not in unknown_upscaler.stderr
    unknown_rescaler = run_cli(
        "rescale", "down", str(tmp_path / "photo.png"), "-o", str(tmp_path / "other.png"), "-s", "4", "--model", "nope"
    )
    assert "image rescaling models: hcflow-rescale-x2, hcflow-rescale-x4, mine, or a path" in unknown_rescaler.stderr
