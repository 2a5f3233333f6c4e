"""User settings: declared once here, resolved as flag > FLOWSR_* environment > config file > default."""

from __future__ import annotations

import math
import os
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowsr_cli.errors import UsageError

CONFIG_ENV = "FLOWSR_CONFIG"
ENV_PREFIX = "FLOWSR_"


class SettingValueError(ValueError):
    """A raw value does not fit a setting; the message says what is allowed."""


@dataclass(frozen=True)
class Setting:
    """One user setting: its name, how a raw value becomes a typed one, its default and help."""

    key: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    allowed: str

    def default_value(self) -> Any:
        """The built-in default; a callable default is computed when asked for (e.g. platform folders)."""
        return self.default() if callable(self.default) else self.default

    @property
    def env_var(self) -> str:
        """The environment variable that sets this key."""
        return ENV_PREFIX + self.key.upper()

    def to_toml(self, value: Any) -> Any:
        """The value as it is stored in the TOML file."""
        return str(value) if isinstance(value, Path) else value


def _choice(*choices: str, aliases: Mapping[str, str] | None = None) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        text = str(raw).strip().lower()
        text = (aliases or {}).get(text, text)
        if text not in choices:
            raise SettingValueError("")
        return text

    return parse


def _integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[Any], int]:
    def parse(raw: Any) -> int:
        if isinstance(raw, bool):
            raise SettingValueError("")
        try:
            value = int(str(raw).strip().replace("_", ""))
        except ValueError as exc:
            raise SettingValueError("") from exc
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise SettingValueError("")
        return value

    return parse


def _number(minimum: float, exclusive: bool = False) -> Callable[[Any], float]:
    def parse(raw: Any) -> float:
        if isinstance(raw, bool):
            raise SettingValueError("")
        try:
            value = float(str(raw).strip())
        except ValueError as exc:
            raise SettingValueError("") from exc
        if not math.isfinite(value) or value < minimum or (exclusive and value == minimum):
            raise SettingValueError("")
        return value

    return parse


def _auto_or_integer(minimum: int) -> Callable[[Any], str | int]:
    as_integer = _integer(minimum)

    def parse(raw: Any) -> str | int:
        if str(raw).strip().lower() == "auto":
            return "auto"
        return as_integer(raw)

    return parse


def _boolean(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise SettingValueError("")


MAX_CUDA_INDEX = 127
"""The largest CUDA device index torch represents (its device index is 8 bits; larger ones wrap)."""


def _device(raw: Any) -> str:
    text = str(raw).strip().lower()
    match = re.fullmatch(r"auto|cpu|cuda(?::([0-9]+))?", text)
    if match is None:
        raise SettingValueError("")
    if match[1] is None:
        return text
    index = int(match[1])
    if index > MAX_CUDA_INDEX:
        raise SettingValueError("")
    return f"cuda:{index}"


BICUBIC = "bicubic"
"""The model name of the built-in bicubic baseline, which needs no model file."""


RAY = "ray"
"""The ``backend`` that runs `upscale` and `rescale` batches on a Ray cluster (the ``ray`` extra), whose workers
run the models with PyTorch."""
MODEL_BACKENDS = ("torch", "onnx")
"""The backends that run a model's networks in this process (what `scripts/bench.py` compares)."""
BACKEND_CHOICES = (*MODEL_BACKENDS, RAY)
"""What runs a model (the ``backend`` setting, ``--backend``): PyTorch, ONNX Runtime for its plain networks (the
``onnx`` extra), or PyTorch on the workers of a Ray cluster (the ``ray`` extra). Every value is listed here once;
the setting checks values against this tuple alone."""


def model_backend(backend: str) -> str:
    """What runs the model's networks in this process for the ``backend`` setting: itself, or PyTorch for ``ray``
    (whose workers run PyTorch; here, `eval` and each worker)."""
    return MODEL_BACKENDS[0] if backend == RAY else backend


def _one_of(choices: tuple[str, ...]) -> str:
    """``a, b or c``: the allowed values of a choice, for messages."""
    return ", ".join(choices[:-1]) + " or " + choices[-1] if len(choices) > 1 else choices[0]


CONSISTENCY_CHOICES = ("auto", "on", "off")
"""The values of the ``consistency`` setting (``--consistency``)."""


def consistency_default(metadata: Mapping[str, Any] | None) -> bool:
    """What ``consistency = auto`` does for a model with this file metadata (None: the bicubic baseline).

    Off for bicubic and for imported original checkpoints (metadata ``source``: they reproduce their original
    code); a model file's own ``consistency`` entry (``on``/``off``, written where it was measured) otherwise
    decides; on for other models flowsr trained, where back-projection measured better (docs/quality.md)."""
    if metadata is None:
        return False
    if metadata.get("consistency") in ("on", "off"):
        return metadata["consistency"] == "on"
    return "source" not in metadata


def _model_name(raw: Any) -> str:
    text = str(raw).strip()
    if not text:
        raise SettingValueError("")
    return text


def _suffix(raw: Any) -> str:
    """A file-name template whose only replacement field is a bare ``{size}``; ``{{`` and ``}}`` are braces."""
    text = str(raw)
    if "/" in text or os.sep in text or "\0" in text:
        raise SettingValueError("")
    try:
        fields = [field for _, *field in string.Formatter().parse(text) if field[0] is not None]
    except ValueError as exc:
        raise SettingValueError("") from exc
    if any(field != ["size", "", None] for field in fields):
        raise SettingValueError("")
    return text


def _path(raw: Any) -> Path:
    text = str(raw).strip()
    if not text:
        raise SettingValueError("")
    return Path(text).expanduser()


def _optional_path(raw: Any) -> Path | None:
    return _path(raw) if str(raw).strip() else None


def _url(raw: Any) -> str:
    text = str(raw).strip()
    if text and re.fullmatch(r"https?://[^/\s]+(/\S*)?", text, re.IGNORECASE) is None:
        raise SettingValueError("")
    return text


def _default_cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("flowsr"))


