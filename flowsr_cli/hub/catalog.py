"""Named models: flowsr's own, the user's and the imported ones, the cache, and resolving a ``--model``
value to a file (downloading it on first use); their manifests are read by :mod:`flowsr_cli.hub.manifest`.

Every model name is checked (:func:`~flowsr_cli.hub.manifest.name_problem`), so a name never leads outside
the cache. A ``--model``
value written as a path (a folder separator, a leading ``~`` or the ``.safetensors`` suffix) is that file;
any other value is a name first, and a file of that name in the current folder is used only when no
model has the name. Models made by ``flowsr models import`` have their sha256 recorded in
``imported.json`` in the cache and are checked before use like downloaded ones.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

from flowsr_cli.config import BICUBIC, Settings
from flowsr_cli.console import report_note, report_warning
from flowsr_cli.errors import FlowsrError, UsageError
from flowsr_cli.hub.manifest import (
    IMPORTED_MANIFEST,
    MODEL_SUFFIX,
    UPSCALE,
    ManifestError,
    ModelEntry,
    check_name,
    check_record,
    manifest_bytes,
    name_problem,
    package_entries,
    read_manifest,
    user_entries,
    user_manifest_path,
)


def written_as_path(model: str) -> bool:
    """True when a ``--model`` value is spelled as a file path rather than a name."""
    separators = {"/", os.sep, os.altsep} - {None}
    return any(separator in model for separator in separators) or model.startswith("~") or model.endswith(MODEL_SUFFIX)


@dataclass(frozen=True)
class Removed:
    """What :meth:`Hub.remove` deleted: the model's file, and the manifest it was unregistered from."""

    file: Path | None
    manifest: Path | None


@dataclass
class Hub:
    """The models a run can name, and where their files are."""

    settings: Settings
    package: dict[str, ModelEntry] = field(init=False)
    """flowsr's own models: they need neither the user's manifest nor the cache's records."""
    _warned: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.package = package_entries()

    @cached_property
    def user(self) -> dict[str, ModelEntry]:
        """The user's manifest's models (a name of flowsr's own is ignored); UsageError if it is malformed."""
        return {name: entry for name, entry in user_entries().items() if name not in self.package}

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
            records = read_manifest(self.imported_manifest) or {}
            for name, record in records.items():
                check_record(name, record)
        except ManifestError as exc:
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
                "imported checkpoint with its learned prior" if record.get("prior") else "imported checkpoint",
                record.get("sha256", ""),
                source="imported",
                checkpoint=record.get("checkpoint"),
                prior=record.get("prior"),
                task=record.get("task", UPSCALE),
            )
        return found

    def entries(self) -> dict[str, ModelEntry]:
        """Every named model: registry, user and imported ones (UsageError if the user's records are malformed)."""
        return {**self.registry, **self.imported()}

    def names_for(self, task: str) -> list[str]:
        """The names of the models that do ``task`` (for the lists in usage errors)."""
        return [name for name, entry in self.entries().items() if entry.task == task]

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
        check_name(entry.name, "name")
        if entry.name in self.package:
            raise UsageError(f"{entry.name!r} is a model of flowsr's own registry; choose another name")
        return self._store_user_entry(entry.name, entry.as_manifest())

    def remove(self, entry: ModelEntry) -> Removed:
        """Delete what flowsr keeps of ``entry``: its file in the cache (downloaded or imported, with its
        import record) and, for a model the user added, its entry in the user's manifest. A model that ships
        inside flowsr, or one with nothing stored, is a UsageError."""
        if entry.bundled is not None:
            raise UsageError(f"{entry.name} ships inside flowsr and cannot be removed")
        path = self.cached_path(entry.name)
        file = path if path.is_file() else None
        if entry.source != "user" and file is None:
            raise UsageError(f"{entry.name} is not downloaded ({path}); flowsr's own models stay listed")
        if file is not None:
            file.unlink()
        if entry.source == "imported":
            self.forget_import(entry.name)
        manifest = self._store_user_entry(entry.name, None) if entry.source == "user" else None
        return Removed(file, manifest)

    def _store_user_entry(self, name: str, values: dict[str, Any] | None) -> Path:
        """Set one entry of the user's manifest (None deletes it), atomically; returns the manifest's path.
        A malformed manifest is never rewritten: reading it first raises the UsageError that names it."""
        from flowsr_cli.io.atomic import atomic_write_bytes

        self.user  # noqa: B018
        path = user_manifest_path()
        models = read_manifest(path) or {}
        if values is None:
            models.pop(name, None)
        else:
            models[name] = values
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, manifest_bytes(models))
        self.__dict__.pop("user", None)  # read again on next use
        return path

    def record_import(
        self, name: str, path: Path, checkpoint: Path, prior: Path | None = None, task: str = UPSCALE
    ) -> None:
        """Record the sha256 of the model file ``flowsr models import`` wrote for ``name``, what it was converted
        from and, when not super-resolution, its task (atomically)."""
        from flowsr_cli.hub.download import sha256_of

        with self._records() as records:
            records[name] = {"sha256": sha256_of(path), "checkpoint": str(checkpoint)}
            if prior is not None:
                records[name]["prior"] = str(prior)
            if task != UPSCALE:
                records[name]["task"] = task

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
            atomic_write_bytes(self.imported_manifest, manifest_bytes(records))


def unknown_model(model: str, hub: Hub | None) -> UsageError:
    """The error for an upscaling ``--model`` value that names no model and no file (``hub`` lists the named
    super-resolution ones)."""
    known = ", ".join([BICUBIC, *(hub.names_for(UPSCALE) if hub is not None else ())])
    return UsageError(f"unknown model {model!r}; available: {known}, or a path to a .safetensors model")


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
    prior = f" --prior {shlex.quote(entry.prior)}" if entry.prior else ""
    return f"flowsr models import {checkpoint}{prior} --name {entry.name} --force"


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
        remedy = f"delete {path}, then rerun (it downloads again)"
    raise FlowsrError(
        f"model {entry.name!r}: {path} does not match its sha256 (expected {entry.sha256.lower()[:16]}…, "
        f"found {actual[:16]}…); it changed after it was stored: {remedy}"
    )
