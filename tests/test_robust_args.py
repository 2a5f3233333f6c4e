"""Bad arguments and settings through the real CLI: every invalid flag, argument or config value is exit 2
with one error naming it, the value and what is allowed; a corrupt config file never blocks
`flowsr config path` nor `flowsr config unset` (which edits a file that is not TOML line by line)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomlkit
import typer.main
from PIL import Image as PILImage
from typer.testing import Result

from flowsr_cli import config
from flowsr_cli.cli import app
from tests.conftest import CliInvoker

pytestmark = pytest.mark.robustness

SHA = "0" * 64
SEEDS = f"an integer from 0 to {2**64 - 1}"
CONTEXT: dict[str, tuple[str, ...]] = {
    "upscale": ("{tmp}/in.png", "--scale", "2"),
    "eval": ("{tmp}",),
    "train flow": ("{tmp}", "--out", "{tmp}/out"),
    "train prior": ("{tmp}", "--flow", "linf", "--out", "{tmp}/out"),
    "train rescale": ("{tmp}", "--out", "{tmp}/out"),
    "models import": ("{tmp}/original.pth",),
    "models add": ("mirror-model", "https://example.invalid/m.safetensors", "--sha256", SHA),
    "rescale down": ("{tmp}/in.png", "--scale", "4"),
    "rescale up": ("{tmp}/in.png",),
    "rescale eval": ("{tmp}",),
}
"""Arguments that make the rest of a command line valid, so only the value under test is wrong."""


@dataclass(frozen=True)
class Bad:
    """One invalid value for one parameter, and what the error must say about it."""

    command: str
    param: str
    """An option's first flag (``--scale``) or an argument's name in capitals (``NAME``)."""
    args: tuple[str, ...]
    value: str
    allowed: str
    names: str
    """What identifies the parameter in the message: its flag, unless the message names it otherwise."""
    shown: str
    """How the value appears in the message: its repr, unless the message prints it bare."""

    @property
    def id(self) -> str:
        """The test id: command, parameter and value."""
        return f"{self.command} {self.param} {self.value!r}"


def option(
    command: str, flag: str, value: str, allowed: str, names: str | None = None, shown: str | None = None
) -> Bad:
    """A bad value for an option, given after the command's valid context (a repeated option: the last wins)."""
    args = (*CONTEXT.get(command, ()), flag, value)
    return Bad(command, flag, args, value, allowed, names or flag, shown or repr(value))


def argument(command: str, param: str, args: tuple[str, ...], value: str, allowed: str, names: str) -> Bad:
    """A bad value for a positional argument; ``args`` is the whole line after the command."""
    return Bad(command, param, args, value, allowed, names, repr(value))


def options(command: str, flag: str, values: tuple[str, ...], allowed: str) -> list[Bad]:
    """Several bad values for one option, all with the same allowed values."""
    return [option(command, flag, value, allowed) for value in values]