SETTINGS: dict[str, Setting] = {
    setting.key: setting
    for setting in (
        Setting(
            "model",
            _model_name,
            "linf-lp",
            "Model used by `upscale` (a registry name or a .safetensors path).",
            "a model name or path",
        ),
        Setting(
            "device", _device, "auto", "Where models run.", f"auto, cpu, cuda or cuda:N (N from 0 to {MAX_CUDA_INDEX})"
        ),
        Setting(
            "precision",
            _choice("auto", "fp32", "fp16", "bf16"),
            "auto",
            "Numeric precision of model inference.",
            "auto, fp32, fp16 or bf16",
        ),
        Setting(
            "backend",
            _choice(*BACKEND_CHOICES),
            "torch",
            "What runs the model: torch; onnx (its plain networks in ONNX Runtime, pip install 'flowsr[onnx]'; "
            "without it PyTorch runs them, with a note); or ray (`upscale` and `rescale` batches on a Ray cluster, "
            "pip install 'flowsr[ray]').",
            _one_of(BACKEND_CHOICES),
        ),
        Setting(
            "compile",
            _boolean,
            False,
            "torch.compile the parts of a model that eager PyTorch runs as many small passes (LINF's Fourier "
            "features): faster for long batches once compiled (the first image waits for the compile); needs a C++ "
            "compiler on the CPU, Triton on CUDA (without one: a note, and no compiling).",
            "true or false",
        ),
        Setting(
            "tile",
            _auto_or_integer(0),
            "auto",
            "Tile side in input pixels; auto fits free memory; 0 = no tiling.",
            "auto or an integer >= 0",
        ),
        Setting(
            "tile_pad",
            _auto_or_integer(0),
            "auto",
            "Context margin around tiles in input pixels.",
            "auto or an integer >= 0",
        ),
        Setting(
            "format",
            _choice("same", "png", "jpeg", "webp", "tiff", "bmp", aliases={"jpg": "jpeg", "tif": "tiff"}),
            "same",
            "Output file format; `same` keeps the input's.",
            "same, png, jpg, webp, tiff or bmp",
        ),
        Setting(
            "suffix",
            _suffix,
            "_{size}",
            "Added to output file names; {size} is the request as given: x3.5, w1920 or h1080.",
            "text without '/', using only the field {size} ({{ and }} for literal braces)",
        ),
        Setting("quality", _integer(1, 100), 95, "JPEG and WebP quality.", "an integer from 1 to 100"),
        Setting(
            "max_pixels",
            _integer(1),
            200_000_000,
            "Largest input image (width x height) that will be decoded.",
            "an integer >= 1",
        ),
        Setting(
            "max_output_pixels",
            _integer(1),
            250_000_000,
            "Largest output of one input (width x height, all its samples together) that will be made.",
            "an integer >= 1",
        ),
        Setting(
            "max_samples",
            _integer(1),
            100,
            "Most samples (--samples) one run may write per input.",
            "an integer >= 1",
        ),
        Setting(
            "max_download_mb",
            _integer(1),
            4096,
            "Largest model download in MiB when the registry gives no size (a listed size is never exceeded).",
            "an integer >= 1",
        ),
        Setting(
            "download_timeout",
            _number(0, exclusive=True),
            3600.0,
            "Seconds one model download may take in all before it is abandoned.",
            "a number > 0",
        ),
        Setting(
            "consistency",
            _choice(*CONSISTENCY_CHOICES),
            "auto",
            "Back-project each output so that its MATLAB-bicubic shrink matches the input; auto: on for models "
            "flowsr trained, off for bicubic and imported original checkpoints.",
            "auto, on or off",
        ),
        Setting(
            "strip_metadata", _boolean, False, "Drop ICC profile, EXIF, DPI and text from outputs.", "true or false"
        ),
        Setting(
            "cache_dir", _path, _default_cache_dir, "Where downloaded models and backbones are kept.", "a folder path"
        ),
        Setting(
            "backbone_dir",
            _optional_path,
            None,
            "Folder with alexnet_features.pth / vgg16_features.pth; unset: torchvision's checkpoints "
            "are downloaded once into cache_dir/backbones.",
            "a folder path, or empty for none",
        ),
        Setting(
            "offline", _boolean, False, "Never use the network; missing files are reported instead.", "true or false"
        ),
        Setting(
            "model_base_url",
            _url,
            "",
            "Replaces the base of every download URL: registry models and the LPIPS/VGG backbones "
            "(a mirror with the same file names).",
            "an http(s) URL, or empty for the registry's own",
        ),
    )
}


