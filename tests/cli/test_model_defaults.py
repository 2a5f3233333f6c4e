"""A model's own defaults through the real CLI: HCFlow samples at heat 0.9 unless told (names, marks, reruns and
`flowsr eval` follow the model's default, not 0.5), an x8 HCFlow file runs at x8 only (or resampled), and HCFlow's
progress moves flow step by flow step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import Result

from flowsr_cli.families.model_file import save_model
from flowsr_cli.families.upscalers import UpscalerRequest, create_upscaler, prepare_model
from flowsr_cli.io.provenance import RunSettings, read_mark
from flowsr_cli.io.sizing import Size
from tests.cli.test_cli_startup import PROBE
from tests.cli.test_cli_upscale import image_size, make_photo, records
from tests.conftest import SHARED, CliInvoker
from tests.families.hcflow.test_hcflow import TINY, TINY_X8, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def hcflow_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny HCFlow model files saved by flowsr: ``x4`` (levels 2) and ``x8`` (levels 3)."""
    folder = tmp_path_factory.mktemp("models")
    files = {"x4": folder / "hc4.safetensors", "x8": folder / "hc8.safetensors"}
    save_model(tiny_model(TINY), files["x4"])
    save_model(tiny_model(TINY_X8), files["x8"])
    return files


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


def upscale(run_cli: CliInvoker, *args: str, code: int = 0) -> Result:
    result = run_cli("upscale", *args)
    assert result.exit_code == code, result.output
    return result


def test_hcflow_samples_at_heat_0_9_unless_told_and_names_only_other_temperatures(
    run_cli: CliInvoker, tmp_path: Path, hcflow_files: dict[str, Path]
) -> None:
    source = make_photo(tmp_path / "a.png", (12, 10))
    model = str(hcflow_files["x4"])
    upscale(run_cli, str(source), "--model", model, "--scale", "4")
    default = tmp_path / "a_x4_hc4.png"
    mark = read_mark(default)
    assert mark is not None and (mark["temperature"], mark["default_temperature"]) == (0.9, 0.9)
    told = tmp_path / "told.png"
    upscale(run_cli, str(source), "--model", model, "--scale", "4", "-t", "0.9", "-o", str(told))
    assert np.array_equal(pixels(default), pixels(told)), "the default is heat 0.9 itself"
    same = upscale(run_cli, str(source), "--model", model, "--scale", "4", "-t", "0.9", "--json")
    assert records(same)[0]["status"] == "skipped", "-t 0.9 is HCFlow's default: the same name, the same output"
    upscale(run_cli, str(source), "--model", model, "--scale", "4", "-t", "0.5")
    other = tmp_path / "a_x4_hc4_t0.5.png"
    assert read_mark(other)["temperature"] == 0.5  # type: ignore[index]
    assert not np.array_equal(pixels(default), pixels(other))
    upscale(run_cli, str(source), "--model", model, "--scale", "4", "--samples", "2")
    assert (tmp_path / "a_x4_hc4_s1.png").is_file(), "heat 0.9 samples without -t"


def test_a_rerun_tells_the_models_default_from_another_temperature(
    run_cli: CliInvoker, tmp_path: Path, hcflow_files: dict[str, Path]
) -> None:
    source = make_photo(tmp_path / "a.png", (8, 6))
    target = tmp_path / "out.png"
    common = (str(source), "--model", str(hcflow_files["x4"]), "--scale", "4", "-o", str(target), "--json")
    upscale(run_cli, *common, "-t", "0.5")
    default = upscale(run_cli, *common, code=1)
    assert "other settings (temperature 0.5, not 0.9)" in str(records(default)[0]["error"])
    assert records(upscale(run_cli, *common, "-t", "0.5"))[0]["status"] == "skipped"
    upscale(run_cli, *common, "--overwrite")
    assert records(upscale(run_cli, *common))[0]["status"] == "skipped"
    assert records(upscale(run_cli, *common, "-t", "0.9"))[0]["status"] == "skipped"


def test_a_rerun_without_t_reads_the_default_from_the_mark_not_torch(
    run_cli: CliInvoker, tmp_path: Path, hcflow_files: dict[str, Path]
) -> None:
    """Which temperature is HCFlow's default needs its network (torch); the earlier output's mark says it."""
    source = make_photo(tmp_path / "a.png", (6, 5))
    common = (str(source), "--model", str(hcflow_files["x4"]), "--scale", "4")
    upscale(run_cli, *common, "-t", "0.5", "-o", str(tmp_path / "other.png"))
    upscale(run_cli, *common, "-o", str(tmp_path / "default.png"))
    for target, expected in (("other.png", "(temperature 0.5, not 0.9)"), ("default.png", "with the same settings")):
        rerun = subprocess.run(
            [sys.executable, "-c", PROBE, "upscale", *common, "-o", str(tmp_path / target)],
            capture_output=True,
            text=True,
        )
        assert expected in rerun.stderr, rerun.stderr
        assert rerun.stderr.strip().splitlines()[-1].startswith("HEAVY= "), rerun.stderr