SETTING_FLAGS = (
    ("--consistency", ("maybe",), "auto, on or off"),
    (
        "--device",
        ("gpu", "cuda:x", "cuda:99999999999999999999", "cuda:128", "cuda:\u0663"),
        "auto, cpu, cuda or cuda:N",
    ),
    ("--precision", ("fp8",), "auto, fp32, fp16 or bf16"),
    ("--tile", ("-1", "big"), "auto or an integer >= 0"),
    ("--tile-pad", ("-8", "wide"), "auto or an integer >= 0"),
    ("--format", ("gif",), "same, png, jpg, webp, tiff or bmp"),
    ("--suffix", ("out/{size}", "_{scale}", "{", "_{size", "}"), "text without '/', using only the field {size}"),
    ("--quality", ("0", "101", "best"), "an integer from 1 to 100"),
)
TRAINING_FLAGS = (
    ("--steps", ("-1", "many"), "an integer >= 0"),
    ("--time-budget", ("-1", "inf", "long"), "a number >= 0"),
    ("--batch-size", ("0", "x"), "an integer >= 1"),
    ("--lr", ("0", "-1e-4", "nan", "fast"), "a number > 0"),
    ("--seed", ("-1", str(2**64), "x"), SEEDS),
    ("--workers", ("-1", "two"), "an integer >= 0"),
    ("--device", ("gpu",), "auto, cpu, cuda or cuda:N"),
)
CLUSTER_FLAGS = (
    ("--backend", ("tensorrt",), "torch, onnx or ray"),
    ("--address", ("nowhere", "host:port", "host:0", "ray://:80"), "auto, HOST:PORT or ray://HOST:PORT"),
    ("--workers", ("0", "two"), "an integer >= 1"),
    ("--cpus-per-worker", ("0", "-1", "x"), "a number > 0"),
    ("--gpus-per-worker", ("-1", "nan"), "a number >= 0"),
)
"""The flags of `--backend ray`, on every command that has them (`upscale`'s --backend is among its others)."""
UPSCALERS = "linf, linf-lp, srflow, srflow-lp, hcflow, hcflow-lp"
RESCALERS = "hcflow-rescale-x2, hcflow-rescale-x4"
UNKNOWN_MODEL = ("unknown model", f"available: bicubic, {UPSCALERS}, or a path")
UNKNOWN_RESCALER = ("unknown model", f"image rescaling models: {RESCALERS}, or a path")
NO_SUCH_MODEL = ("no model named", f"known: {UPSCALERS}, {RESCALERS}")
KNOWN_FLOWS = f"known: {UPSCALERS}, or a model file"
NOT_A_FLOW = "an image rescaling model, not a super-resolution flow; `flowsr train rescale` trains those"
NAME_RULE = "use letters, digits, '.', '_' or '-' (starting with a letter or digit)"
UNKNOWN_KEY = ("unknown config key", "known keys: model, device, precision")

