"""Robustness of named models (issue 23): a file in the current folder never replaces a registered model,
model names never reach outside the cache, imported models are checked like downloaded ones, downloads
have a size cap and a deadline (real hostile servers on 127.0.0.1), and a broken ``models.json`` is one
clear line that does not stop runs of the bundled models."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from flowsr_cli.config import Settings
from flowsr_cli.families.model_file import save_model
from flowsr_cli.hub.catalog import Hub
from flowsr_cli.hub.download import part_path
from tests.conftest import CliInvoker
from tests.families.linf.test_linf import original_layout, tiny_linf
from tests.http_server import FileServer, Route, Seen

pytestmark = pytest.mark.robustness

BODY = random.Random(23).randbytes(5000)
SAFETY_BYTES = 64 << 20
"""What an "endless" body sends at most: code without a cap fails on it instead of filling the disk."""


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    pixels = np.random.default_rng(0).integers(0, 256, (10, 14, 3), dtype=np.uint8)
    PILImage.fromarray(pixels).save(tmp_path / "photo.png")
    return tmp_path / "photo.png"


@pytest.fixture
def manifest(isolated_settings: Path) -> Path:
    """The user's models.json (beside the config file; not created)."""
    return isolated_settings.parent / "models.json"


def models_dir(run_cli: CliInvoker) -> Path:
    """The cache's model folder, as `flowsr models path` prints it."""
    result = run_cli("models", "path")
    assert result.exit_code == 0, result.output
    return Path(result.stdout.strip())


