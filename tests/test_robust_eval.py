"""Robustness of `flowsr eval` on bad datasets: unreadable and too-small images are named, skipped and counted."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image as PILImage
from typer.testing import Result

from flowsr_cli.console import printable
from tests.conftest import SHARED, CliInvoker
from tests.hostile_inputs import write_corpus

pytestmark = pytest.mark.robustness

SET5 = SHARED / "data/eval/Set5"


@pytest.fixture(autouse=True)
def offline_backbones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWSR_BACKBONE_DIR", str(SHARED / "weights"))


def _bird_folder(folder: Path) -> Path:
    """A dataset folder holding Set5's bird (288×288), the smallest real image, for fast runs."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(SET5 / "bird.png", folder / "bird.png")
    return folder


def _save_crop(folder: Path, name: str, width: int, height: int) -> None:
    with PILImage.open(SET5 / "bird.png") as bird:
        bird.crop((100, 100, 100 + width, 100 + height)).save(folder / name)


def _error_lines(stderr: str, path: Path | bytes) -> list[str]:
    """The stderr lines reporting an error about the file ``path`` (shown with undecodable bytes escaped)."""
    shown = printable(os.fsdecode(path)) + ":"
    return [line for line in stderr.splitlines() if line.startswith("error: ") and shown in line]


def _eval(run_cli: CliInvoker, folders: list[Path], scales: str, out: Path) -> Result:
    outputs = {"--json": out / "r.json", "--csv": out / "r.csv", "--markdown": out / "r.md"}
    arguments = [argument for option, path in outputs.items() for argument in (option, str(path))]
    return run_cli("eval", *map(str, folders), "--baseline", "bicubic", "--scales", scales, *arguments)


def _bird_alone(run_cli: CliInvoker, tmp_path: Path, scales: str) -> dict[float, dict[str, object]]:
    clean = _eval(run_cli, [_bird_folder(tmp_path / "clean" / "data")], scales, tmp_path / "clean")
    assert clean.exit_code == 0, clean.output
    return {row["scale"]: row for row in json.loads((tmp_path / "clean/r.json").read_text())["results"]}


def test_images_too_small_for_a_scale_are_skipped_there_named_and_counted(run_cli: CliInvoker, tmp_path: Path) -> None:
    folder = _bird_folder(tmp_path / "data")
    sizes = {"strip.png": (1, 40), "below-scale.png": (2, 2), "shaved-away.png": (20, 20), "edge.png": (32, 32)}
    for name, (width, height) in sizes.items():
        _save_crop(folder, name, width, height)

    result = _eval(run_cli, [folder], "2,3", tmp_path)

    assert result.exit_code == 1, result.output
    assert "unexpected" not in result.output and "Traceback" not in result.output
    for name, (width, height) in sizes.items():
        (line,) = _error_lines(result.stderr, folder / name)
        assert f"{width}×{height}" in line and "too small" in line and "×3" in line, line
    assert "×2" not in _error_lines(result.stderr, folder / "edge.png")[0]  # 32×32 is scored at ×2
    rows = {row["scale"]: row for row in json.loads((tmp_path / "r.json").read_text())["results"]}
    assert (rows[2.0]["images"], rows[2.0]["skipped"]) == (2, 3)
    assert (rows[3.0]["images"], rows[3.0]["skipped"]) == (1, 4)
    alone = _bird_alone(run_cli, tmp_path, "3")
    assert rows[3.0]["psnr_y"] == alone[3.0]["psnr_y"] and rows[3.0]["lpips"] == alone[3.0]["lpips"]


def test_every_hostile_file_in_a_dataset_is_named_once_skipped_and_counted(run_cli: CliInvoker, tmp_path: Path) -> None:
    folder = _bird_folder(tmp_path / "data")
    corpus = [item for item in write_corpus(folder) if b"/" not in item.name]  # eval reads no sub-folders

    result = _eval(run_cli, [folder], "2", tmp_path)

    assert result.exit_code == 1, result.output
    assert "unexpected" not in result.output and "Traceback" not in result.output
    for item in corpus:
        lines = _error_lines(result.stderr, os.path.join(os.fsencode(folder), item.name))
        assert len(lines) == 1, (item.name, result.stderr)
    assert "truncated PNG data" in _error_lines(result.stderr, folder / "truncated.png")[0]
    assert _error_lines(result.stderr, folder / "bird.png") == []
    (row,) = json.loads((tmp_path / "r.json").read_text())["results"]
    assert (row["images"], row["skipped"]) == (1, len(corpus))
    assert row["psnr_y"] == _bird_alone(run_cli, tmp_path, "2")[2.0]["psnr_y"]
    with (tmp_path / "r.csv").open() as handle:
        (csv_row,) = csv.DictReader(handle)
    assert (csv_row["images"], csv_row["skipped"]) == ("1", str(len(corpus)))
    header, _, markdown_row = (tmp_path / "r.md").read_text().splitlines()
    assert "| images | skipped |" in header and f"| 1 | {len(corpus)} |" in markdown_row
    assert "skipped" in result.stdout and str(len(corpus)) in result.stdout


def test_a_fully_scored_dataset_exits_0_with_nothing_skipped(run_cli: CliInvoker, tmp_path: Path) -> None:
    result = _eval(run_cli, [_bird_folder(tmp_path / "data")], "2", tmp_path)
    assert result.exit_code == 0, result.output
    (row,) = json.loads((tmp_path / "r.json").read_text())["results"]
    assert (row["images"], row["skipped"]) == (1, 0)


@pytest.mark.parametrize("problem", ["unreadable", "too small"])
def test_a_dataset_with_nothing_to_score_is_one_clear_error_before_any_work(
    run_cli: CliInvoker, tmp_path: Path, problem: str
) -> None:
    good = _bird_folder(tmp_path / "good")
    bad = tmp_path / "bad"
    bad.mkdir()
    if problem == "unreadable":
        (bad / "empty.png").write_bytes(b"")
        (bad / "truncated.png").write_bytes((SET5 / "bird.png").read_bytes()[:300])
    else:
        _save_crop(bad, "tiny.png", 16, 16)
        _save_crop(bad, "thin.png", 300, 8)

    result = _eval(run_cli, [good, bad], "2", tmp_path)

    assert result.exit_code == 1, result.output
    assert "unexpected" not in result.output and "nan" not in result.output.lower()
    for path in bad.iterdir():
        assert len(_error_lines(result.stderr, path)) == 1, (path, result.stderr)
    assert f"error: {bad}: no image can be scored at ×2" in result.stderr
    assert not any((tmp_path / name).exists() for name in ("r.json", "r.csv", "r.md"))
    assert "PSNR" not in result.stdout


def test_eval_help_documents_the_exit_codes(run_cli: CliInvoker) -> None:
    result = run_cli("eval", "--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "Exit code: 0 every image scored, 1 some images skipped" in text, text
