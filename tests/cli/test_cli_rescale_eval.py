"""`flowsr rescale eval` end to end: the real CLI on small crops of Set5 with tiny rescaling models saved as model
files: its scores against `rescale down` + `rescale up` through the CLI and against the published bicubic figure,
the bicubic and SR baselines, the JSON/CSV/Markdown files, skipped images and the usage errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from flowsr_cli.engine.resize import resize
from flowsr_cli.eval import metrics
from flowsr_cli.eval.rescale_evaluation import COLUMNS, PROTOCOL
from flowsr_cli.families.model_file import save_model
from flowsr_cli.io.reading import read_image
from tests.conftest import SHARED, CliInvoker
from tests.families.hcflow.test_rescaling import TINY, TINY_X2, tiny_rescaler

pytestmark = pytest.mark.usefixtures("one_thread")

SET5 = SHARED / "data/eval/Set5"
CROPS = {"baby": (48, 40), "bird": (56, 44), "head": (40, 48)}
"""Set5 crops (width, height): multiples of 4, so `rescale down` pads nothing and the protocol crops nothing."""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Tiny x2 and x4 rescaling models with every weight away from its start, by scale."""
    folder = tmp_path_factory.mktemp("models")
    paths = {2: folder / "tiny_x2.safetensors", 4: folder / "tiny_x4.safetensors"}
    save_model(tiny_rescaler(dict(TINY_X2)), paths[2])
    save_model(tiny_rescaler(dict(TINY)), paths[4])
    return paths