CASES: list[Bad] = [
    option("upscale", "--scale", "abc", "a number >= 1"),
    option("upscale", "--scale", "0.5", "a number >= 1", shown="got 0.5"),
    option("upscale", "--scale", "inf", "a number >= 1", shown="got inf"),
    *options("upscale", "--width", ("0", "wide"), "an integer >= 1"),
    *options("upscale", "--height", ("-5", "1.5"), "an integer >= 1"),
    # A model name may come from the config or the environment, so the loader names "model", not the flag.
    option("upscale", "--model", "nope", UNKNOWN_MODEL[1], UNKNOWN_MODEL[0]),
    *[bad for flag, values, allowed in SETTING_FLAGS for bad in options("upscale", flag, values, allowed)],
    option("upscale", "--prior", "mean", "learned or gaussian"),
    option("upscale", "--backend", "tensorrt", "torch, onnx or ray"),
    *options("upscale", "--temperature", ("-0.1", "nan", "inf", "hot"), "a number >= 0"),
    *options("upscale", "--seed", ("1.5", "lucky"), "an integer"),
    *options("upscale", "--samples", ("0", "many"), "an integer >= 1"),
    *options("upscale", "--shard", ("4/4", "-1/4", "1of4"), "I/N with 0 <= I < N"),
    *[
        bad
        for command in ("upscale", "rescale down", "rescale up")
        for flag, values, allowed in CLUSTER_FLAGS
        if (command, flag) != ("upscale", "--backend")
        for bad in options(command, flag, values, allowed)
    ],
    option("eval", "--model", "nope", UNKNOWN_MODEL[1], UNKNOWN_MODEL[0]),
    *options("eval", "--scales", ("0.5", "2,x", "inf", ","), "comma-separated numbers >= 1"),
    option("eval", "--prior", "mean", "learned or gaussian"),
    *options("eval", "--temperatures", ("-1", "0.5,warm", "nan"), "comma-separated numbers >= 0"),
    *options("eval", "--runs", ("0", "x"), "an integer >= 1"),
    *options("eval", "--seed", ("1.5",), "an integer"),
    option("eval", "--baseline", "nearest", "bicubic or none"),
    option("eval", "--consistency", "maybe", "auto, on or off"),
    option("eval", "--precision", "fp8", "auto, fp32, fp16 or bf16"),
    option("eval", "--backend", "tensorrt", "torch, onnx or ray"),
    *options("eval", "--max-images", ("0", "all"), "an integer >= 1"),
    option("eval", "--device", "gpu", "auto, cpu, cuda or cuda:N"),
    option("train flow", "--arch", "linf-huge", "choose one of linf-edsr, linf-rrdb, linf-small, srflow, srflow-small"),
    option("train flow", "--init", "nope", KNOWN_FLOWS),
    option("train flow", "--init", "hcflow-rescale-x4", NOT_A_FLOW, shown="hcflow-rescale-x4"),
    *[bad for flag, values, allowed in TRAINING_FLAGS for bad in options("train flow", flag, values, allowed)],
    option("train prior", "--flow", "nope", KNOWN_FLOWS),
    option("train prior", "--flow", "hcflow-rescale-x2", NOT_A_FLOW, shown="hcflow-rescale-x2"),
    *options("train prior", "--arch", ("srflow-lp", "huge"), "for a linf flow choose one of lp, lp-small"),
    *[bad for flag, values, allowed in TRAINING_FLAGS for bad in options("train prior", flag, values[:1], allowed)],
    *options("train prior", "--latent-weight", ("-0.1", "nan", "heavy"), "a number >= 0"),
    *options("train rescale", "--scale", ("3", "1", "x", "4.0"), "2 or 4"),
    option("train rescale", "--arch", "huge", "choose one of hcflow-rescale, hcflow-rescale-small"),
    *[bad for flag, values, allowed in TRAINING_FLAGS for bad in options("train rescale", flag, values, allowed)],
    *options("models import", "--name", ("b@d", ".hidden"), NAME_RULE),
    argument("models add", "NAME", ("b@d", "https://example.invalid/m", "--sha256", SHA), "b@d", NAME_RULE, "name"),
    argument("models add", "URL", ("m", "ftp://host/m", "--sha256", SHA), "ftp://host/m", "an http(s) URL", "url"),
    *options("models add", "--sha256", ("abc", "g" * 64), "expected 64 hexadecimal digits"),
    *options("models add", "--size", ("0", "big"), "an integer >= 1"),
    *options("models add", "--task", ("denoise", "Rescale"), "upscale or rescale"),
    *[
        argument(f"models {verb}", "NAME", ("nope",), "nope", NO_SUCH_MODEL[1], NO_SUCH_MODEL[0])
        for verb in ("download", "verify", "path", "remove")
    ],
    *options("rescale down", "--scale", ("3", "x4"), "2 or 4"),
    option("rescale down", "--model", "nope", UNKNOWN_RESCALER[1], UNKNOWN_RESCALER[0]),
    *options("rescale down", "--seed", ("-1", str(2**63), "x"), f"an integer from 0 to {2**63 - 1}"),
    option("rescale down", "--format", "bmp", "png or webp or tiff or jpg"),
    *[
        bad
        for flag, values, allowed in SETTING_FLAGS
        if flag in ("--device", "--suffix", "--quality")
        for bad in options("rescale down", flag, values, allowed)
    ],
    option("rescale up", "--model", "nope", UNKNOWN_RESCALER[1], UNKNOWN_RESCALER[0]),
    *options("rescale up", "--temperature", ("-0.1", "nan", "hot"), "a number >= 0"),
    *[
        bad
        for flag, values, allowed in SETTING_FLAGS
        if flag not in ("--consistency", "--precision")
        for bad in options("rescale up", flag, values, allowed)
    ],
    *options("rescale eval", "--scale", ("3", "2,x", "2.0", ""), "2, 4 or 2,4"),
    *options("rescale eval", "--baseline", ("nearest", "bicubic,none"), "bicubic, sr, both comma-separated, or none"),
    option("rescale eval", "--model", "nope", UNKNOWN_RESCALER[1], UNKNOWN_RESCALER[0]),
    option("rescale eval", "--sr-model", "nope", UNKNOWN_MODEL[1], UNKNOWN_MODEL[0]),
    *options("rescale eval", "--seed", ("-1", str(2**63), "x"), f"an integer from 0 to {2**63 - 1}"),
    *options("rescale eval", "--max-images", ("0", "all"), "an integer >= 1"),
    option("rescale eval", "--device", "gpu", "auto, cpu, cuda or cuda:N"),
    argument("config get", "KEY", ("colour",), "colour", UNKNOWN_KEY[1], UNKNOWN_KEY[0]),
    argument("config set", "KEY", ("colour", "red"), "colour", UNKNOWN_KEY[1], UNKNOWN_KEY[0]),
    argument("config unset", "KEY", ("colour",), "colour", UNKNOWN_KEY[1], UNKNOWN_KEY[0]),
]

