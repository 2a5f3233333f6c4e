"""`flowsr upscale --consistency auto|on|off`: the flag, its setting, what the outputs record and that the
default model's output agrees with its input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomlkit
from PIL import Image as PILImage

from flowsr_cli.io.provenance import read_mark
from tests.cli.test_cli_startup import PROBE
from tests.cli.test_cli_upscale import make_photo, records
from tests.conftest import SHARED, CliInvoker


def lr_psnr(output: Path, source: Path) -> float:
    """PSNR of ``output`` shrunk to ``source``'s size with the MATLAB bicubic, against ``source``."""
    import torch

    from flowsr_cli.engine.pipeline import rgb_tensor
    from flowsr_cli.engine.resize import resize
    from flowsr_cli.io.reading import read_image

    lr, sr = rgb_tensor(read_image(source)), rgb_tensor(read_image(output))
    error = (resize(sr, (lr.shape[-2], lr.shape[-1])) - lr).pow(2).mean()
    return float(10 * torch.log10(1 / error))


def butterfly(path: Path, size: tuple[int, int] = (20, 16)) -> Path:
    """A crop of Set5's butterfly (edges and flat parts), saved as ``path``."""
    PILImage.open(SHARED / "data/eval/Set5/butterfly.png").crop((90, 60, 90 + size[0], 60 + size[1])).save(path)
    return path


def pixels(path: Path) -> np.ndarray:
    return np.asarray(PILImage.open(path))


def test_on_and_off_are_recorded_named_and_differ(run_cli: CliInvoker, tmp_path: Path) -> None:
    source = butterfly(tmp_path / "a.png")
    outputs = {}
    for choice in ("on", "off"):
        result = run_cli("upscale", str(source), "-s", "3", "--consistency", choice, "--json")
        assert result.exit_code == 0, result.output
        (record,) = records(result)
        assert record["consistency"] == choice and record["output"] == str(tmp_path / f"a_x3_consistency-{choice}.png")
        outputs[choice] = Path(str(record["output"]))
        assert read_mark(outputs[choice])["consistency"] == choice  # type: ignore[index]
    assert np.abs(pixels(outputs["on"]).astype(int) - pixels(outputs["off"])).max() > 2
    assert lr_psnr(outputs["on"], source) > lr_psnr(outputs["off"], source) + 10
    default = run_cli("upscale", str(source), "-s", "3", "--json")
    assert default.exit_code == 0 and records(default)[0]["consistency"] == "off", "auto: off for bicubic"
    assert np.array_equal(pixels(tmp_path / "a_x3.png"), pixels(outputs["off"]))


def test_a_bad_choice_is_one_usage_error(run_cli: CliInvoker, tmp_path: Path) -> None:
    source = make_photo(tmp_path / "a.png")
    result = run_cli("upscale", str(source), "-s", "2", "--consistency", "bogus")
    assert result.exit_code == 2
    assert result.stderr == "error: --consistency: invalid value 'bogus' for consistency; allowed: auto, on or off\n"
    assert [path.name for path in tmp_path.iterdir()] == ["a.png"]


@pytest.mark.parametrize("where", ["env", "file"])
def test_the_setting_comes_from_the_environment_or_the_config_file(
    run_cli: CliInvoker, tmp_path: Path, isolated_settings: Path, where: str
) -> None:
    source = butterfly(tmp_path / "a.png")
    env = {"FLOWSR_CONSISTENCY": "on"} if where == "env" else {}
    if where == "file":
        isolated_settings.write_text(tomlkit.dumps({"consistency": "on"}))
    result = run_cli("upscale", str(source), "-s", "2", "--json", env=env)
    assert result.exit_code == 0, result.output
    assert records(result)[0]["consistency"] == "on"
    assert read_mark(tmp_path / "a_x2.png")["consistency"] == "on", "the configured default adds no name tag"  # type: ignore[index]
    flag = run_cli("upscale", str(source), "-s", "2", "--consistency", "off", "--json", env=env)
    assert records(flag)[0]["consistency"] == "off", "the flag wins"
    assert lr_psnr(tmp_path / "a_x2.png", source) > lr_psnr(tmp_path / "a_x2_consistency-off.png", source) + 10