def one_error_line(stderr: str) -> str:
    """The only line of ``stderr`` besides notes, checked to be an error without a traceback or the CLI's
    fallback."""
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("note: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "unexpected" not in stderr and "Traceback" not in stderr
    return lines[0]


def pixels(path: Path) -> np.ndarray:
    with PILImage.open(path) as image:
        return np.asarray(image)


# Case 1: a file in the current folder does not replace a registered model.


def test_a_file_named_like_the_default_model_does_not_replace_it(
    run_cli: CliInvoker, tmp_path: Path, photo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLOWSR_MODEL")  # the default model, linf-lp, as in `flowsr upscale ok.png -s 2`
    clean = run_cli("upscale", str(photo), "-s", "2", "-o", str(tmp_path / "clean.png"))
    assert clean.exit_code == 0, clean.output
    folder = tmp_path / "work"
    folder.mkdir()
    save_model(tiny_linf(3), folder / "linf-lp")  # a loadable model, but not the registered one
    monkeypatch.chdir(folder)

    result = run_cli("upscale", str(photo), "-s", "2", "-o", str(tmp_path / "here.png"))
    assert result.exit_code == 0, result.output
    assert "note: using the registered model 'linf-lp'" in result.stderr and "./linf-lp" in result.stderr
    assert np.array_equal(pixels(tmp_path / "here.png"), pixels(tmp_path / "clean.png"))


def test_a_model_written_as_a_path_is_that_file(
    run_cli: CliInvoker, tmp_path: Path, photo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "linf-lp").write_bytes(b"not a model")
    monkeypatch.chdir(tmp_path)
    for spelled in ("./linf-lp", str(tmp_path / "linf-lp")):
        result = run_cli("upscale", str(photo), "-s", "2", "--model", spelled)
        assert result.exit_code != 0 and "linf-lp" in one_error_line(result.stderr)


def test_train_and_models_path_resolve_names_like_upscale(
    run_cli: CliInvoker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "linf-lp").write_bytes(b"not a model")
    (tmp_path / "mine").write_bytes(b"a file no registry names")
    monkeypatch.chdir(tmp_path)
    hub = Hub(Settings())
    bundled = hub.resolve("linf-lp")
    assert bundled is not None and bundled.name == "linf-lp.safetensors" and bundled.parent != tmp_path
    assert hub.resolve("./linf-lp") == Path("linf-lp")
    assert hub.resolve("mine") == Path("mine"), "a name no registry knows may still be a file here"
    assert Path(run_cli("models", "path", "linf-lp").stdout.strip()) == bundled


# Case 2: names are validated; nothing outside the cache is touched; imported models are checked.


def test_a_manifest_name_that_climbs_out_of_the_cache_cannot_delete_a_file(
    run_cli: CliInvoker, tmp_path: Path, manifest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWSR_CACHE_DIR", str(tmp_path / "a" / "cache"))
    (tmp_path / "a" / "cache" / "models").mkdir(parents=True)  # ../../../victim from here is tmp_path/victim
    victim = tmp_path / "victim.safetensors"
    victim.write_bytes(b"precious")
    entry = {"url": "https://models.invalid/v.safetensors", "sha256": "0" * 64}
    manifest.write_text(json.dumps({"version": 1, "models": {"../../../victim": entry}}))

    for command in ("remove", "path", "download", "verify"):
        result = run_cli("models", command, "../../../victim")
        assert result.exit_code == 2, (command, result.output)
        line = one_error_line(result.stderr)
        assert str(manifest) in line and "'../../../victim'" in line
    assert victim.read_bytes() == b"precious"


@pytest.mark.parametrize("name", ["../x", ".hidden", "a/b", "..", "", "a\\b", "x" * 200, "bad name"])
def test_every_user_manifest_name_is_validated(run_cli: CliInvoker, manifest: Path, name: str) -> None:
    entry = {"url": "https://models.invalid/v.safetensors", "sha256": "0" * 64}
    manifest.write_text(json.dumps({"version": 1, "models": {name: entry}}))
    result = run_cli("models", "list")
    assert result.exit_code == 2
    line = one_error_line(result.stderr)
    assert str(manifest) in line and "not a valid model name" in line


@pytest.mark.parametrize("name", ["..", ".hidden", "a/b", "_x", "x" * 200])
def test_add_and_import_refuse_unsafe_names(run_cli: CliInvoker, tmp_path: Path, manifest: Path, name: str) -> None:
    added = run_cli("models", "add", name, "https://models.invalid/v.safetensors", "--sha256", "0" * 64)
    assert added.exit_code == 2 and "not a valid model name" in one_error_line(added.stderr)
    imported = run_cli("models", "import", str(tmp_path / "absent.pth"), "--name", name)
    assert imported.exit_code == 2 and "not a valid model name" in one_error_line(imported.stderr)
    assert not manifest.exists()


def test_files_in_the_cache_with_unsafe_names_are_not_models(run_cli: CliInvoker) -> None:
    folder = models_dir(run_cli)
    folder.mkdir(parents=True)
    save_model(tiny_linf(3), folder / "bad name.safetensors")
    save_model(tiny_linf(3), folder / "good.safetensors")
    listing = run_cli("models", "list", env={"COLUMNS": "200"})
    assert listing.exit_code == 0 and "good" in listing.stdout and "bad name" not in listing.stdout
    removed = run_cli("models", "remove", "bad name")
    assert removed.exit_code == 2 and (folder / "bad name.safetensors").exists()


def import_tiny(run_cli: CliInvoker, folder: Path, name: str, *extra: str) -> Path:
    """`flowsr models import` of a tiny original LINF checkpoint; returns the cached model's path."""
    checkpoint = folder / "original.pth"
    torch.save(original_layout(tiny_linf(3), "linf-patch"), checkpoint)
    result = run_cli("models", "import", str(checkpoint), "--name", name, *extra)
    assert result.exit_code == 0, result.output
    return Path(run_cli("models", "path", name).stdout.strip())


def test_a_tampered_imported_model_is_refused_until_it_is_imported_again(
    run_cli: CliInvoker, tmp_path: Path, photo: Path
) -> None:
    path = import_tiny(run_cli, tmp_path, "mine")
    first = run_cli("upscale", str(photo), "-s", "2", "--model", "mine", "-o", str(tmp_path / "a.png"))
    assert first.exit_code == 0 and "warning" not in first.stderr, first.output
    assert "mine: ok" in run_cli("models", "verify", "mine").stdout
    tampered = bytearray(path.read_bytes())
    tampered[-1] ^= 0xFF
    path.write_bytes(bytes(tampered))

    result = run_cli("upscale", str(photo), "-s", "2", "--model", "mine", "-o", str(tmp_path / "b.png"))
    assert result.exit_code == 1 and not (tmp_path / "b.png").exists()
    line = one_error_line(result.stderr)
    assert "'mine'" in line and "does not match its sha256" in line
    assert f"flowsr models import {tmp_path / 'original.pth'} --name mine --force" in line
    verify = run_cli("models", "verify", "mine")
    assert verify.exit_code == 1 and "CORRUPT" in verify.stdout

    import_tiny(run_cli, tmp_path, "mine", "--force")
    again = run_cli("upscale", str(photo), "-s", "2", "--model", "mine", "-o", str(tmp_path / "b.png"))
    assert again.exit_code == 0, again.output
    assert np.array_equal(pixels(tmp_path / "a.png"), pixels(tmp_path / "b.png"))


def test_an_imported_model_without_a_recorded_checksum_is_used_with_a_warning(run_cli: CliInvoker, photo: Path) -> None:
    folder = models_dir(run_cli)
    folder.mkdir(parents=True)
    save_model(tiny_linf(3), folder / "old.safetensors")  # as `models import` of an older flowsr left it
    result = run_cli("upscale", str(photo), "-s", "2", "--model", "old")
    assert result.exit_code == 0, result.output
    assert "warning: model 'old'" in result.stderr and "no recorded sha256" in result.stderr
    assert "--name old --force" in result.stderr
    assert "no recorded sha256" in run_cli("models", "verify", "old").stdout


def test_removing_an_imported_model_forgets_its_checksum(run_cli: CliInvoker, tmp_path: Path) -> None:
    path = import_tiny(run_cli, tmp_path, "mine")
    assert run_cli("models", "remove", "mine").exit_code == 0 and not path.exists()
    save_model(tiny_linf(3, seed=1), path)  # another file under the same name: not checked against the old sha
    assert "no recorded sha256" in run_cli("models", "verify", "mine").stdout


# Case 3: downloads have a size cap and a deadline.


@dataclass
class Endless:
    """A body that never ends (up to SAFETY_BYTES), announced as ``announce`` bytes or with no length."""

    announce: int | None = None
    sent: int = 0


class HostileServer(FileServer):
    """``FileServer`` plus paths whose body never ends. (A trickle is ``Route(chunk_size=1, chunk_delay=...)``.)"""

    def __init__(self) -> None:
        super().__init__()
        self.endless: dict[str, Endless] = {}
        self.stop = threading.Event()
        self._server.RequestHandlerClass = _hostile_handler(self._server.RequestHandlerClass, self)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop.set()
        super().__exit__(kind, error, traceback)


def _hostile_handler(base: Any, server: HostileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(base):  # type: ignore[misc, valid-type]
        def do_GET(self) -> None:
            endless = server.endless.get(self.path)
            if endless is None:
                super().do_GET()
                return
            server._record(Seen(self.path, self.headers.get("Range"), self.headers.get("Host")), self.path)
            self.close_connection = True
            self.send_response(HTTPStatus.OK)
            if endless.announce is not None:
                self.send_header("Content-Length", str(endless.announce))
            self.end_headers()
            block = bytes(1 << 16)
            while endless.sent < SAFETY_BYTES and not server.stop.is_set():
                self.wfile.write(block)
                endless.sent += len(block)

    return Handler


@pytest.fixture
def server() -> Iterator[HostileServer]:
    with HostileServer() as running:
        yield running


def add_model(run_cli: CliInvoker, name: str, url: str, body: bytes, *, sized: bool = True) -> None:
    size = ["--size", str(len(body))] if sized else []
    result = run_cli("models", "add", name, url, "--sha256", hashlib.sha256(body).hexdigest(), *size)
    assert result.exit_code == 0, result.output


def run_flowsr(*args: str, env: dict[str, str], timeout: float = 40) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess (it can be timed out, unlike an in-process run that hangs)."""
    command = [sys.executable, "-m", "flowsr_cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env={**os.environ, **env})


def test_an_endless_body_stops_past_the_registered_size(run_cli: CliInvoker, server: HostileServer) -> None:
    endless = server.endless.setdefault("/endless", Endless())
    add_model(run_cli, "big", server.url("/endless"), BODY)
    result = run_cli("models", "download", "big")
    assert result.exit_code == 1
    line = one_error_line(result.stderr)
    assert "model 'big'" in line and f"{len(BODY)} bytes" in line and "flowsr models add" in line
    assert endless.sent < 16 << 20, "stopped as soon as the registered size was passed"
    target = models_dir(run_cli) / "big.safetensors"
    assert not target.exists() and not part_path(target).exists()


def test_an_endless_body_without_a_size_stops_at_max_download_mb(run_cli: CliInvoker, server: HostileServer) -> None:
    endless = server.endless.setdefault("/endless", Endless())
    add_model(run_cli, "big", server.url("/endless"), BODY, sized=False)
    result = run_cli("models", "download", "big", env={"FLOWSR_MAX_DOWNLOAD_MB": "1"})
    assert result.exit_code == 1
    line = one_error_line(result.stderr)
    assert "model 'big'" in line and "max_download_mb (1 MB)" in line and "FLOWSR_MAX_DOWNLOAD_MB" in line
    assert endless.sent < 16 << 20
    target = models_dir(run_cli) / "big.safetensors"
    assert not target.exists() and not part_path(target).exists()


def test_an_announced_length_over_the_cap_is_refused_before_the_body(
    run_cli: CliInvoker, server: HostileServer
) -> None:
    server.endless["/huge"] = Endless(announce=10**12)
    add_model(run_cli, "huge", server.url("/huge"), BODY, sized=False)
    result = run_cli("models", "download", "huge", env={"FLOWSR_MAX_DOWNLOAD_MB": "1"})
    assert result.exit_code == 1 and "max_download_mb (1 MB)" in one_error_line(result.stderr)
    assert len(server.requests_for("/huge")) == 1, "not retried"
    assert not part_path(models_dir(run_cli) / "huge.safetensors").exists()


@pytest.mark.parametrize("delay", [5.0, 0.2], ids=["a byte every 5 s", "a byte every 0.2 s"])
def test_a_trickling_download_is_stopped_at_download_timeout_and_resumes_later(
    run_cli: CliInvoker, server: HostileServer, delay: float
) -> None:
    server.add("/slow", Route(BODY, chunk_size=1, chunk_delay=delay))
    add_model(run_cli, "slow", server.url("/slow"), BODY)
    started = time.monotonic()
    result = run_flowsr("models", "download", "slow", env={"FLOWSR_DOWNLOAD_TIMEOUT": "1.5"})
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert "model 'slow'" in line and "download_timeout (1.5 s)" in line and "FLOWSR_DOWNLOAD_TIMEOUT" in line
    assert elapsed < 20, f"took {elapsed:.1f} s"
    part = part_path(models_dir(run_cli) / "slow.safetensors")
    kept = part.stat().st_size
    assert 0 < kept < len(BODY) and part.read_bytes() == BODY[:kept]

    server.add("/slow", Route(BODY))
    assert run_cli("models", "download", "slow").exit_code == 0
    assert server.requests_for("/slow")[-1].range == f"bytes={kept}-"


# Case 4: a malformed models.json is one clear line, and runs of bundled models still work.

GOOD = {"url": "https://models.invalid/m.safetensors", "sha256": "0" * 64}
BROKEN: dict[str, tuple[Any, str]] = {
    "cut JSON": ('{"version": 1, "models": {', "not valid JSON"),
    "nested too deeply": ("[" * 100_000, "not valid JSON"),
    "not UTF-8": (b"\xff\xfe{}", "not UTF-8"),
    "a list": ([], "expected a JSON object"),
    "another version": ({"version": 9, "models": {}}, "version"),
    "models as a list": ({"version": 1, "models": []}, "'models'"),
    "an entry as a string": ({"version": 1, "models": {"m": "https://x"}}, "model 'm'"),
    "an unknown field": ({"version": 1, "models": {"m": {**GOOD, "colour": "red"}}}, "colour"),
    "a size as text": ({"version": 1, "models": {"m": {**GOOD, "size": "big"}}}, "size"),
    "a bad sha256": ({"version": 1, "models": {"m": {**GOOD, "sha256": 5}}}, "sha256"),
    "no url": ({"version": 1, "models": {"m": {"sha256": "0" * 64}}}, "url"),
    "bad scales": ({"version": 1, "models": {"m": {**GOOD, "scales": "x4"}}}, "scales"),
    "a bundled file": ({"version": 1, "models": {"m": {**GOOD, "bundled": "../../x"}}}, "bundled"),
    "an unknown task": ({"version": 1, "models": {"m": {**GOOD, "task": "denoise"}}}, "'task' is 'denoise'"),
}


def write_manifest(manifest: Path, content: Any) -> None:
    if isinstance(content, bytes):
        manifest.write_bytes(content)
    else:
        manifest.write_text(content if isinstance(content, str) else json.dumps(content))


@pytest.mark.parametrize("broken", BROKEN.values(), ids=BROKEN.keys())
def test_a_malformed_manifest_is_one_line_naming_the_file(
    run_cli: CliInvoker, manifest: Path, photo: Path, broken: tuple[Any, str]
) -> None:
    content, problem = broken
    write_manifest(manifest, content)
    for args in (("models", "list"), ("models", "remove", "m"), ("upscale", str(photo), "-s", "2", "--model", "m")):
        result = run_cli(*args)
        assert result.exit_code == 2, (args, result.output)
        line = one_error_line(result.stderr)
        assert str(manifest) in line and problem in line, line


def test_adding_to_a_malformed_manifest_leaves_it_alone(run_cli: CliInvoker, manifest: Path) -> None:
    manifest.write_text('{"version": 1, "models": {"m": {')
    result = run_cli("models", "add", "new", "https://models.invalid/n.safetensors", "--sha256", "0" * 64)
    assert result.exit_code == 2 and str(manifest) in one_error_line(result.stderr)
    assert manifest.read_text() == '{"version": 1, "models": {"m": {'


@pytest.mark.parametrize("broken", [BROKEN["cut JSON"], BROKEN["an unknown field"]], ids=["cut JSON", "a field"])
def test_a_malformed_manifest_does_not_stop_a_run_of_a_bundled_model(
    run_cli: CliInvoker, manifest: Path, photo: Path, tmp_path: Path, broken: tuple[Any, str]
) -> None:
    write_manifest(manifest, broken[0])
    result = run_cli("upscale", str(photo), "-s", "2", "--model", "linf", "-o", str(tmp_path / "out.png"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out.png").is_file()
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(manifest) in warnings[0] and broken[1] in warnings[0]
    assert "unexpected" not in result.stderr
