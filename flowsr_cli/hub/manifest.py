"""The manifests of named models: flowsr's own registry.json, the user's models.json and the cache's
imported.json (sha256 records of imported models), parsed strictly, and the one rule for model names, so a
name never leads outside the cache."""

from __future__ import annotations

import json
import math
import re
import reprlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from flowsr_cli.config import config_path
from flowsr_cli.errors import FlowsrError, UsageError

MANIFEST_VERSION = 1
USER_MANIFEST = "models.json"
IMPORTED_MANIFEST = "imported.json"
MODEL_SUFFIX = ".safetensors"
MAX_NAME_LENGTH = 100
NAME_RULE = (
    f"use letters, digits, '.', '_' or '-' (starting with a letter or digit), at most {MAX_NAME_LENGTH} "
    f"characters, not ending in {MODEL_SUFFIX}"
)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
UPSCALE = "upscale"
RESCALE = "rescale"
TASKS = (UPSCALE, RESCALE)
"""What a model does: super-resolution for `upscale`/`eval`/`train`, or image rescaling for `flowsr rescale`."""
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_SHORT = reprlib.Repr()
"""Values quoted in messages, shortened (a manifest can hold anything)."""
_SHORT.maxstring = _SHORT.maxother = 80


@dataclass(frozen=True)
class ModelEntry:
    """One named model: where its single .safetensors file comes from and how to check it."""

    name: str
    description: str = ""
    sha256: str = ""
    size: int | None = None
    url: str | None = None
    bundled: str | None = None
    """Package-relative location of a file that ships inside flowsr (works offline)."""
    scales: tuple[float, float] | None = None
    source: str = "registry"
    """registry (the package's manifest), user (the user's manifest) or imported (a converted checkpoint)."""
    checkpoint: str | None = None
    """For an imported model: the checkpoint it was converted from (to import it again)."""
    prior: str | None = None
    """For a model imported with ``--prior``: the original learned prior's checkpoint."""
    task: str = UPSCALE
    """One of :data:`TASKS`: which commands take the model (and list it in their usage errors)."""

    def as_manifest(self) -> dict[str, Any]:
        """The entry as stored in a manifest (the task only when it is not the default)."""
        stored = {key: value for key, value in asdict(self).items() if value not in (None, "")}
        for key in ("name", "source", "checkpoint", "prior"):
            stored.pop(key, None)
        if stored.get("task") == UPSCALE:
            del stored["task"]
        return stored


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a model (None when it can): only a safe file name stem is a name."""
    if _NAME.fullmatch(name) is None or len(name) > MAX_NAME_LENGTH or name.endswith(MODEL_SUFFIX):
        return f"{_SHORT.repr(name)} is not a valid model name: {NAME_RULE}"
    return None


def check_name(name: str, origin: str = "") -> str:
    """``name`` when it can name a model, else a UsageError (after ``origin``, e.g. ``--name``, if given)."""
    problem = name_problem(name)
    if problem is not None:
        raise UsageError(f"{origin} {problem}" if origin else problem)
    return name


class ManifestError(ValueError):
    """A manifest's content is not what flowsr writes; the message says where and what (the caller names
    the file)."""


def load_document(text: str) -> dict[str, Any]:
    """The ``models`` table of a manifest's text, checked for the manifest's outer shape."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise ManifestError("not valid JSON (nested too deeply)") from None
    if not isinstance(document, dict):
        raise ManifestError(
            f"expected a JSON object with 'version' {MANIFEST_VERSION} and 'models', not {_kind(document)}"
        )
    if document.get("version") != MANIFEST_VERSION:
        raise ManifestError(
            f"version {_SHORT.repr(document.get('version'))} is not the one flowsr reads ({MANIFEST_VERSION})"
        )
    models = document.get("models")
    if not isinstance(models, dict):
        raise ManifestError(f"'models' must be a JSON object of named models, not {_kind(models)}")
    for name in models:
        problem = name_problem(name)
        if problem is not None:
            raise ManifestError(problem)
    return models


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The ``models`` table of the manifest at ``path``; None when there is none; ManifestError if it is malformed."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise ManifestError("not UTF-8 text") from None
    except OSError as exc:
        raise ManifestError(f"cannot read it ({exc.strerror or exc})") from None
    return load_document(text)