UNCONSTRAINED: dict[str, str] = {
    "upscale INPUTS": "files, folders, globs or -: each missing one is reported per input (exit 1)",
    "upscale --output": "a file, folder or -: checked against the inputs when the outputs are planned",
    **{
        f"rescale {direction} {param}": reason
        for direction in ("down", "up")
        for param, reason in (
            ("INPUTS", "files, folders, globs or -: each missing one is reported per input (exit 1)"),
            ("--output", "a file, folder or -: checked against the inputs when the outputs are planned"),
        )
    },
    "eval DATASETS": "folders of images, each checked to be a folder",
    "rescale eval DATASETS": "folders of images, each checked to be a folder",
    **{f"rescale eval --{kind}": "an output file path" for kind in ("json", "csv", "markdown")},
    "eval --json": "an output file path",
    "eval --csv": "an output file path",
    "eval --markdown": "an output file path",
    "eval --save-images": "an output folder path",
    "models import CHECKPOINT": "a checkpoint file path",
    "models import --prior": "a checkpoint file path (refusals: tests/families/*/test_*_lp_original.py)",
    "models add --description": "free text for `flowsr models list`",
    "config set VALUE": "checked for every key by test_config_set_refuses_a_bad_value",
    **{
        f"train {stage} {param}": reason
        for stage in ("flow", "prior", "rescale")
        for param, reason in (
            ("DATA", "folders of training images"),
            ("--out", "the run's output folder"),
            ("--recipe", "a recipe file, whose keys and values the recipe loader checks"),
            ("--resume", "a checkpoint file"),
            ("--val", "a folder of validation images"),
        )
    },
}
"""Parameters whose values are paths or free text: no value is invalid as such."""


def _value_parameters() -> set[str]:
    """Every parameter of every command that takes a value (flags excluded), as "command param"."""
    found: set[str] = set()

    def walk(command: Any, path: tuple[str, ...]) -> None:
        for param in command.params:
            if not getattr(param, "is_flag", False):
                name = param.opts[0] if param.param_type_name == "option" else param.name.upper()
                found.add(" ".join((*path, name)))
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return found


def _the_error(result: Result) -> str:
    """The single error a run reported: the `error:` line, or the text of Typer's error panel unwrapped."""
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    panel = re.findall(r"│ (.*?) *│", result.stderr) if "─ Error ─" in result.stderr else []
    assert len(lines) + (1 if panel else 0) == 1, result.stderr
    return lines[0] if lines else " ".join(panel)


def _assert_refused(result: Result, *parts: str) -> str:
    """Exit 2 with one error that contains every part; the error is returned."""
    assert result.exit_code == 2, result.output
    message = _the_error(result)
    assert all(part in message for part in parts), message
    return message


def test_every_value_taking_parameter_has_bad_values_or_a_reason() -> None:
    covered = {f"{case.command} {case.param}" for case in CASES}
    assert covered.isdisjoint(UNCONSTRAINED)
    assert _value_parameters() == covered | set(UNCONSTRAINED)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_bad_value_is_exit_2_naming_parameter_value_and_allowed(
    run_cli: CliInvoker, tmp_path: Path, isolated_settings: Path, case: Bad
) -> None:
    PILImage.new("RGB", (6, 4)).save(tmp_path / "in.png")
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in case.args]
    _assert_refused(run_cli(*case.command.split(), *args), case.names, case.shown, case.allowed)
    assert [path.name for path in tmp_path.iterdir()] == ["in.png"]
    assert not isolated_settings.exists()