@pytest.fixture(scope="module")
def crops(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of three small crops of Set5 photos."""
    folder = tmp_path_factory.mktemp("crops") / "crops"
    folder.mkdir()
    for name, (width, height) in CROPS.items():
        with PILImage.open(SET5 / f"{name}.png") as image:
            image.crop((100, 100, 100 + width, 100 + height)).save(folder / f"{name}.png")
    return folder


def evaluate(run_cli: CliInvoker, folder: Path, out: Path, *args: str, code: int = 0) -> dict:
    """Run `flowsr rescale eval` on ``folder`` writing JSON, CSV and Markdown beside ``out``; its JSON."""
    files = [f"--{kind}={out.with_suffix(suffix)}" for kind, suffix in (("json", ".json"), ("csv", ".csv"))]
    result = run_cli("rescale", "eval", str(folder), *files, f"--markdown={out.with_suffix('.md')}", *args)
    assert result.exit_code == code, result.output
    return {"json": json.loads(out.with_suffix(".json").read_text()), "stdout": result.stdout, "stderr": result.stderr}


def y_channel(pixels: np.ndarray) -> np.ndarray:
    """BT.601 Y (MATLAB rgb2ycbcr / 255) of 8-bit RGB, in float64."""
    return (pixels.astype(np.float64) / 255 @ np.array([65.481, 128.553, 24.966]) + 16) / 255


def psnr_y(restored: np.ndarray, hr: np.ndarray, border: int) -> float:
    inner = (slice(border, -border), slice(border, -border))
    mse = np.mean((y_channel(restored)[inner] - y_channel(hr)[inner]) ** 2)
    return float(10 * np.log10(1 / mse))


def test_models_and_baselines_at_x2_and_x4_in_every_format(
    run_cli: CliInvoker, tmp_path: Path, models: dict[int, Path], crops: Path
) -> None:
    out = evaluate(
        run_cli, crops, tmp_path / "r", "-m", str(models[2]), "-m", str(models[4]), "--sr-model", "linf-lp",
        "--no-lpips", "--seed", "3",
    )  # fmt: skip
    document = out["json"]
    rows = document["results"]
    assert [(row["scale"], row["down"], row["up"]) for row in rows] == [
        (scale, down, up)
        for scale in (2, 4)
        for down, up in (("bicubic", "bicubic"), ("bicubic", "linf-lp"), (str(models[scale]),) * 2)
    ]
    assert all(row["dataset"] == "crops" and row["images"] == 3 and row["skipped"] == 0 for row in rows)
    assert all(row["lpips"] is None for row in rows)
    for row in rows:
        assert (row["lr_vs_bicubic_psnr"] is None) == (row["down"] == "bicubic"), row
        assert 0 < row["ssim"] <= 1 and row["psnr_y"] > 5
    bicubic = {row["scale"]: row for row in rows if row["up"] == "bicubic"}
    sr = {row["scale"]: row for row in rows if row["up"] == "linf-lp"}
    assert sr[2]["psnr_y"] > bicubic[2]["psnr_y"] > bicubic[4]["psnr_y"]
    assert set(PROTOCOL) < set(document["protocol"]) and document["skipped"] == []
    assert document["protocol"]["lpips"] == "not computed (--no-lpips)"
    assert document["protocol"]["seed"] == 3 and document["protocol"]["scales"] == [2, 4]
    assert document["protocol"]["sr_model"] == {"name": "linf-lp", "consistency": True}
    assert {name: record["scale"] for name, record in document["protocol"]["models"].items()} == {
        str(models[2]): 2,
        str(models[4]): 4,
    }

    with (tmp_path / "r.csv").open() as handle:
        lines = list(csv.DictReader(handle))
    assert tuple(lines[0]) == COLUMNS and len(lines) == len(rows)
    assert [line["lr_vs_bicubic_psnr"] for line in lines][:2] == ["", ""]
    assert float(lines[2]["psnr_y"]) == pytest.approx(rows[2]["psnr_y"], abs=1e-9)
    markdown = (tmp_path / "r.md").read_text().splitlines()
    assert len(markdown) == len(rows) + 2 and "| LR vs bicubic |" in markdown[0]
    assert markdown[2].startswith("| crops | ×2 | bicubic & bicubic | 3 | 0 |") and "| – | – |" in markdown[2]
    assert "| crops | ×4 | tiny_x4 | 3 | 0 |" in markdown[-1]

    assert "bicubic & linf-lp" in out["stdout"] and "tiny_x2" in out["stdout"]
    assert f"note: {models[2]} is a ×2 rescaling model: skipped at ×4" in " ".join(out["stderr"].split())
    assert f"note: {models[4]} is a ×4 rescaling model: skipped at ×2" in " ".join(out["stderr"].split())


def test_scores_equal_rescale_down_then_up_through_the_cli(
    run_cli: CliInvoker, tmp_path: Path, models: dict[int, Path], crops: Path
) -> None:
    """The rescaling rows' PSNR-Y and LR PSNR, recomputed in numpy from the files `rescale down` and `rescale up`
    write; the bicubic row's from the MATLAB bicubic both ways."""
    dataset = tmp_path / "one"
    dataset.mkdir()
    shutil.copy(crops / "bird.png", dataset / "bird.png")
    args = ("-m", str(models[2]), "-m", str(models[4]), "--baseline", "bicubic", "--no-lpips", "--seed", "7")
    rows = evaluate(run_cli, dataset, tmp_path / "r", *args)["json"]["results"]
    by_method = {(row["scale"], row["up"]): row for row in rows}
    hr = read_image(dataset / "bird.png").pixels
    for scale, model in models.items():
        work = tmp_path / f"x{scale}"
        work.mkdir()
        source = shutil.copy(dataset / "bird.png", work / "bird.png")
        down = run_cli("rescale", "down", str(source), "-s", str(scale), "--model", str(model), "--seed", "7")
        assert down.exit_code == 0, down.output
        up = run_cli("rescale", "up", str(work / f"bird_lr{scale}.png"))
        assert up.exit_code == 0, up.output
        restored = read_image(work / f"bird_lr{scale}_up.png").pixels
        row = by_method[(scale, str(model))]
        assert row["psnr_y"] == pytest.approx(psnr_y(restored, hr, scale), abs=1e-6)

        lr = read_image(work / f"bird_lr{scale}.png").pixels.astype(np.float64) / 255
        _, bicubic_lr = metrics.make_lr(torch.from_numpy(hr.copy()).permute(2, 0, 1)[None].float() / 255, scale)
        mse = np.mean((lr - bicubic_lr[0].permute(1, 2, 0).double().numpy()) ** 2)
        assert row["lr_vs_bicubic_psnr"] == pytest.approx(10 * np.log10(1 / mse), abs=1e-6)

        enlarged = resize(bicubic_lr, hr.shape[:2]).clamp(0, 1)
        bicubic_up = (enlarged[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        assert by_method[(scale, "bicubic")]["psnr_y"] == pytest.approx(psnr_y(bicubic_up, hr, scale), abs=1e-6)


def test_bicubic_on_set5_matches_the_published_figure_with_lpips(
    run_cli: CliInvoker, tmp_path: Path, models: dict[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bicubic down and up at x4 on Set5: 28.42 dB in DESIGN §10's table; LPIPS from the shared AlexNet."""
    monkeypatch.setenv("FLOWSR_BACKBONE_DIR", str(SHARED / "weights"))
    rows = evaluate(run_cli, SET5, tmp_path / "r", "-m", str(models[4]), "-s", "4", "--baseline", "bicubic")["json"]
    bicubic, model = rows["results"]
    assert bicubic["up"] == "bicubic" and bicubic["images"] == 5
    assert bicubic["psnr_y"] == pytest.approx(28.42, abs=0.05)
    assert 0 < bicubic["lpips"] < model["lpips"] and rows["protocol"]["lpips"] == PROTOCOL["lpips"]


def test_an_unreadable_image_is_one_error_and_exit_1(
    run_cli: CliInvoker, tmp_path: Path, models: dict[int, Path], crops: Path
) -> None:
    dataset = tmp_path / "set"
    shutil.copytree(crops, dataset)
    (dataset / "broken.png").write_bytes(b"not an image")
    out = evaluate(run_cli, dataset, tmp_path / "r", "-m", str(models[2]), "-s", "2", "--baseline", "none",
                   "--no-lpips", code=1)  # fmt: skip
    errors = [line for line in out["stderr"].splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken.png: not an image" in errors[0]
    assert "1 of 4 images skipped" in out["stderr"]
    (row,) = out["json"]["results"]
    assert row["images"] == 3 and row["skipped"] == 1 and row["up"] == str(models[2])
    (skip,) = out["json"]["skipped"]
    assert skip["file"].endswith("broken.png") and skip["scales"] is None


def test_a_model_of_none_of_the_scales_is_a_usage_error(
    run_cli: CliInvoker, models: dict[int, Path], crops: Path
) -> None:
    result = run_cli("rescale", "eval", str(crops), "-m", str(models[4]), "-s", "2", "--no-lpips")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: --model {models[4]}: it rescales by 4, not by --scale 2"


def test_without_a_model_it_scores_the_bundled_model_of_each_scale_above_bicubic(
    run_cli: CliInvoker, tmp_path: Path, crops: Path
) -> None:
    rows = evaluate(run_cli, crops, tmp_path / "r", "--no-lpips", "--baseline", "bicubic")["json"]["results"]
    models = {row["scale"]: row for row in rows if row["down"] != "bicubic"}
    bicubic = {row["scale"]: row for row in rows if row["down"] == "bicubic"}
    assert {scale: row["down"] for scale, row in models.items()} == {2: "hcflow-rescale-x2", 4: "hcflow-rescale-x4"}
    for scale in (2, 4):
        assert models[scale]["psnr_y"] > bicubic[scale]["psnr_y"] + 1, (models[scale], bicubic[scale])
        assert models[scale]["lr_vs_bicubic_psnr"] > 30