def config_path() -> Path:
    """The user config file: ``$FLOWSR_CONFIG`` or ``config.toml`` in the platform's user config dir."""
    override = os.environ.get(CONFIG_ENV)
    if override:
        return Path(override).expanduser()
    from platformdirs import user_config_dir

    return Path(user_config_dir("flowsr")) / "config.toml"


def lookup(key: str) -> Setting:
    """The declared setting ``key``; a UsageError lists the known keys otherwise."""
    try:
        return SETTINGS[key]
    except KeyError:
        raise UsageError(f"unknown config key {key!r}; known keys: {', '.join(SETTINGS)}") from None


def parse_value(setting: Setting, raw: Any, origin: str) -> Any:
    """Turn ``raw`` into the setting's typed value, or raise a UsageError naming origin, value and what is allowed."""
    try:
        return setting.parse(raw)
    except SettingValueError:
        raise UsageError(f"{origin}: invalid value {raw!r} for {setting.key}; allowed: {setting.allowed}") from None


def flag_parser(flag: str, parse: Callable[[Any], Any], allowed: str) -> Callable[[Any], Any]:
    """A Typer ``parser=``: ``parse(raw)``, or, if that raises ValueError, a UsageError (one line, exit 2)
    naming the flag, the value and what is allowed, as for a bad setting."""

    def parse_flag(raw: Any) -> Any:
        try:
            return parse(raw)
        except ValueError:
            raise UsageError(f"{flag}: invalid value {raw!r}; allowed: {allowed}") from None

    return parse_flag


PRIOR_CHOICES = ("learned", "gaussian")
"""How a flow's latent can be chosen (``--prior``): predicted by its learned prior, or Gaussian."""


def choice_flag(flag: str, choices: tuple[str, ...]) -> Callable[[Any], str]:
    """A Typer ``parser=`` for a flag taking one of ``choices``; any other value is a UsageError naming the
    flag, the value and the choices."""

    def choose(raw: Any) -> str:
        if raw not in choices:
            raise ValueError(raw)
        return str(raw)

    return flag_parser(flag, choose, " or ".join(choices))


def integer_flag(flag: str, minimum: int | None = None, maximum: int | None = None) -> Callable[[Any], int]:
    """A Typer ``parser=`` for an integer flag; a bad value is a UsageError naming the flag, the value and the range."""
    if minimum is None:
        allowed = "an integer"
    elif maximum is None:
        allowed = f"an integer >= {minimum}"
    else:
        allowed = f"an integer from {minimum} to {maximum}"
    return flag_parser(flag, _integer(minimum, maximum), allowed)


def number_flag(flag: str, minimum: float, exclusive: bool = False) -> Callable[[Any], float]:
    """A Typer ``parser=`` for a finite number >= ``minimum`` (> if ``exclusive``); a bad value is a UsageError
    naming the flag, the value and the range."""
    allowed = f"a number {'>' if exclusive else '>='} {minimum:g}"
    return flag_parser(flag, _number(minimum, exclusive), allowed)