BAD_SETTINGS: dict[str, str] = {
    "consistency": "maybe",
    "backend": "tensorrt",
    "model": "",
    "device": "tpu",
    "precision": "fp8",
    "tile": "-1",
    "tile_pad": "big",
    "format": "gif",
    "suffix": "out/{size}",
    "quality": "101",
    "max_pixels": "0",
    "max_output_pixels": "0",
    "max_samples": "0",
    "max_download_mb": "-5",
    "download_timeout": "0",
    "strip_metadata": "maybe",
    "cache_dir": " ",
    "offline": "sometimes",
    "compile": "often",
    "model_base_url": "ftp://mirror.example/models",
}
ANY_TEXT = {"backbone_dir": "a folder path, or empty for none; the folder is checked when a loss needs it"}
"""Settings every text is valid for, and why."""


def _as_toml(text: str) -> int | str:
    """The value as a user would write it in the config file: integers unquoted."""
    return int(text) if re.fullmatch(r"-?\d+", text) else text


def test_every_setting_has_a_bad_value_or_takes_any_text() -> None:
    assert set(BAD_SETTINGS) | set(ANY_TEXT) == set(config.SETTINGS)
    assert set(BAD_SETTINGS).isdisjoint(ANY_TEXT)


def _bad_setting(key: str) -> tuple[config.Setting, str]:
    assert key in BAD_SETTINGS, f"add a bad value for the new setting {key!r}"
    return config.SETTINGS[key], BAD_SETTINGS[key]


def _commands_reading(key: str, tmp_path: Path) -> list[tuple[str, ...]]:
    """Commands that resolve the setting ``key`` (`upscale` resolves them all before any work)."""
    return [("config", "get", key), ("upscale", str(tmp_path / "in.png"), "--scale", "2")]


EVERY_CHECKED_KEY = pytest.mark.parametrize("key", [key for key in config.SETTINGS if key not in ANY_TEXT])


@EVERY_CHECKED_KEY
def test_config_set_refuses_a_bad_value(run_cli: CliInvoker, isolated_settings: Path, key: str) -> None:
    setting, bad = _bad_setting(key)
    _assert_refused(run_cli("config", "set", "--", key, bad), "config set", key, repr(bad), setting.allowed)
    assert not isolated_settings.exists()


@EVERY_CHECKED_KEY
def test_bad_value_in_the_config_file_is_refused(
    run_cli: CliInvoker, tmp_path: Path, isolated_settings: Path, key: str
) -> None:
    setting, bad = _bad_setting(key)
    value = _as_toml(bad)
    isolated_settings.write_text(tomlkit.dumps({key: value}))
    for command in _commands_reading(key, tmp_path):
        result = run_cli(*command, env={setting.env_var: None})
        _assert_refused(result, f"config file {isolated_settings}", key, repr(value), setting.allowed)
    assert not any(tmp_path.iterdir())


@EVERY_CHECKED_KEY
def test_bad_value_in_the_environment_is_refused(run_cli: CliInvoker, tmp_path: Path, key: str) -> None:
    setting, bad = _bad_setting(key)
    for command in _commands_reading(key, tmp_path):
        result = run_cli(*command, env={setting.env_var: bad})
        _assert_refused(result, setting.env_var, key, repr(bad), setting.allowed)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("suffix", ["{", "}", "_{size", "size}", "{size!r}", "{size:>999999999}", "{0}", "{}"])
def test_config_set_refuses_a_suffix_that_is_not_a_name_template(
    run_cli: CliInvoker, isolated_settings: Path, suffix: str
) -> None:
    allowed = config.SETTINGS["suffix"].allowed
    _assert_refused(run_cli("config", "set", "--", "suffix", suffix), "config set", "suffix", repr(suffix), allowed)
    assert not isolated_settings.exists()


