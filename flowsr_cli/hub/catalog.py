"""Named models: the package's registry manifest, the user's own entries, the cache, and resolving a
``--model`` value to a file (downloading it on first use).

Every model name is checked (:func:`name_problem`), so a name never leads outside the cache. A ``--model``
value written as a path (a folder separator, a leading ``~`` or the ``.safetensors`` suffix) is that file;
any other value is a name first, and a file of that name in the current folder is used only when no
model has the name. Models made by ``flowsr models import`` have their sha256 recorded in
``imported.json`` in the cache and are checked before use like downloaded ones.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import reprlib
import shlex
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

from flowsr_cli.config import Settings, config_path
from flowsr_cli.console import report_note, report_warning
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

    def as_manifest(self) -> dict[str, Any]:
        """The entry as stored in a manifest."""
        stored = {key: value for key, value in asdict(self).items() if value not in (None, "")}
        for key in ("name", "source", "checkpoint"):
            stored.pop(key, None)
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


def written_as_path(model: str) -> bool:
    """True when a ``--model`` value is spelled as a file path rather than a name."""
    separators = {"/", os.sep, os.altsep} - {None}
    return any(separator in model for separator in separators) or model.startswith("~") or model.endswith(MODEL_SUFFIX)


class _Invalid(ValueError):
    """A manifest's content is not what flowsr writes; the message says where and what."""


def _load_document(text: str) -> dict[str, Any]:
    """The ``models`` table of a manifest's text, checked for the manifest's outer shape."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Invalid(f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise _Invalid("not valid JSON (nested too deeply)") from None
    if not isinstance(document, dict):
        raise _Invalid(f"expected a JSON object with 'version' {MANIFEST_VERSION} and 'models', not {_kind(document)}")
    if document.get("version") != MANIFEST_VERSION:
        raise _Invalid(
            f"version {_SHORT.repr(document.get('version'))} is not the one flowsr reads ({MANIFEST_VERSION})"
        )
    models = document.get("models")
    if not isinstance(models, dict):
        raise _Invalid(f"'models' must be a JSON object of named models, not {_kind(models)}")
    for name in models:
        problem = name_problem(name)
        if problem is not None:
            raise _Invalid(problem)
    return models


def _read_manifest(path: Path) -> dict[str, Any] | None:
    """The ``models`` table of the manifest at ``path``; None when there is none; _Invalid if it is malformed."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise _Invalid("not UTF-8 text") from None
    except OSError as exc:
        raise _Invalid(f"cannot read it ({exc.strerror or exc})") from None
    return _load_document(text)


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
}
_USER_FIELDS = ("description", "sha256", "size", "url", "scales")
_USER_REQUIRED = ("sha256", "url")


def _entry(name: str, values: Any, source: str, allowed: tuple[str, ...], required: tuple[str, ...]) -> ModelEntry:
    """One manifest entry, every field checked; _Invalid names the model and the field."""
    if not isinstance(values, dict):
        raise _Invalid(f"model {name!r}: expected a JSON object of fields, not {_kind(values)}")
    for key, value in values.items():
        if key not in allowed:
            raise _Invalid(f"model {name!r}: unknown field {_SHORT.repr(key)} (allowed: {', '.join(allowed)})")
        check, wanted = _FIELDS[key]
        if value is not None and not check(value):
            raise _Invalid(f"model {name!r}: field {key!r} is {_SHORT.repr(value)}; expected {wanted}")
    missing = [key for key in required if values.get(key) is None]
    if missing:
        raise _Invalid(f"model {name!r}: missing field {missing[0]!r}")
    scales = values.get("scales")
    return ModelEntry(name=name, source=source, **{**values, "scales": tuple(scales) if scales else None})


def user_manifest_path() -> Path:
    """The user's manifest, beside the config file."""
    return config_path().parent / USER_MANIFEST


def _user_entries() -> dict[str, ModelEntry]:
    """The entries of the user's manifest; a UsageError names the file and the problem if it is malformed."""
    path = user_manifest_path()
    try:
        models = _read_manifest(path) or {}
        return {name: _entry(name, values, "user", _USER_FIELDS, _USER_REQUIRED) for name, values in models.items()}
    except _Invalid as exc:
        raise UsageError(f"model manifest {path}: {exc}") from None


def _package_entries() -> dict[str, ModelEntry]:
    """The models that come with flowsr (registry.json in this package)."""
    text = resources.files("flowsr_cli.hub").joinpath("registry.json").read_text(encoding="utf-8")
    try:
        models = _load_document(text)
        return {name: _entry(name, values, "registry", tuple(_FIELDS), ()) for name, values in models.items()}
    except _Invalid as exc:
        raise FlowsrError(f"the package's registry.json: {exc}; reinstall flowsr") from None