def _read_document(path: Path) -> Any:
    import tomlkit
    from tomlkit.exceptions import ParseError

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return tomlkit.document()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"config file {path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return tomlkit.parse(text)
    except ParseError as exc:
        reason = str(exc).split(" at line ")[0]
        raise UsageError(f"config file {path}: invalid TOML at line {exc.line}, column {exc.col}: {reason}") from None


def read_file_values(path: Path) -> dict[str, Any]:
    """The typed values set in the config file at ``path`` (empty if it does not exist)."""
    document = _read_document(path)
    values: dict[str, Any] = {}
    for key, raw in document.unwrap().items():
        if key not in SETTINGS:
            raise UsageError(
                f"config file {path}: unknown key {key!r} (remove it: flowsr config unset {key}); "
                f"known keys: {', '.join(SETTINGS)}"
            )
        values[key] = parse_value(SETTINGS[key], raw, f"config file {path}")
    return values


@dataclass(frozen=True)
class ResolvedValue:
    """A setting's effective value and where it came from."""

    value: Any
    source: str


class Settings:
    """Effective settings for one command run, resolved lazily with their sources."""

    def __init__(self, flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> None:
        self._flags = {key: value for key, value in (flags or {}).items() if value is not None}
        self._environ = os.environ if environ is None else environ
        self._file_values: dict[str, Any] | None = None
        self.path = config_path()

    def _file(self) -> dict[str, Any]:
        if self._file_values is None:
            self._file_values = read_file_values(self.path)
        return self._file_values

    def resolve(self, key: str) -> ResolvedValue:
        """The value of ``key`` by precedence flag > environment > file > default, with its source."""
        setting = lookup(key)
        if key in self._flags:
            flag = "--" + key.replace("_", "-")
            return ResolvedValue(parse_value(setting, self._flags[key], flag), "flag")
        if setting.env_var in self._environ:
            raw = self._environ[setting.env_var]
            return ResolvedValue(parse_value(setting, raw, setting.env_var), f"env {setting.env_var}")
        file_values = self._file()
        if key in file_values:
            return ResolvedValue(file_values[key], f"file {self.path}")
        return ResolvedValue(setting.default_value(), "default")

    def __getitem__(self, key: str) -> Any:
        return self.resolve(key).value

    def validate(self) -> None:
        """Resolve every key once so that a bad value anywhere is reported before work starts."""
        for key in SETTINGS:
            self.resolve(key)


def set_value(key: str, raw: str) -> Any:
    """Validate ``raw`` for ``key`` and store it in the config file (comments and layout kept)."""
    setting = lookup(key)
    value = parse_value(setting, raw, "config set")
    path = config_path()
    document = _read_document(path)
    document[key] = setting.to_toml(value)
    _write_document(path, document)
    return value


def unset_value(key: str) -> bool:
    """Remove ``key`` from the config file; False if it was not set there. A key the file has but flowsr
    does not know (a typo, another version's) can be removed too, and so can a key of a file that is not
    valid TOML (line by line)."""
    path = config_path()
    try:
        document = _read_document(path)
    except UsageError:
        if path.is_dir():
            raise
        return _unset_lines(path, key)
    if key not in document:
        lookup(key)
        return False
    del document[key]
    _write_document(path, document)
    return True


def _unset_lines(path: Path, key: str) -> bool:
    """``unset`` for a file that is not valid TOML (or not text): drop the lines that assign ``key`` and
    keep every other byte, so a broken config file never blocks removing a setting from it."""
    name = re.escape(key.encode("utf-8"))
    assignment = re.compile(rb"^[ \t]*(?:%s|\"%s\"|'%s')[ \t]*=[^\n]*(?:\n|$)" % (name, name, name), re.MULTILINE)
    try:
        kept, removed = assignment.subn(b"", path.read_bytes())
    except OSError as exc:
        raise UsageError(f"config file {path}: cannot read: {exc.strerror or exc}") from None
    if not removed:
        lookup(key)
        return False
    _write_bytes(path, kept)
    return True


def _write_document(path: Path, document: Any) -> None:
    import tomlkit

    _write_bytes(path, tomlkit.dumps(document).encode("utf-8"))


def _write_bytes(path: Path, data: bytes) -> None:
    """Replace the config file atomically (creating its folder); a UsageError naming it if that fails."""
    from flowsr_cli.io.atomic import atomic_write_bytes

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise UsageError(f"config file {path}: cannot write: {exc.strerror or exc}") from None


def format_value(value: Any) -> str:
    """A value as the user would type it back into ``flowsr config set``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
