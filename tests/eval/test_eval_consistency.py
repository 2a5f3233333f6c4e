"""`flowsr eval --consistency`, and the grid and colour-shift columns, with the bundled models on small crops."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from PIL import Image as PILImage

from flowsr_cli.cli.eval_cmd import _at_temperature
from flowsr_cli.engine.consistent import ConsistentUpscaler
from flowsr_cli.engine.degrid import remove_grid
from flowsr_cli.engine.projection import DEFAULT_ITERATIONS, project
from flowsr_cli.eval import report
from flowsr_cli.eval.evaluation import DEFAULT_GRID_PERIOD, Setting, grid_period, super_resolve
from flowsr_cli.eval.metrics import make_lr
from flowsr_cli.families.model_file import save_model
from flowsr_cli.families.upscalers import UpscalerRequest, create_upscaler
from flowsr_cli.io.sizing import Size
from tests.conftest import SHARED, CliInvoker
from tests.families.linf.test_linf import tiny_linf

pytestmark = pytest.mark.usefixtures("one_thread")

SET5 = SHARED / "data/eval/Set5"
WEIGHTS = Path(__file__).resolve().parents[2] / "flowsr_cli/weights"


@pytest.fixture
def crops(tmp_path: Path) -> Path:
    """Two 72×72 crops of Set5 images in a folder."""
    folder = tmp_path / "crops"
    folder.mkdir()
    for name in ("baby", "head"):
        with PILImage.open(SET5 / f"{name}.png") as image:
            image.crop((60, 60, 132, 132)).save(folder / f"{name}.png")
    return folder


def evaluate(run_cli: CliInvoker, folder: Path, out: Path, *args: str, env: dict[str, str] | None = None) -> dict:
    """Run `flowsr eval` on ``folder`` at x2 and x3 without LPIPS, writing JSON, CSV and Markdown beside ``out``."""
    files = [
        f"--{kind}={out.with_suffix(suffix)}"
        for kind, suffix in (("json", ".json"), ("csv", ".csv"), ("markdown", ".md"))
    ]
    result = run_cli("eval", str(folder), "--model", "linf-lp", "--scales", "2,3", "--no-lpips", *files, *args, env=env)
    assert result.exit_code == 0, result.output
    return json.loads(out.with_suffix(".json").read_text())


def by_setting(document: dict) -> dict[tuple[str, float], dict]:
    return {(row["model"], row["scale"]): row for row in document["results"]}


def markdown_rows(path: Path) -> list[dict[str, str]]:
    header, _, *lines = path.read_text().splitlines()
    names = [cell.strip() for cell in header.strip("|").split("|")]
    return [dict(zip(names, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines]


def test_consistency_on_and_off_are_recorded_and_on_matches_the_input(
    run_cli: CliInvoker, crops: Path, tmp_path: Path
) -> None:
    on = evaluate(run_cli, crops, tmp_path / "on", "--consistency", "on")
    off = evaluate(run_cli, crops, tmp_path / "off", env={"FLOWSR_CONSISTENCY": "off"})
    rows_on, rows_off = by_setting(on), by_setting(off)
    assert list(rows_on) == list(rows_off) == [("bicubic", 2.0), ("linf-lp", 2.0), ("bicubic", 3.0), ("linf-lp", 3.0)]
    assert all(row["consistency"] for row in on["results"]) and not any(row["consistency"] for row in off["results"])
    for scale in (2.0, 3.0):
        projected, raw = rows_on[("linf-lp", scale)], rows_off[("linf-lp", scale)]
        assert projected["lr_psnr"] > raw["lr_psnr"] + 10 and projected["lr_psnr"] > 50, (projected, raw)
        assert projected["colour_shift"] < 0.5 < raw["colour_shift"], (projected, raw)
        assert projected["grid"] > 0 and raw["grid"] > 0
        assert rows_off[("bicubic", scale)]["grid"] == 0.0  # the enlargement itself: no detail
        assert rows_off[("bicubic", scale)]["colour_shift"] < 0.5
        assert rows_on[("bicubic", scale)]["lr_psnr"] > rows_off[("bicubic", scale)]["lr_psnr"] + 10

    models = on["protocol"]["models"]
    assert models["linf-lp"] == {"consistency": True, "projection_iterations": DEFAULT_ITERATIONS, "grid_period": 3}
    projected_bicubic = {"consistency": True, "projection_iterations": DEFAULT_ITERATIONS}
    assert models["bicubic"] == {**projected_bicubic, "grid_period": DEFAULT_GRID_PERIOD}
    assert off["protocol"]["models"]["linf-lp"] == {
        "consistency": False,
        "projection_iterations": None,
        "grid_period": 3,
    }
    for key in ("consistency", "grid", "colour_shift"):
        assert key in on["protocol"] and isinstance(on["protocol"][key], str)
    assert "down" in on["protocol"]["consistency"] and "Hann" in on["protocol"]["grid"]

    with (tmp_path / "on.csv").open() as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == report.COLUMNS
        csv_rows = list(reader)
    assert [row["consistency"] for row in csv_rows] == ["True"] * 4
    assert float(csv_rows[1]["grid"]) == pytest.approx(rows_on[("linf-lp", 2.0)]["grid"])
    assert float(csv_rows[1]["colour_shift"]) == pytest.approx(rows_on[("linf-lp", 2.0)]["colour_shift"])

    md_on, md_off = markdown_rows(tmp_path / "on.md"), markdown_rows(tmp_path / "off.md")
    assert [row["setting"] for row in md_on[:2]] == ["bicubic (projected)", "linf-lp (learned, projected)"]
    assert [row["setting"] for row in md_off[:2]] == ["bicubic", "linf-lp (learned)"]
    assert md_on[1]["grid ×"] == f"{rows_on[('linf-lp', 2.0)]['grid']:.2f}"
    assert md_on[1]["colour shift"] == f"{rows_on[('linf-lp', 2.0)]['colour_shift']:.2f}"
    assert list(md_on[0]) == [
        "dataset", "scale", "setting", "images", "skipped", "PSNR-Y", "PSNR-RGB", "SSIM", "LPIPS", "LR-PSNR",
        "grid ×", "colour shift", "inf %", "diversity", "seconds",
    ]  # fmt: skip


def test_consistency_auto_projects_flowsr_models_but_not_bicubic(
    run_cli: CliInvoker, crops: Path, tmp_path: Path
) -> None:
    result = run_cli(
        "eval", str(crops), "--model", "linf-lp", "--scales", "2", "--no-lpips", "--json", str(tmp_path / "r.json"),
        env={"COLUMNS": "240"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "r.json").read_text())
    assert [(row["model"], row["consistency"]) for row in document["results"]] == [
        ("bicubic", False), ("linf-lp", True),
    ]  # fmt: skip
    assert "projected)" in result.stdout and "grid ×" in result.stdout and "shift" in result.stdout


def test_consistency_on_copies_the_wrapper_per_temperature(run_cli: CliInvoker, crops: Path, tmp_path: Path) -> None:
    save_model(tiny_linf(3), tmp_path / "tiny.safetensors")
    result = run_cli(
        "eval", str(crops), "--model", str(tmp_path / "tiny.safetensors"), "--scales", "2", "--no-lpips",
        "--temperatures", "0,0.8", "--runs", "2", "--consistency", "on", "--baseline", "none",
        "--json", str(tmp_path / "r.json"), "--save-images", str(tmp_path / "images"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    mode, sampled = json.loads((tmp_path / "r.json").read_text())["results"]
    assert (mode["temperature"], mode["consistency"], mode["diversity"]) == (0.0, True, None)
    assert (sampled["temperature"], sampled["consistency"]) == (0.8, True) and sampled["diversity"] > 0
    assert (tmp_path / "images/crops/tiny_τ=0.8_(projected)/x2/head_run1.png").is_file()


def test_at_temperature_replaces_the_inner_upscaler_of_a_projecting_wrapper(tmp_path: Path) -> None:
    save_model(tiny_linf(3), tmp_path / "tiny.safetensors")
    request = UpscalerRequest(str(tmp_path / "tiny.safetensors"), device="cpu", tile=0, guard=False)
    wrapped = create_upscaler(dataclasses.replace(request, consistency="on"))
    plain = create_upscaler(dataclasses.replace(request, consistency="off"))
    assert isinstance(wrapped, ConsistentUpscaler) and not isinstance(plain, ConsistentUpscaler)

    copy = _at_temperature(wrapped, 0.0)
    assert isinstance(copy, ConsistentUpscaler) and copy.inner is not wrapped.inner
    assert (copy.temperature, wrapped.temperature, copy.iterations) == (0.0, 0.5, wrapped.iterations)
    assert _at_temperature(plain, 0.3).temperature == 0.3 and plain.temperature == 0.5

    hr, lr = make_lr(torch.rand(1, 3, 40, 40), 2)
    size = Size(hr.shape[-1], hr.shape[-2])
    raw = super_resolve(_at_temperature(plain, 0.0), lr, size, 0).clamp(0, 1)
    expected = project(remove_grid(raw, 3), lr)
    assert torch.allclose(super_resolve(copy, lr, size, 0), expected, atol=1e-5)


def test_grid_period_comes_from_the_model_through_the_wrapper(tmp_path: Path) -> None:
    save_model(tiny_linf(2), tmp_path / "two.safetensors")
    for consistency in ("on", "off"):
        two, bundled, srflow, bicubic = (
            create_upscaler(UpscalerRequest(str(model), device="cpu", consistency=consistency))
            for model in (
                tmp_path / "two.safetensors",
                WEIGHTS / "linf-lp.safetensors",
                WEIGHTS / "srflow.safetensors",
                "bicubic",
            )
        )
        periods = (grid_period(two), grid_period(bundled), grid_period(srflow), grid_period(bicubic))
        assert periods == (2, 3, 2, DEFAULT_GRID_PERIOD)


@pytest.mark.parametrize(
    ("setting", "label"),
    [
        (Setting("bicubic", "bicubic"), "bicubic"),
        (Setting("bicubic", "bicubic", consistency=True), "bicubic (projected)"),
        (Setting("linf-lp", "learned", consistency=True), "linf-lp (learned, projected)"),
        (Setting("runs/a/model.safetensors", "gaussian", 0.5, consistency=True), "a τ=0.5 (projected)"),
        (Setting("linf", "gaussian", 0.5), "linf τ=0.5"),
    ],
)
def test_setting_labels_mark_projection(setting: Setting, label: str) -> None:
    assert setting.label == label
