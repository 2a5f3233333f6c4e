"""`flowsr eval` end to end on the shared evaluation sets, offline."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image as PILImage

from flowsr_cli.families.model_file import save_model
from tests.conftest import SHARED, CliInvoker
from tests.families.linf.test_linf import tiny_linf

SET5 = SHARED / "data/eval/Set5"
PUBLISHED_BICUBIC_SET5 = {2.0: 33.66, 3.0: 30.39, 4.0: 28.42}
"""Bicubic Y-PSNR on Set5 as reported across the SR literature (e.g. EDSR, RCAN tables)."""


@pytest.fixture(autouse=True)
def offline_backbones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWSR_BACKBONE_DIR", str(SHARED / "weights"))


def test_bicubic_on_set5_matches_the_published_figures(run_cli: CliInvoker, tmp_path: Path) -> None:
    out = tmp_path / "set5.json"
    result = run_cli("eval", str(SET5), "--baseline", "bicubic", "--scales", "2,3,4", "--json", str(out))
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert set(document) == {"flowsr_version", "protocol", "results", "skipped"}
    assert document["skipped"] == []
    rows = document["results"]
    assert [row["scale"] for row in rows] == [2.0, 3.0, 4.0]
    for row in rows:
        assert row["dataset"] == "Set5" and row["prior"] == "bicubic" and row["temperature"] is None
        assert row["images"] == 5 and row["runs"] == 1 and row["inf_rate"] == 0.0 and row["diversity"] is None
        assert row["skipped"] == 0
        assert abs(row["psnr_y"] - PUBLISHED_BICUBIC_SET5[row["scale"]]) < 0.1, row
        assert 0 < row["lpips"] < 1 and row["lr_psnr"] > 35 and 0.7 < row["ssim"] < 1
    assert "Set5" in result.stdout and "PSNR-Y" in result.stdout


def test_bicubic_named_as_a_model_is_labelled_bicubic(run_cli: CliInvoker, tmp_path: Path) -> None:
    out = tmp_path / "set5.json"
    result = run_cli(
        "eval", str(SET5), "--model", "bicubic", "--baseline", "none", "--scales", "2", "--max-images", "1",
        "--json", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (row,) = json.loads(out.read_text())["results"]
    assert row["model"] == "bicubic" and row["prior"] == "bicubic"
    assert "(learned)" not in result.stdout


def test_flow_settings_runs_diversity_and_all_formats(run_cli: CliInvoker, tmp_path: Path) -> None:
    save_model(tiny_linf(3), tmp_path / "tiny.safetensors")
    outputs = {kind: tmp_path / f"r.{kind}" for kind in ("json", "csv", "md")}
    result = run_cli(
        "eval", str(SET5), "--model", str(tmp_path / "tiny.safetensors"), "--scales", "2,3.5",
        "--temperatures", "0,0.8", "--runs", "2", "--max-images", "2", "--json", str(outputs["json"]),
        "--csv", str(outputs["csv"]), "--markdown", str(outputs["md"]), "--save-images", str(tmp_path / "images"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(outputs["json"].read_text())["results"]
    assert len(rows) == 2 * 3  # scales x (bicubic, tau 0, tau 0.8)
    by_setting = {(row["scale"], row["prior"], row["temperature"]): row for row in rows}
    stochastic = by_setting[(2.0, "gaussian", 0.8)]
    deterministic = by_setting[(2.0, "gaussian", 0.0)]
    assert stochastic["runs"] == 2 and stochastic["diversity"] > 0
    assert deterministic["runs"] == 1 and deterministic["diversity"] is None
    assert all(row["images"] == 2 and row["inf_rate"] == 0.0 for row in rows)
    with outputs["csv"].open() as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)
    assert outputs["md"].read_text().count("\n") == len(rows) + 2
    saved = sorted(path.relative_to(tmp_path / "images").as_posix() for path in (tmp_path / "images").rglob("*.png"))
    assert "Set5/tiny_τ=0.8_(projected)/x3.5/baby_run1.png" in saved and "Set5/bicubic/x2/bird.png" in saved


def test_inf_rate_counts_raw_non_finite_outputs(run_cli: CliInvoker, tmp_path: Path) -> None:
    broken = tiny_linf(3)
    with torch.no_grad():
        broken.flow.last.bias.fill_(float("inf"))
    save_model(broken, tmp_path / "broken.safetensors")
    out = tmp_path / "r.json"
    result = run_cli(
        "eval", str(SET5), "--model", str(tmp_path / "broken.safetensors"), "--scales", "2",
        "--max-images", "2", "--baseline", "none", "--json", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (row,) = json.loads(out.read_text())["results"]
    assert row["inf_rate"] == 1.0


def test_srflow_is_scored_at_x4_only_per_temperature_with_its_inf_rate(run_cli: CliInvoker, tmp_path: Path) -> None:
    from PIL import Image as PILImage

    from tests.families.srflow.test_srflow_engine import sensible_tiny_srflow

    model = str(tmp_path / "srflow.safetensors")
    save_model(sensible_tiny_srflow(), model)
    folder = tmp_path / "tiny"
    folder.mkdir()
    for name in ("baby", "bird"):
        PILImage.open(SET5 / f"{name}.png").crop((40, 40, 112, 104)).save(folder / f"{name}.png")
    out = tmp_path / "r.json"
    result = run_cli(
        "eval", str(folder), "--model", model, "--scales", "2,4", "--temperatures", "0,0.8", "--runs", "2",
        "--json", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "srflow.safetensors is a fixed ×4 model: skipped at ×2" in result.stderr.replace("\n", "")
    rows = json.loads(out.read_text())["results"]
    assert [(row["scale"], row["prior"], row["temperature"]) for row in rows] == [
        (2.0, "bicubic", None), (4.0, "bicubic", None), (4.0, "gaussian", 0.0), (4.0, "gaussian", 0.8),
    ]  # fmt: skip
    mode, sampled = rows[2], rows[3]
    assert mode["runs"] == 1 and mode["diversity"] is None
    assert sampled["runs"] == 2 and sampled["diversity"] > 0
    assert all(row["images"] == 2 and row["inf_rate"] == 0.0 and row["model"] == model for row in rows[2:])
    assert "τ=0.8" in result.stdout and "–" in result.stdout  # no srflow cells at ×2

    refused = run_cli("eval", str(folder), "--model", model, "--scales", "2,3")
    assert refused.exit_code == 2
    assert "srflow.safetensors is a fixed ×4 model: include 4 in --scales" in refused.stderr


def test_eval_scores_at_the_precision_asked_and_records_it(run_cli: CliInvoker, tmp_path: Path) -> None:
    save_model(tiny_linf(3), tmp_path / "m.safetensors")
    scores = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.json"
        common = ["eval", str(SET5), "--model", str(tmp_path / "m.safetensors"), "--scales", "3"]
        result = run_cli(*common, "--max-images", "1", "--baseline", "none", "--no-lpips", "--precision", precision,
                         "--temperatures", "0", "--json", str(out))  # fmt: skip
        assert result.exit_code == 0, result.output
        report = json.loads(out.read_text())
        assert report["protocol"]["precision"] == precision
        scores[precision] = report["results"][0]["psnr_y"]
    assert scores["fp32"] != scores["bf16"] and abs(scores["fp32"] - scores["bf16"]) < 0.5
    refused = run_cli("eval", str(SET5), "--baseline", "bicubic", "--precision", "fp8")
    assert refused.exit_code == 2 and "auto, fp32, fp16 or bf16" in refused.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scales", "2,x"], "--scales takes comma-separated numbers"),
        (["--scales", "0.5"], ">= 1"),
        (["--baseline", "lanczos"], "--baseline takes bicubic or none"),
        (["--model", "no-such-model"], "unknown model 'no-such-model'"),
    ],
)
def test_usage_errors(run_cli: CliInvoker, args: list[str], message: str) -> None:
    result = run_cli("eval", str(SET5), *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_without_model_the_configured_one_is_scored_beside_the_baseline(
    run_cli: CliInvoker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`flowsr eval Set5` scores the model `upscale` would use (config or FLOWSR_MODEL); bicubic as that model is
    the baseline alone, not a second row."""
    save_model(tiny_linf(3), tmp_path / "tiny.safetensors")
    monkeypatch.setenv("FLOWSR_MODEL", str(tmp_path / "tiny.safetensors"))

    def rows(*args: str) -> list[tuple[str, str]]:
        out = tmp_path / "r.json"
        options = ("--scales", "2", "--max-images", "1", "--no-lpips", "--json", str(out))
        result = run_cli("eval", str(SET5), *options, *args)
        assert result.exit_code == 0, result.output
        return [(Path(row["model"]).name, row["prior"]) for row in json.loads(out.read_text())["results"]]

    assert rows() == [("bicubic", "bicubic"), ("tiny.safetensors", "gaussian")]
    assert rows("--baseline", "none") == [("tiny.safetensors", "gaussian")]
    monkeypatch.setenv("FLOWSR_MODEL", "bicubic")
    assert rows() == [("bicubic", "bicubic")]
    assert rows("--baseline", "none") == [("bicubic", "bicubic")]