def _kind(value: Any) -> str:
    """A JSON type's name for messages: ``a list``, ``a string``..."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a number")


_Check = Callable[[Any], bool]
_FIELDS: dict[str, tuple[_Check, str]] = {
    "description": (lambda value: isinstance(value, str), "a string"),
    "sha256": (lambda value: isinstance(value, str) and _SHA256.fullmatch(value) is not None, "64 hexadecimal digits"),
    "size": (lambda value: type(value) is int and value >= 1, "an integer >= 1"),
    "url": (lambda value: isinstance(value, str) and value.startswith(("https://", "http://")), "an http(s) URL"),
    "scales": (
        lambda value: (
            isinstance(value, list)
            and len(value) == 2
            and all(type(scale) in (int, float) and math.isfinite(scale) and scale >= 1 for scale in value)
            and value[0] <= value[1]
        ),
        "[smallest, largest] scale, numbers >= 1",
    ),
    "bundled": (lambda value: isinstance(value, str) and value.startswith("weights/"), "a file under weights/"),
    "task": (lambda value: value in TASKS, " or ".join(repr(task) for task in TASKS)),
}
_USER_FIELDS = ("description", "sha256", "size", "url", "scales", "task")
_USER_REQUIRED = ("sha256", "url")


def parse_entry(name: str, values: Any, source: str, allowed: tuple[str, ...], required: tuple[str, ...]) -> ModelEntry:
    """One manifest entry, every field checked; ManifestError names the model and the field."""
    if not isinstance(values, dict):
        raise ManifestError(f"model {name!r}: expected a JSON object of fields, not {_kind(values)}")
    for key, value in values.items():
        if key not in allowed:
            raise ManifestError(f"model {name!r}: unknown field {_SHORT.repr(key)} (allowed: {', '.join(allowed)})")
        check, wanted = _FIELDS[key]
        if value is not None and not check(value):
            raise ManifestError(f"model {name!r}: field {key!r} is {_SHORT.repr(value)}; expected {wanted}")
    missing = [key for key in required if values.get(key) is None]
    if missing:
        raise ManifestError(f"model {name!r}: missing field {missing[0]!r}")
    scales = values.get("scales")
    return ModelEntry(name=name, source=source, **{**values, "scales": tuple(scales) if scales else None})


def user_manifest_path() -> Path:
    """The user's manifest, beside the config file."""
    return config_path().parent / USER_MANIFEST


def user_entries() -> dict[str, ModelEntry]:
    """The entries of the user's manifest; a UsageError names the file and the problem if it is malformed."""
    path = user_manifest_path()
    try:
        models = read_manifest(path) or {}
        return {
            name: parse_entry(name, values, "user", _USER_FIELDS, _USER_REQUIRED) for name, values in models.items()
        }
    except ManifestError as exc:
        raise UsageError(f"model manifest {path}: {exc}") from None


def package_entries() -> dict[str, ModelEntry]:
    """The models that come with flowsr (registry.json in this package)."""
    text = resources.files("flowsr_cli.hub").joinpath("registry.json").read_text(encoding="utf-8")
    try:
        models = load_document(text)
        return {name: parse_entry(name, values, "registry", tuple(_FIELDS), ()) for name, values in models.items()}
    except ManifestError as exc:
        raise FlowsrError(f"the package's registry.json: {exc}; reinstall flowsr") from None


def check_record(name: str, record: Any) -> None:
    """An imported-model record: {"sha256": hex, "checkpoint": text}, for a model imported with its learned prior
    "prior": text, and for an image rescaling model "task": "rescale"; ManifestError otherwise."""
    required, allowed = {"sha256", "checkpoint"}, {"sha256", "checkpoint", "prior", "task"}
    if not isinstance(record, dict) or not required <= set(record) <= allowed:
        raise ManifestError(f"model {name!r}: expected 'sha256', 'checkpoint' and optionally 'prior' and 'task'")
    if not isinstance(record["sha256"], str) or _SHA256.fullmatch(record["sha256"]) is None:
        raise ManifestError(f"model {name!r}: 'sha256' is not 64 hexadecimal digits")
    if record.get("task", UPSCALE) not in TASKS:
        raise ManifestError(f"model {name!r}: 'task' is not one of {', '.join(TASKS)}")
    for key in ("checkpoint", "prior"):
        if not isinstance(record.get(key, ""), str):
            raise ManifestError(f"model {name!r}: {key!r} is not a string")


def manifest_bytes(models: dict[str, Any]) -> bytes:
    """A manifest's file content for ``models``."""
    return (json.dumps({"version": MANIFEST_VERSION, "models": models}, indent=2) + "\n").encode("utf-8")