@dataclass
class Hub:
    """The models a run can name, and where their files are."""

    settings: Settings
    package: dict[str, ModelEntry] = field(init=False)
    """flowsr's own models: they need neither the user's manifest nor the cache's records."""
    _warned: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.package = _package_entries()

    @cached_property
    def user(self) -> dict[str, ModelEntry]:
        """The user's manifest's models (a name of flowsr's own is ignored); UsageError if it is malformed."""
        return {name: entry for name, entry in _user_entries().items() if name not in self.package}

    @property
    def registry(self) -> dict[str, ModelEntry]:
        """Every model a manifest lists: flowsr's own, then the user's."""
        return {**self.package, **self.user}

    @property
    def models_dir(self) -> Path:
        """Where downloaded and imported models live."""
        return Path(self.settings["cache_dir"]) / "models"

    @property
    def imported_manifest(self) -> Path:
        """Where the sha256 of each imported model is recorded."""
        return self.models_dir / IMPORTED_MANIFEST

    def cached_path(self, name: str) -> Path:
        """The cache location of a named model (it may not exist yet); always inside the cache."""
        return self.models_dir / f"{check_name(name)}{MODEL_SUFFIX}"

    def import_records(self) -> dict[str, dict[str, str]]:
        """What ``flowsr models import`` recorded: name -> {sha256, checkpoint}; UsageError if malformed."""
        try:
            records = _read_manifest(self.imported_manifest) or {}
            for name, record in records.items():
                _check_record(name, record)
        except _Invalid as exc:
            raise UsageError(
                f"imported-model records {self.imported_manifest}: {exc}; delete the file, then import "
                "your models again to record their sha256"
            ) from None
        return records

    def imported(self) -> dict[str, ModelEntry]:
        """Models in the cache that no manifest lists (converted with `flowsr models import`); a file whose
        name is not a valid model name is not a model."""
        if not self.models_dir.is_dir():
            return {}
        records, registry = self.import_records(), self.registry
        found = {}
        for path in sorted(self.models_dir.glob(f"*{MODEL_SUFFIX}")):
            name = path.name.removesuffix(MODEL_SUFFIX)
            if name in registry or name_problem(name) is not None or not path.is_file():
                continue
            record = records.get(name, {})
            found[name] = ModelEntry(
                name,
                "imported checkpoint",
                record.get("sha256", ""),
                source="imported",
                checkpoint=record.get("checkpoint"),
            )
        return found

    def entries(self) -> dict[str, ModelEntry]:
        """Every named model: registry, user and imported ones (UsageError if the user's records are malformed)."""
        return {**self.registry, **self.imported()}

    def find(self, name: str) -> ModelEntry | None:
        """The model called ``name``. flowsr's own models do not need the user's manifest or the cache's
        records, so a malformed one is then only a warning; any other name needs them."""
        if name in self.package:
            self._warn_if_user_models_are_broken()
            return self.package[name]
        return self.entries().get(name)

    def _warn_if_user_models_are_broken(self) -> None:
        if self._warned:
            return
        try:
            self.user  # noqa: B018 (reading it checks the user's manifest)
            self.import_records()
        except UsageError as problem:
            self._warned = True
            report_warning(f"{problem} (ignored: this run uses only flowsr's own models)")

    def url_of(self, entry: ModelEntry) -> str:
        """The entry's URL, its base rewritten by the model_base_url setting (FLOWSR_MODEL_BASE_URL) for mirrors."""
        if entry.url is None:
            raise FlowsrError(f"model {entry.name!r} has no download URL")
        base = self.settings["model_base_url"]
        if not base:
            return entry.url
        return base.rstrip("/") + "/" + entry.url.rsplit("/", 1)[-1]

    def local_path(self, entry: ModelEntry) -> Path:
        """Where the entry's file is read from: inside the package (bundled) or in the cache."""
        if entry.bundled is not None:
            return Path(str(resources.files("flowsr_cli").joinpath(entry.bundled)))
        return self.cached_path(entry.name)

    def fetch(self, entry: ModelEntry, progress: bool = True) -> Path:
        """The entry's file, downloaded into the cache first if it is not there (within the max_download_mb
        and download_timeout settings); a stored file is checked against its sha256 first."""
        from flowsr_cli.hub.download import DownloadError, DownloadLimits, RemoteFile, download

        path = self.local_path(entry)
        if path.is_file() or entry.bundled is not None or entry.source == "imported":
            if not path.is_file():
                raise FlowsrError(f"model {entry.name!r}: its file {path} is missing")
            _check_unchanged(entry, path)
            return path
        remote = RemoteFile(self.url_of(entry), entry.sha256.lower(), entry.size)
        limits = DownloadLimits(self.settings["max_download_mb"], self.settings["download_timeout"])
        try:
            return download(remote, path, offline=bool(self.settings["offline"]), progress=progress, limits=limits)
        except DownloadError as error:
            raise DownloadError(f"model {entry.name!r}: {error}") from error

    def resolve(self, model: str, progress: bool = True) -> Path | None:
        """The file a ``--model`` value names: a path when written as one, else a named model (downloaded on
        first use), else a file of that name in the current folder; None when it is none of these."""
        if written_as_path(model):
            return Path(model).expanduser()
        entry = self.find(model)
        here = Path(model)
        if entry is None:
            return here if here.is_file() else None
        if here.is_file():
            report_note(
                f"using the registered model {model!r}, not the file {model!r} in this folder (for the file: ./{model})"
            )
        return self.fetch(entry, progress)

    def add(self, entry: ModelEntry) -> Path:
        """Store a user entry in the user's manifest (atomically); returns the manifest's path."""
        from flowsr_cli.io.atomic import atomic_write_bytes

        check_name(entry.name, "name")
        if entry.name in self.package:
            raise UsageError(f"{entry.name!r} is a model of flowsr's own registry; choose another name")
        self.user  # noqa: B018 (never rewrite a manifest that is malformed: say so instead)
        path = user_manifest_path()
        models = _read_manifest(path) or {}
        models[entry.name] = entry.as_manifest()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, _manifest_bytes(models))
        return path

    def record_import(self, name: str, path: Path, checkpoint: Path) -> None:
        """Record the sha256 of the model file ``flowsr models import`` wrote for ``name`` (atomically)."""
        from flowsr_cli.hub.download import sha256_of

        with self._records() as records:
            records[name] = {"sha256": sha256_of(path), "checkpoint": str(checkpoint)}

    def forget_import(self, name: str) -> None:
        """Drop the record of an imported model whose file was removed."""
        with self._records() as records:
            records.pop(name, None)

    @contextlib.contextmanager
    def _records(self) -> Iterator[dict[str, dict[str, str]]]:
        """The imported-model records to change in place; written back atomically, one process at a time."""
        from flowsr_cli.io.atomic import atomic_write_bytes

        self.models_dir.mkdir(parents=True, exist_ok=True)
        with open(self.models_dir / f"{IMPORTED_MANIFEST}.lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            records = self.import_records()
            yield records
            atomic_write_bytes(self.imported_manifest, _manifest_bytes(records))


def _check_record(name: str, record: Any) -> None:
    """An imported-model record: {"sha256": hex, "checkpoint": text}; _Invalid otherwise."""
    if not isinstance(record, dict) or set(record) != {"sha256", "checkpoint"}:
        raise _Invalid(f"model {name!r}: expected the fields 'sha256' and 'checkpoint'")
    if not isinstance(record["sha256"], str) or _SHA256.fullmatch(record["sha256"]) is None:
        raise _Invalid(f"model {name!r}: 'sha256' is not 64 hexadecimal digits")
    if not isinstance(record["checkpoint"], str):
        raise _Invalid(f"model {name!r}: 'checkpoint' is not a string")


def _manifest_bytes(models: dict[str, Any]) -> bytes:
    return (json.dumps({"version": MANIFEST_VERSION, "models": models}, indent=2) + "\n").encode("utf-8")


def changed_digest(entry: ModelEntry, path: Path) -> str | None:
    """The sha256 of the file at ``path`` when it is not ``entry``'s published one; None when it matches
    or the entry publishes none."""
    from flowsr_cli.hub.download import sha256_of

    if not entry.sha256:
        return None
    actual = sha256_of(path)
    return None if actual == entry.sha256.lower() else actual


def reimport_command(entry: ModelEntry) -> str:
    """The command that imports ``entry`` again (and records its sha256)."""
    checkpoint = shlex.quote(entry.checkpoint) if entry.checkpoint else "CHECKPOINT"
    return f"flowsr models import {checkpoint} --name {entry.name} --force"


def _check_unchanged(entry: ModelEntry, path: Path) -> None:
    """Refuse a stored file whose sha256 is not its entry's (changed since download or import, or a
    tampered package). An imported file without a recorded sha256 (imported by a flowsr older than the
    records) is used with a warning that says how to record one."""
    if entry.source == "imported" and not entry.sha256:
        report_warning(
            f"model {entry.name!r}: {path} has no recorded sha256 (imported by an older flowsr), so it is used "
            f"unchecked; to record one: {reimport_command(entry)}"
        )
        return
    actual = changed_digest(entry, path)
    if actual is None:
        return
    if entry.bundled is not None:
        remedy = "reinstall flowsr"
    elif entry.source == "imported":
        remedy = f"import it again: `{reimport_command(entry)}`"
    else:
        remedy = f"`flowsr models remove {entry.name}`, then rerun"
    raise FlowsrError(
        f"model {entry.name!r}: {path} does not match its sha256 (expected {entry.sha256.lower()[:16]}…, "
        f"found {actual[:16]}…); it changed after it was stored: {remedy}"
    )
