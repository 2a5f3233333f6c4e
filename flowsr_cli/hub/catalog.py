"""Named models: the package's registry manifest, the user's own entries, the cache, and resolving a
``--model`` value to a file (downloading it on first use)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from flowsr_cli.config import Settings, config_path
from flowsr_cli.errors import FlowsrError, UsageError

MANIFEST_VERSION = 1
USER_MANIFEST = "models.json"


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

    def as_manifest(self) -> dict[str, Any]:
        """The entry as stored in a manifest."""
        stored = {key: value for key, value in asdict(self).items() if value not in (None, "") and key != "source"}
        stored.pop("name")
        return stored


def _entries(document: dict[str, Any], source: str, origin: str) -> dict[str, ModelEntry]:
    if document.get("version") != MANIFEST_VERSION or not isinstance(document.get("models"), dict):
        raise FlowsrError(f"{origin}: not a flowsr model manifest (version {MANIFEST_VERSION} with a 'models' table)")
    entries = {}
    for name, values in document["models"].items():
        try:
            scales = values.get("scales")
            entries[name] = ModelEntry(
                name=name, source=source, **{**values, "scales": tuple(scales) if scales else None}
            )
        except TypeError as exc:
            raise FlowsrError(f"{origin}: model {name!r}: {exc}") from None
    return entries


def user_manifest_path() -> Path:
    """The user's manifest, beside the config file."""
    return config_path().parent / USER_MANIFEST


def _read_user_manifest() -> dict[str, Any]:
    path = user_manifest_path()
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"version": MANIFEST_VERSION, "models": {}}
    except (OSError, ValueError) as exc:
        raise FlowsrError(f"{path}: cannot read the model manifest ({exc})") from None


@dataclass
class Hub:
    """The models a run can name, and where their files are."""

    settings: Settings
    registry: dict[str, ModelEntry] = field(init=False)

    def __post_init__(self) -> None:
        package = json.loads(resources.files("flowsr_cli.hub").joinpath("registry.json").read_text(encoding="utf-8"))
        self.registry = _entries(package, "registry", "the package's registry.json")
        for name, entry in _entries(_read_user_manifest(), "user", str(user_manifest_path())).items():
            self.registry.setdefault(name, entry)

    @property
    def models_dir(self) -> Path:
        """Where downloaded and imported models live."""
        return Path(self.settings["cache_dir"]) / "models"

    def cached_path(self, name: str) -> Path:
        """The cache location of a named model (it may not exist yet)."""
        return self.models_dir / f"{name}.safetensors"

    def imported(self) -> dict[str, ModelEntry]:
        """Models in the cache that no manifest lists (converted with `flowsr models import`)."""
        if not self.models_dir.is_dir():
            return {}
        return {
            path.stem: ModelEntry(path.stem, "imported checkpoint", source="imported")
            for path in sorted(self.models_dir.glob("*.safetensors"))
            if path.stem not in self.registry
        }

    def entries(self) -> dict[str, ModelEntry]:
        """Every named model: registry, user and imported ones."""
        return {**self.registry, **self.imported()}

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
        """The entry's file, downloaded into the cache first if it is not there."""
        from flowsr_cli.hub.download import RemoteFile, download

        path = self.local_path(entry)
        if path.is_file() or entry.bundled is not None or entry.source == "imported":
            if not path.is_file():
                raise FlowsrError(f"model {entry.name!r}: its file {path} is missing")
            _check_unchanged(entry, path)
            return path
        remote = RemoteFile(self.url_of(entry), entry.sha256.lower(), entry.size)
        return download(remote, path, offline=bool(self.settings["offline"]), progress=progress)

    def resolve(self, model: str, progress: bool = True) -> Path | None:
        """The file a ``--model`` value names: a path, or a named model (downloaded on first use)."""
        path = Path(model).expanduser()
        if path.suffix == ".safetensors" or path.is_file():
            return path
        entry = self.entries().get(model)
        return self.fetch(entry, progress) if entry is not None else None

    def add(self, entry: ModelEntry) -> Path:
        """Store a user entry in the user's manifest (atomically); returns the manifest's path."""
        from flowsr_cli.io.atomic import atomic_write_bytes

        if entry.name in self.registry and self.registry[entry.name].source == "registry":
            raise UsageError(f"{entry.name!r} is a model of flowsr's own registry; choose another name")
        document = _read_user_manifest()
        document["models"][entry.name] = entry.as_manifest()
        path = user_manifest_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, (json.dumps(document, indent=2) + "\n").encode("utf-8"))
        return path


def changed_digest(entry: ModelEntry, path: Path) -> str | None:
    """The sha256 of the file at ``path`` when it is not ``entry``'s published one; None when it matches
    or the entry publishes none."""
    from flowsr_cli.hub.download import sha256_of

    if not entry.sha256:
        return None
    actual = sha256_of(path)
    return None if actual == entry.sha256.lower() else actual


def _check_unchanged(entry: ModelEntry, path: Path) -> None:
    """Refuse a stored file whose sha256 is not its entry's (changed since download, or a tampered
    package); files of imported checkpoints have no published checksum."""
    actual = None if entry.source == "imported" else changed_digest(entry, path)
    if actual is None:
        return
    remedy = "reinstall flowsr" if entry.bundled is not None else f"`flowsr models remove {entry.name}`, then rerun"
    raise FlowsrError(
        f"model {entry.name!r}: {path} does not match its sha256 (expected {entry.sha256.lower()[:16]}…, "
        f"found {actual[:16]}…); it changed after it was stored: {remedy}"
    )