def test_other_models_keep_0_5_and_their_names(run_cli: CliInvoker, tmp_path: Path) -> None:
    source = make_photo(tmp_path / "a.png", (8, 6))
    upscale(run_cli, str(source), "--scale", "2", "--model", "linf")
    mark = read_mark(tmp_path / "a_x2_linf.png")
    assert mark is not None and (mark["temperature"], mark["default_temperature"]) == (0.5, 0.5)
    assert records(upscale(run_cli, str(source), "-s", "2", "-m", "linf", "-t", "0.5", "--json"))[0]["status"] == (
        "skipped"
    )
    upscale(run_cli, str(source), "--scale", "2", "--model", "linf", "-t", "0.9")
    assert (tmp_path / "a_x2_linf_t0.9.png").is_file()


def test_marks_without_a_default_temperature_were_made_at_0_5() -> None:
    """Earlier flowsr recorded only the temperature used; every model's default was 0.5 then."""
    earlier = {"flowsr": "0.1.0", "model": "m", "model_sha256": "ab" * 32, "size": "x4", "temperature": 0.5}
    default = RunSettings("m", "ab" * 32, "x4", temperature=None, default_temperature=None)
    assert default.differences(earlier) == []
    assert default.differences({**earlier, "temperature": 0.8}) == ["temperature 0.8, not 0.5"]
    hcflow = RunSettings("m", "ab" * 32, "x4", temperature=0.9, default_temperature=0.9).mark()
    assert default.differences(hcflow) == []
    assert RunSettings("m", "ab" * 32, "x4", temperature=0.5).differences(hcflow) == ["temperature 0.9, not 0.5"]


def test_an_x8_hcflow_file_upscales_by_8_only_unless_resampled(
    run_cli: CliInvoker, tmp_path: Path, hcflow_files: dict[str, Path]
) -> None:
    source = make_photo(tmp_path / "a.png", (6, 5))
    model = str(hcflow_files["x8"])
    upscale(run_cli, str(source), "--model", model, "--scale", "8", "-o", str(tmp_path / "x8.png"))
    assert image_size(tmp_path / "x8.png") == (48, 40)
    refused = run_cli("upscale", str(source), "--model", model, "--scale", "4", "-o", str(tmp_path / "no.png"))
    lines = refused.stderr.strip().splitlines()
    assert refused.exit_code == 2 and not (tmp_path / "no.png").exists()
    assert len(lines) == 1 and f"{model} is a fixed ×8 model: use --scale 8" in lines[0], lines
    upscale(run_cli, str(source), "--model", model, "--scale", "4", "--allow-resample", "-o", str(tmp_path / "r.png"))
    assert image_size(tmp_path / "r.png") == (24, 20)
    assert prepare_model(UpscalerRequest(str(hcflow_files["x4"]), device="cpu")).fixed_scale == 4


def test_eval_scores_hcflow_at_its_default_heat_unless_given_temperatures(
    run_cli: CliInvoker, tmp_path: Path, hcflow_files: dict[str, Path]
) -> None:
    folder = tmp_path / "Set5"
    folder.mkdir()
    Image.open(SHARED / "data/eval/Set5/baby.png").crop((64, 64, 128, 112)).save(folder / "baby.png")

    def temperatures(*options: str) -> list[float]:
        out = tmp_path / "r.json"
        result = run_cli(
            "eval", str(folder), "--model", str(hcflow_files["x4"]), "--scales", "4", "--baseline", "none",
            "--no-lpips", "--json", str(out), *options,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        return [row["temperature"] for row in json.loads(out.read_text())["results"]]

    assert temperatures() == [0.9]
    assert temperatures("--temperatures", "0,0.5") == [0.0, 0.5]


def test_hcflow_progress_moves_flow_step_by_step_up_to_one(hcflow_files: dict[str, Path]) -> None:
    upscaler = create_upscaler(UpscalerRequest(str(hcflow_files["x4"]), device="cpu", tile=16, consistency="off"))
    assert upscaler.temperature == 0.9  # type: ignore[attr-defined]
    lr = torch.rand(1, 3, 40, 48, generator=torch.Generator().manual_seed(0))
    fractions: list[float] = []
    report = upscaler.upscale(lr, Size(192, 160), lambda *tile: None, (0,), fractions.append)
    assert report.tiles == 9 and fractions[-1] == 1.0
    assert all(earlier < later for earlier, later in zip(fractions, fractions[1:])), fractions
    assert len([fraction for fraction in fractions if fraction <= 1 / 9]) > 2  # within the first tile too


def help_text(run_cli: CliInvoker, command: str) -> str:
    """A command's help rendered wide enough to keep each option's help on one line."""
    result = run_cli(command, "--help", env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_help_names_hcflow_where_it_has_its_own_default(run_cli: CliInvoker) -> None:
    """`upscale`'s -t default is checked in test_cli_upscale; here its fixed scales, its halo and eval's heat."""
    page = help_text(run_cli, "upscale")
    assert "16 for SRFlow and HCFlow" in page and "(SRFlow: ×4, HCFlow: ×4 or ×8)" in page
    assert "[default: (each model's own: 0.5, HCFlow 0.9)]" in help_text(run_cli, "eval")


def test_json_reports_the_temperature_used(run_cli: CliInvoker, tmp_path: Path, hcflow_files: dict[str, Path]) -> None:
    source = make_photo(tmp_path / "a.png", (8, 6))
    model = ("--model", str(hcflow_files["x4"]), "--scale", "4", "--json")
    assert records(upscale(run_cli, str(source), *model))[0]["temperature"] == 0.9
    assert records(upscale(run_cli, str(source), *model, "-t", "0"))[0]["temperature"] == 0.0
    assert records(upscale(run_cli, str(source), "--scale", "2", "--json"))[0]["temperature"] == 0.5
