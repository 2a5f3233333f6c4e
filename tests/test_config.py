"""`flowsr config` and settings precedence, through the real CLI and the real TOML file."""

from __future__ import annotations

from pathlib import Path

import pytest

from flowsr_cli import config
from flowsr_cli.errors import UsageError
from tests.conftest import CliInvoker


def test_path_follows_flowsr_config(run_cli: CliInvoker, isolated_settings: Path) -> None:
    result = run_cli("config", "path")
    assert result.exit_code == 0
    assert result.stdout.strip() == str(isolated_settings)


def test_set_get_unset_round_trip(run_cli: CliInvoker, isolated_settings: Path) -> None:
    assert run_cli("config", "get", "tile").stdout.strip() == "auto"
    result = run_cli("config", "set", "tile", "256")
    assert result.exit_code == 0, result.output
    assert "tile = 256" in isolated_settings.read_text()
    assert run_cli("config", "get", "tile").stdout.strip() == "256"
    assert run_cli("config", "unset", "tile").exit_code == 0
    assert "tile" not in isolated_settings.read_text()
    assert run_cli("config", "get", "tile").stdout.strip() == "auto"
    assert "was not set" in run_cli("config", "unset", "tile").stdout


def test_set_normalises_and_types_values(run_cli: CliInvoker, isolated_settings: Path) -> None:
    run_cli("config", "set", "format", "JPG")
    run_cli("config", "set", "strip_metadata", "yes")
    run_cli("config", "set", "quality", "90")
    text = isolated_settings.read_text()
    assert 'format = "jpeg"' in text
    assert "strip_metadata = true" in text
    assert "quality = 90" in text
    assert config.read_file_values(isolated_settings) == {"format": "jpeg", "strip_metadata": True, "quality": 90}


def test_set_keeps_user_comments(run_cli: CliInvoker, isolated_settings: Path) -> None:
    isolated_settings.write_text('# my laptop settings\ndevice = "cpu"  # no GPU here\n')
    assert run_cli("config", "set", "quality", "80").exit_code == 0
    text = isolated_settings.read_text()
    assert "# my laptop settings" in text
    assert "# no GPU here" in text
    assert "quality = 80" in text


def test_precedence_flag_env_file_default(isolated_settings: Path) -> None:
    isolated_settings.write_text('model = "from-file"\ndevice = "cpu"\nquality = 70\n')
    environ = {"FLOWSR_MODEL": "from-env", "FLOWSR_DEVICE": "cuda:1"}
    settings = config.Settings({"model": "from-flag", "device": None}, environ=environ)
    assert settings.resolve("model") == config.ResolvedValue("from-flag", "flag")
    assert settings.resolve("device") == config.ResolvedValue("cuda:1", "env FLOWSR_DEVICE")
    assert settings.resolve("quality") == config.ResolvedValue(70, f"file {isolated_settings}")
    assert settings.resolve("precision") == config.ResolvedValue("auto", "default")


def test_show_names_each_source(run_cli: CliInvoker, isolated_settings: Path) -> None:
    isolated_settings.write_text("quality = 70\n")
    result = run_cli("config", "show", env={"FLOWSR_DEVICE": "cpu", "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") >= 4}
    assert "env FLOWSR_DEVICE" in rows["device"]
    assert "file" in rows["quality"] and "70" in rows["quality"]
    assert "default" in rows["tile"]


def test_env_value_reaches_get(run_cli: CliInvoker) -> None:
    assert run_cli("config", "get", "quality", env={"FLOWSR_QUALITY": "42"}).stdout.strip() == "42"


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("tile", "big", "auto or an integer >= 0"),
        ("tile", "-3", "auto or an integer >= 0"),
        ("quality", "101", "from 1 to 100"),
        ("device", "tpu", "auto, cpu, cuda or cuda:N"),
        ("precision", "fp8", "fp32"),
        ("format", "gif", "png"),
        ("strip_metadata", "maybe", "true or false"),
        ("suffix", "_{scale}", "{size}"),
        ("suffix", "sub/dir", "without '/'"),
        ("max_pixels", "0", ">= 1"),
    ],
)
def test_set_rejects_bad_values(
    run_cli: CliInvoker, isolated_settings: Path, key: str, value: str, allowed: str
) -> None:
    result = run_cli("config", "set", "--", key, value)
    assert result.exit_code == 2
    assert key in result.stderr and repr(value) in result.stderr and allowed in result.stderr
    assert "Traceback" not in result.output
    assert not isolated_settings.exists()


def test_unknown_key_is_rejected_with_the_known_keys(run_cli: CliInvoker) -> None:
    for args in (("set", "colour", "red"), ("get", "colour"), ("unset", "colour")):
        result = run_cli("config", *args)
        assert result.exit_code == 2
        assert "unknown config key 'colour'" in result.stderr
        assert "quality" in result.stderr


def test_unknown_key_in_file_names_the_file(run_cli: CliInvoker, isolated_settings: Path) -> None:
    isolated_settings.write_text('colour = "red"\n')
    result = run_cli("config", "show")
    assert result.exit_code == 2
    assert str(isolated_settings) in result.stderr and "unknown key 'colour'" in result.stderr


def test_bad_value_in_file_names_file_key_and_allowed(run_cli: CliInvoker, isolated_settings: Path) -> None:
    isolated_settings.write_text("quality = 500\n")
    result = run_cli("config", "get", "quality")
    assert result.exit_code == 2
    assert str(isolated_settings) in result.stderr
    assert "500" in result.stderr and "from 1 to 100" in result.stderr


def test_bad_env_value_names_the_variable(run_cli: CliInvoker) -> None:
    result = run_cli("config", "get", "tile", env={"FLOWSR_TILE": "huge"})
    assert result.exit_code == 2
    assert "FLOWSR_TILE" in result.stderr and "'huge'" in result.stderr


def test_broken_toml_reports_path_and_line(run_cli: CliInvoker, isolated_settings: Path) -> None:
    isolated_settings.write_text('device = "cpu"\nquality = = 3\n')
    for args in (("show",), ("get", "device"), ("set", "tile", "64")):
        result = run_cli("config", *args)
        assert result.exit_code == 2
        assert str(isolated_settings) in result.stderr
        assert "line 2" in result.stderr
        assert "Traceback" not in result.output
    assert isolated_settings.read_text() == 'device = "cpu"\nquality = = 3\n'


def test_unreadable_config_is_a_usage_error(isolated_settings: Path) -> None:
    isolated_settings.mkdir()
    with pytest.raises(UsageError, match="cannot read"):
        config.read_file_values(isolated_settings)


def test_every_setting_has_help_and_a_valid_default() -> None:
    for setting in config.SETTINGS.values():
        assert setting.help and setting.allowed
        default = setting.default_value()
        if default is not None:
            assert setting.parse(config.format_value(default)) == default