def test_missing_or_empty_dataset_folder(run_cli: CliInvoker, tmp_path: Path) -> None:
    assert run_cli("eval", str(tmp_path / "nope")).exit_code == 2
    (tmp_path / "empty").mkdir()
    result = run_cli("eval", str(tmp_path / "empty"))
    assert result.exit_code == 2 and "no images to evaluate" in result.stderr


def test_no_lpips_needs_no_backbone_and_marks_lpips_not_computed(
    run_cli: CliInvoker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLOWSR_BACKBONE_DIR")
    monkeypatch.setenv("FLOWSR_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "bird.png").symlink_to(SET5 / "bird.png")
    with PILImage.open(SET5 / "bird.png") as bird:
        bird.crop((0, 0, 24, 24)).save(folder / "small.png")  # too small for LPIPS, enough for SSIM at x2
    outputs = {kind: tmp_path / f"r.{kind}" for kind in ("json", "csv", "md")}
    result = run_cli(
        "eval", str(folder), "--scales", "2", "--no-lpips", "--json", str(outputs["json"]),
        "--csv", str(outputs["csv"]), "--markdown", str(outputs["md"]), env={"COLUMNS": "200"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    document = json.loads(outputs["json"].read_text())
    (row,) = document["results"]
    assert row["images"] == 2 and row["skipped"] == 0 and row["lpips"] is None and row["psnr_y"] > 20
    assert document["protocol"]["lpips"] == "not computed (--no-lpips)"
    with outputs["csv"].open() as handle:
        (csv_row,) = csv.DictReader(handle)
    assert csv_row["lpips"] == "" and float(csv_row["psnr_y"]) == pytest.approx(row["psnr_y"])
    header, _, cells = outputs["md"].read_text().splitlines()
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    assert [cell.strip() for cell in cells.strip("|").split("|")][columns.index("LPIPS")] == "–"
    assert "LPIPS" not in result.stdout and "PSNR-Y" in result.stdout


def test_help_shows_defaults(run_cli: CliInvoker) -> None:
    result = run_cli("eval", "--help", env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.stdout).split())
    for default in (
        "[default: 2,3,4]", "(repeatable; default: the configured one; config: model)", "(default: all)",
        "[default: lpips]",
        "(default: learned where the model has one, else gaussian)", "(default: auto; config: device)",
        "(default: online; config: offline)", "(default: auto; config: consistency)",
    ):  # fmt: skip
        assert default in text, default
    assert "--no-lpips" in text and "backbone_dir" in text


def test_help_ends_with_examples(run_cli: CliInvoker) -> None:
    text = run_cli("eval", "--help", env={"COLUMNS": "200"}).stdout
    examples = text[text.index("Examples:") :]
    assert "╰" not in examples  # after the option panels
    assert examples.count("flowsr eval ") >= 3 and "--no-lpips" in examples and "FLOWSR_BACKBONE_DIR" in examples