def test_config_lists_gets_and_sets_it(run_cli: CliInvoker) -> None:
    shown = run_cli("config", "show")
    assert shown.exit_code == 0 and "consistency" in shown.stdout and "Back-project" in shown.stdout
    assert run_cli("config", "get", "consistency").stdout.strip() == "auto"
    assert run_cli("config", "set", "consistency", "OFF").exit_code == 0
    assert run_cli("config", "get", "consistency").stdout.strip() == "off"
    assert "--consistency" in run_cli("upscale", "--help").stdout


def test_an_output_of_the_other_consistency_is_not_taken_as_done(run_cli: CliInvoker, tmp_path: Path) -> None:
    source = make_photo(tmp_path / "a.png")
    target = tmp_path / "out.png"
    assert run_cli("upscale", str(source), "-s", "2", "-o", str(target)).exit_code == 0  # bicubic: auto is off
    before = target.read_bytes()
    other = run_cli("upscale", str(source), "-s", "2", "-o", str(target), "--consistency", "on", "--json")
    assert other.exit_code == 1 and target.read_bytes() == before
    assert records(other)[0]["status"] == "failed"
    assert "written by flowsr with other settings (consistency off, not on)" in str(records(other)[0]["error"])
    replaced = run_cli("upscale", str(source), "-s", "2", "-o", str(target), "--consistency", "on", "--overwrite")
    assert replaced.exit_code == 0 and read_mark(target)["consistency"] == "on"  # type: ignore[index]
    same = run_cli("upscale", str(source), "-s", "2", "-o", str(target), "--consistency", "on", "--json")
    assert same.exit_code == 0 and records(same)[0]["status"] == "skipped"
    assert records(same)[0]["consistency"] == "on"


def test_auto_is_resolved_for_the_default_model_without_torch(
    run_cli: CliInvoker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check of an existing output reads the model file's header, not the model: a rerun stays light."""
    monkeypatch.delenv("FLOWSR_MODEL")
    source = make_photo(tmp_path / "a.png", (6, 5))
    target = tmp_path / "out.png"
    assert run_cli("upscale", str(source), "-s", "2", "-o", str(target), "--consistency", "off").exit_code == 0
    rerun = subprocess.run(
        [sys.executable, "-c", PROBE, "upscale", str(source), "-s", "2", "-o", str(target)],
        capture_output=True,
        text=True,
    )
    assert "(consistency off, not on)" in rerun.stderr, rerun.stderr
    assert rerun.stderr.strip().splitlines()[-1].startswith("HEAVY= "), rerun.stderr


def test_the_default_model_agrees_with_its_input(
    run_cli: CliInvoker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """linf-lp under auto is projected: its output's bicubic shrink matches the input far better than with
    FLOWSR_CONSISTENCY=off (a crop of Set5's butterfly, ×3)."""
    monkeypatch.delenv("FLOWSR_MODEL")
    source = butterfly(tmp_path / "butterfly.png", (40, 32))
    auto = run_cli("upscale", str(source), "-s", "3", "--json")
    assert auto.exit_code == 0, auto.output
    assert records(auto)[0]["consistency"] == "on"
    off = run_cli("upscale", str(source), "-s", "3", "--suffix", "_off", "--json", env={"FLOWSR_CONSISTENCY": "off"})
    assert off.exit_code == 0 and records(off)[0]["consistency"] == "off"
    projected, raw = lr_psnr(tmp_path / "butterfly_x3.png", source), lr_psnr(tmp_path / "butterfly_off.png", source)
    assert projected > 50 and projected > raw + 10, (projected, raw)
