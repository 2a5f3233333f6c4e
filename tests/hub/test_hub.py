"""Named models end to end: `flowsr models`, and upscale downloading a model on first use from a real
HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from flowsr_cli.families.model_file import save_model
from tests.conftest import CliInvoker
from tests.families.linf.test_linf import tiny_linf
from tests.http_server import FileServer, Route


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer() as running:
        yield running


@pytest.fixture
def model_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_model(tiny_linf(3), path)
    return path.read_bytes()


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    pixels = np.random.default_rng(0).integers(0, 256, (10, 14, 3), dtype=np.uint8)
    PILImage.fromarray(pixels).save(tmp_path / "x.png")
    return tmp_path / "x.png"


def add_model(run_cli: CliInvoker, name: str, url: str, body: bytes) -> None:
    digest = hashlib.sha256(body).hexdigest()
    result = run_cli("models", "add", name, url, "--sha256", digest, "--size", str(len(body)), "--description", "test")
    assert result.exit_code == 0, result.output


def test_upscale_downloads_a_named_model_once_and_uses_it(
    run_cli: CliInvoker, server: FileServer, model_bytes: bytes, photo: Path, tmp_path: Path
) -> None:
    server.add("/models/tiny.safetensors", Route(model_bytes))
    add_model(run_cli, "tiny", server.url("/models/tiny.safetensors"), model_bytes)
    first = run_cli("upscale", str(photo), "--model", "tiny", "-s", "2", "-o", str(tmp_path / "a.png"))
    assert first.exit_code == 0, first.output
    assert PILImage.open(tmp_path / "a.png").size == (28, 20)
    assert len(server.requests_for("/models/tiny.safetensors")) == 1
    second = run_cli("upscale", str(photo), "--model", "tiny", "-s", "2", "-o", str(tmp_path / "b.png"))
    assert second.exit_code == 0 and len(server.requests_for("/models/tiny.safetensors")) == 1
    assert np.array_equal(np.asarray(PILImage.open(tmp_path / "a.png")), np.asarray(PILImage.open(tmp_path / "b.png")))

    listing = run_cli("models", "list", env={"COLUMNS": "200"})
    assert "tiny" in listing.stdout and "user" in listing.stdout and "yes" in listing.stdout
    path = Path(run_cli("models", "path", "tiny").stdout.strip())
    assert path.read_bytes() == model_bytes
    assert "tiny: ok" in run_cli("models", "verify").stdout


def downloaded_then_tampered(run_cli: CliInvoker, server: FileServer, model_bytes: bytes) -> Path:
    """Register and download the model "tiny", then flip a bit of the cached file; returns its path."""
    server.add("/tiny.safetensors", Route(model_bytes))
    add_model(run_cli, "tiny", server.url("/tiny.safetensors"), model_bytes)
    assert run_cli("models", "download", "tiny").exit_code == 0
    path = Path(run_cli("models", "path", "tiny").stdout.strip())
    tampered = bytearray(path.read_bytes())
    tampered[-1] ^= 0xFF
    path.write_bytes(bytes(tampered))
    return path


@pytest.mark.robustness
def test_verify_detects_corruption_and_remove_deletes(
    run_cli: CliInvoker, server: FileServer, model_bytes: bytes
) -> None:
    path = downloaded_then_tampered(run_cli, server, model_bytes)
    result = run_cli("models", "verify", "tiny")
    assert result.exit_code == 1 and "CORRUPT" in result.stdout
    assert run_cli("models", "remove", "tiny").exit_code == 0 and not path.exists()


def test_wrong_file_offline_and_missing(
    run_cli: CliInvoker, server: FileServer, model_bytes: bytes, photo: Path
) -> None:
    server.add("/bad.safetensors", Route(model_bytes, wrong_body=b"not the model"))
    add_model(run_cli, "bad", server.url("/bad.safetensors"), model_bytes)
    wrong = run_cli("upscale", str(photo), "--model", "bad", "-s", "2")
    assert wrong.exit_code == 1 and ("checksum" in wrong.stderr or "size" in wrong.stderr)
    assert not Path(run_cli("models", "path", "bad").stdout.strip()).exists()

    server.add("/later.safetensors", Route(model_bytes))
    add_model(run_cli, "later", server.url("/later.safetensors"), model_bytes)
    offline = run_cli("upscale", str(photo), "--model", "later", "-s", "2", "--offline")
    assert offline.exit_code == 1
    assert "offline" in offline.stderr and "place it at" in offline.stderr
    assert server.requests_for("/later.safetensors") == []

    server.add("/gone.safetensors", Route(status=404))
    add_model(run_cli, "gone", server.url("/gone.safetensors"), model_bytes)
    missing = run_cli("models", "download", "gone")
    assert missing.exit_code == 1 and "404" in missing.stderr and "/gone.safetensors" in missing.stderr


def test_base_url_rewrites_every_registry_url_to_a_mirror(
    run_cli: CliInvoker, server: FileServer, model_bytes: bytes
) -> None:
    server.add("/mirror/tiny.safetensors", Route(model_bytes))
    add_model(run_cli, "tiny", "https://models.invalid/releases/v1/tiny.safetensors", model_bytes)
    result = run_cli("models", "download", "tiny", env={"FLOWSR_MODEL_BASE_URL": server.url("/mirror")})
    assert result.exit_code == 0, result.output
    assert len(server.requests_for("/mirror/tiny.safetensors")) == 1


def test_add_validates_its_arguments(run_cli: CliInvoker, isolated_settings: Path) -> None:
    for args, message in (
        (["x y", "https://a/b", "--sha256", "0" * 64], "use letters"),
        (["ok", "https://a/b", "--sha256", "abc"], "64 hexadecimal"),
        (["ok", "ftp://a/b", "--sha256", "0" * 64], "http(s) URL"),
        (["ok", "https://a/b", "--sha256", "0" * 64, "--task", "denoise"], "--task"),
    ):
        result = run_cli("models", "add", *args)
        assert result.exit_code == 2 and message in result.stderr
    manifest = isolated_settings.parent / "models.json"
    assert not manifest.exists()
    assert run_cli("models", "add", "ok", "https://a/b.safetensors", "--sha256", "A" * 64).exit_code == 0
    assert json.loads(manifest.read_text())["models"]["ok"]["sha256"] == "a" * 64


def test_a_model_added_for_rescaling_is_listed_for_it(
    run_cli: CliInvoker, isolated_settings: Path, photo: Path
) -> None:
    digest = "0" * 64
    added = run_cli("models", "add", "team-x4", "https://a/x4.safetensors", "--sha256", digest, "--task", "rescale")
    assert added.exit_code == 0, added.output
    assert json.loads((isolated_settings.parent / "models.json").read_text())["models"]["team-x4"]["task"] == "rescale"
    rows = {line.split("│")[1].strip(): line for line in run_cli("models", "list", env={"COLUMNS": "200"}).stdout
            .splitlines() if line.count("│") > 2}  # fmt: skip
    assert rows["team-x4"].split("│")[2].strip() == "rescale"
    assert rows["hcflow-rescale-x2"].split("│")[2].strip() == "rescale x2"
    assert rows["srflow"].split("│")[2].strip() == "upscale x4"
    assert rows["linf-lp"].split("│")[2].strip() == "upscale, any scale"
    unknown = run_cli("rescale", "down", str(photo), "-s", "4", "-m", "nothing-here")
    assert unknown.exit_code == 2 and "team-x4" in unknown.stderr


def test_bundled_entries_resolve_inside_the_package_and_never_download() -> None:
    import flowsr_cli
    from flowsr_cli.config import Settings
    from flowsr_cli.errors import FlowsrError
    from flowsr_cli.hub.catalog import Hub
    from flowsr_cli.hub.manifest import ModelEntry

    hub = Hub(Settings())
    entry = ModelEntry("packaged", bundled="weights/packaged.safetensors", url="http://127.0.0.1:9/never")
    path = hub.local_path(entry)
    assert path.parent.parent == Path(flowsr_cli.__file__).parent
    with pytest.raises(FlowsrError, match="its file .* is missing"):
        hub.fetch(entry)


@pytest.mark.robustness
def test_a_tampered_cached_model_is_refused_before_use(
    run_cli: CliInvoker, server: FileServer, model_bytes: bytes, photo: Path, tmp_path: Path
) -> None:
    downloaded_then_tampered(run_cli, server, model_bytes)
    result = run_cli("upscale", str(photo), "--model", "tiny", "-s", "2", "-o", str(tmp_path / "out.png"))
    assert result.exit_code == 1 and not (tmp_path / "out.png").exists()
    path = Path(run_cli("models", "path", "tiny").stdout.strip())
    assert "does not match its sha256" in result.stderr and f"delete {path}, then rerun" in result.stderr
    assert len(server.requests_for("/tiny.safetensors")) == 1, "refused, not silently downloaded again"
    path.unlink()
    again = run_cli("upscale", str(photo), "--model", "tiny", "-s", "2", "-o", str(tmp_path / "out.png"))
    assert again.exit_code == 0 and (tmp_path / "out.png").is_file()


def test_remove_unregisters_an_added_model_and_deletes_its_download(
    run_cli: CliInvoker, server: FileServer, model_bytes: bytes, isolated_settings: Path
) -> None:
    server.add("/tiny.safetensors", Route(model_bytes))
    add_model(run_cli, "tiny", server.url("/tiny.safetensors"), model_bytes)
    add_model(run_cli, "other", server.url("/other.safetensors"), model_bytes)
    assert run_cli("models", "download", "tiny").exit_code == 0
    path = Path(run_cli("models", "path", "tiny").stdout.strip())
    manifest = isolated_settings.parent / "models.json"

    result = run_cli("models", "remove", "tiny")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"removed tiny: its entry in {manifest} and its file {path}\n"
    assert not path.exists() and set(json.loads(manifest.read_text())["models"]) == {"other"}
    assert "tiny" not in run_cli("models", "list", env={"COLUMNS": "200"}).stdout
    again = run_cli("models", "remove", "tiny")
    assert again.exit_code == 2 and "no model named 'tiny'" in again.stderr


def test_remove_unregisters_an_added_model_that_was_never_downloaded(
    run_cli: CliInvoker, isolated_settings: Path
) -> None:
    added = run_cli("models", "add", "later", "https://models.invalid/later.safetensors", "--sha256", "0" * 64)
    assert added.exit_code == 0, added.output
    manifest = isolated_settings.parent / "models.json"
    result = run_cli("models", "remove", "later")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"removed later: its entry in {manifest} (it was not downloaded)\n"
    assert json.loads(manifest.read_text())["models"] == {}


@pytest.mark.parametrize("name", ["linf", "linf-lp"])
def test_a_bundled_model_cannot_be_removed(run_cli: CliInvoker, name: str) -> None:
    path = Path(run_cli("models", "path", name).stdout.strip())
    result = run_cli("models", "remove", name)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.strip() == f"error: {name} ships inside flowsr and cannot be removed"
    assert path.is_file()


def test_a_registry_model_that_is_not_downloaded_has_nothing_to_remove() -> None:
    from flowsr_cli.config import Settings
    from flowsr_cli.errors import UsageError
    from flowsr_cli.hub.catalog import Hub
    from flowsr_cli.hub.manifest import ModelEntry

    hub = Hub(Settings())
    remote = ModelEntry("remote", sha256="0" * 64, url="https://models.invalid/remote.safetensors")
    with pytest.raises(UsageError, match=r"remote is not downloaded \(.*remote\.safetensors\)"):
        hub.remove(remote)