@pytest.mark.parametrize("suffix", ["{{size}}", "_{size}_{{v2}}", "-big"])
def test_literal_braces_in_a_suffix_are_kept(run_cli: CliInvoker, tmp_path: Path, suffix: str) -> None:
    PILImage.new("RGB", (6, 4)).save(tmp_path / "in.png")
    assert run_cli("config", "set", "--", "suffix", suffix).exit_code == 0
    result = run_cli("upscale", str(tmp_path / "in.png"), "--scale", "2")
    assert result.exit_code == 0, result.output
    assert (tmp_path / ("in" + suffix.format(size="x2") + ".png")).is_file()


CORRUPT: dict[str, bytes | None] = {
    "broken TOML": b'device = "cpu"\nquality = = 3\n',
    "binary garbage": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\x00",
    "a directory": None,
    "unknown keys": b'# laptop\ncolour = "red"\nquality = 90\n\n[window]\nwidth = 3\n',
    "bad values": b'# laptop\nquality = 500\ndevice = "tpu"\ntile = 64\n',
}
"""Config files flowsr cannot use, by what is wrong with them (None: a directory in the file's place)."""


def _corrupt(path: Path, kind: str) -> None:
    content = CORRUPT[kind]
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)


@pytest.mark.parametrize("kind", CORRUPT)
def test_config_path_works_whatever_the_file_holds(run_cli: CliInvoker, isolated_settings: Path, kind: str) -> None:
    _corrupt(isolated_settings, kind)
    result = run_cli("config", "path")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(isolated_settings)


@pytest.mark.parametrize("kind", CORRUPT)
def test_commands_that_read_settings_name_the_corrupt_file(
    run_cli: CliInvoker, tmp_path: Path, isolated_settings: Path, kind: str
) -> None:
    _corrupt(isolated_settings, kind)
    for command in (("config", "get", "quality"), ("config", "show"), ("upscale", str(tmp_path), "--scale", "2")):
        _assert_refused(run_cli(*command), f"config file {isolated_settings}: ")


def test_unset_works_on_a_file_that_is_not_toml_and_keeps_every_other_byte(
    run_cli: CliInvoker, isolated_settings: Path
) -> None:
    _corrupt(isolated_settings, "broken TOML")
    removed = run_cli("config", "unset", "quality")
    assert removed.exit_code == 0 and "quality removed" in removed.stdout
    assert isolated_settings.read_bytes() == b'device = "cpu"\n'
    assert run_cli("config", "get", "device").stdout.strip() == "cpu", "the file is valid TOML again"

    _corrupt(isolated_settings, "binary garbage")
    absent = run_cli("config", "unset", "quality")
    assert absent.exit_code == 0 and "quality was not set" in absent.stdout
    assert isolated_settings.read_bytes() == CORRUPT["binary garbage"]


def test_unset_on_a_directory_in_place_of_the_file_says_it_cannot_read_it(
    run_cli: CliInvoker, isolated_settings: Path
) -> None:
    _corrupt(isolated_settings, "a directory")
    _assert_refused(run_cli("config", "unset", "quality"), f"config file {isolated_settings}: cannot read")
    assert isolated_settings.is_dir()


def test_unset_removes_unknown_keys_as_the_error_suggests(run_cli: CliInvoker, isolated_settings: Path) -> None:
    _corrupt(isolated_settings, "unknown keys")
    assert "remove it: flowsr config unset colour" in _the_error(run_cli("config", "get", "quality"))
    for key in ("colour", "window"):
        result = run_cli("config", "unset", key)
        assert result.exit_code == 0, result.output
        assert f"{key} removed" in result.stdout
    text = isolated_settings.read_text()
    assert text.startswith("# laptop\n") and "colour" not in text and "window" not in text
    assert run_cli("config", "get", "quality").stdout.strip() == "90"
    _assert_refused(run_cli("config", "unset", "colour"), "unknown config key 'colour'")


def test_unset_removes_keys_with_invalid_values(run_cli: CliInvoker, isolated_settings: Path) -> None:
    _corrupt(isolated_settings, "bad values")
    for key in ("quality", "device"):
        result = run_cli("config", "unset", key)
        assert result.exit_code == 0, result.output
        assert f"{key} removed" in result.stdout
    assert isolated_settings.read_text() == "# laptop\ntile = 64\n"
    assert run_cli("config", "get", "tile").stdout.strip() == "64"
