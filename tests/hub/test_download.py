"""Downloads against a real HTTP server on 127.0.0.1: resume, retries, verification, redirects, locking."""

from __future__ import annotations

import fcntl
import hashlib
import multiprocessing
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from flowsr_cli.errors import FlowsrError
from flowsr_cli.hub.download import DownloadError, RemoteFile, download, part_path, sha256_of
from tests.http_server import FileServer, Route

BODY = random.Random(0).randbytes(200_000)
HALF = len(BODY) // 2
SHA = hashlib.sha256(BODY).hexdigest()


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer() as running:
        yield running


def _fetch(remote: RemoteFile, target: Path, **options: Any) -> Path:
    """``download`` with test settings: no progress bar, 10 ms backoff, short timeouts."""
    settings: dict[str, Any] = {"progress": False, "backoff": 0.01, "timeout": (5.0, 5.0)}
    return download(remote, target, **{**settings, **options})


def _serve(server: FileServer, path: str, route: Route, size: int | None = None) -> RemoteFile:
    server.add(path, route)
    return RemoteFile(server.url(path), SHA, size)


def _ranges(server: FileServer, path: str) -> list[str | None]:
    return [seen.range for seen in server.requests_for(path)]


def test_download_verifies_and_a_second_call_makes_no_request(server: FileServer, tmp_path: Path) -> None:
    remote = _serve(server, "/model.bin", Route(BODY), size=len(BODY))
    target = tmp_path / "new" / "folder" / "model.bin"
    assert _fetch(remote, target) == target
    assert target.read_bytes() == BODY
    assert sha256_of(target) == SHA
    assert not part_path(target).exists()
    assert _fetch(remote, target) == target
    assert _ranges(server, "/model.bin") == [None]


def test_progress_bar_on_stderr_does_not_disturb_the_download(server: FileServer, tmp_path: Path) -> None:
    remote = _serve(server, "/model.bin", Route(BODY, chunk_size=20_000))
    assert _fetch(remote, tmp_path / "model.bin", progress=True).read_bytes() == BODY


def test_cut_off_download_resumes_on_the_next_call_with_a_range_request(server: FileServer, tmp_path: Path) -> None:
    remote = _serve(server, "/cut", Route(BODY, cut_first=True))
    target = tmp_path / "model.bin"
    with pytest.raises(DownloadError) as failure:
        _fetch(remote, target, retries=0)
    assert f"could not download {remote.url} after 1 attempt: " in str(failure.value)
    assert not target.exists()
    assert part_path(target).read_bytes() == BODY[:HALF]

    _fetch(remote, target, retries=0)
    assert target.read_bytes() == BODY
    assert _ranges(server, "/cut") == [None, f"bytes={HALF}-"]
    assert not part_path(target).exists()


def test_cut_off_download_is_retried_within_one_call_from_where_it_stopped(server: FileServer, tmp_path: Path) -> None:
    remote = _serve(server, "/cut", Route(BODY, cut_first=True))
    target = _fetch(remote, tmp_path / "model.bin", retries=1)
    assert target.read_bytes() == BODY
    assert _ranges(server, "/cut") == [None, f"bytes={HALF}-"]


def test_server_ignoring_the_range_restarts_from_the_beginning(server: FileServer, tmp_path: Path) -> None:
    remote = _serve(server, "/no-ranges", Route(BODY, ignore_range=True))
    target = tmp_path / "model.bin"
    part_path(target).write_bytes(b"stale bytes that must not survive")
    assert _fetch(remote, target).read_bytes() == BODY
    assert _ranges(server, "/no-ranges") == ["bytes=33-"]


def test_complete_part_answered_with_416_goes_straight_to_verification(server: FileServer, tmp_path: Path) -> None:
    remote = _serve(server, "/done", Route(BODY))
    target = tmp_path / "model.bin"
    part_path(target).write_bytes(BODY)
    assert _fetch(remote, target).read_bytes() == BODY
    assert _ranges(server, "/done") == [f"bytes={len(BODY)}-"]
    assert not part_path(target).exists()


def test_complete_part_of_the_known_size_needs_no_request(server: FileServer, tmp_path: Path) -> None:
    remote = _serve(server, "/done", Route(BODY), size=len(BODY))
    target = tmp_path / "model.bin"
    part_path(target).write_bytes(BODY)
    assert _fetch(remote, target).read_bytes() == BODY
    assert server.log == []


@pytest.mark.robustness
def test_wrong_bytes_give_a_checksum_error_and_leave_nothing(server: FileServer, tmp_path: Path) -> None:
    wrong = BODY[::-1]
    remote = _serve(server, "/wrong", Route(BODY, wrong_body=wrong))
    target = tmp_path / "model.bin"
    with pytest.raises(DownloadError) as failure:
        _fetch(remote, target)
    message = str(failure.value)
    assert f"expected sha256 {SHA} got {hashlib.sha256(wrong).hexdigest()}" in message
    assert remote.url in message
    assert not target.exists()
    assert not part_path(target).exists()


def test_wrong_length_is_treated_like_a_checksum_failure(server: FileServer, tmp_path: Path) -> None:
    remote = _serve(server, "/short", Route(BODY[:-10]), size=len(BODY))
    target = tmp_path / "model.bin"
    with pytest.raises(DownloadError, match=f"expected {len(BODY)} bytes got {len(BODY) - 10} bytes"):
        _fetch(remote, target)
    assert not target.exists()
    assert not part_path(target).exists()


def test_404_fails_at_once_naming_the_url_and_status(server: FileServer, tmp_path: Path) -> None:
    remote = RemoteFile(server.url("/missing"), SHA)
    with pytest.raises(DownloadError) as failure:
        _fetch(remote, tmp_path / "model.bin", retries=3)
    assert str(failure.value) == f"HTTP 404 Not Found for {remote.url}"
    assert isinstance(failure.value, FlowsrError)
    assert len(server.requests_for("/missing")) == 1


def test_500_twice_then_success_with_three_retries(server: FileServer, tmp_path: Path) -> None:
    remote = _serve(server, "/flaky", Route(BODY, fail_times=2))
    with requests.Session() as session:
        target = _fetch(remote, tmp_path / "model.bin", retries=3, session=session)
    assert target.read_bytes() == BODY
    assert len(server.requests_for("/flaky")) == 3


def test_persistent_5xx_fails_after_the_last_retry_with_the_status(server: FileServer, tmp_path: Path) -> None:
    remote = _serve(server, "/down", Route(BODY, status=503))
    with pytest.raises(DownloadError) as failure:
        _fetch(remote, tmp_path / "model.bin", retries=2)
    assert str(failure.value) == f"could not download {remote.url} after 3 attempts: HTTP 503 Service Unavailable"
    assert len(server.requests_for("/down")) == 3


def test_unreachable_server_fails_after_the_retries_naming_the_url(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    remote = RemoteFile(f"http://127.0.0.1:{port}/model.bin", SHA)
    target = tmp_path / "model.bin"
    with pytest.raises(DownloadError) as failure:
        _fetch(remote, target, retries=2)
    assert str(failure.value).startswith(f"could not download {remote.url} after 3 attempts: ")
    assert "refused" in str(failure.value).lower()
    assert not target.exists()


def test_read_timeout_is_retried(server: FileServer, tmp_path: Path) -> None:
    remote = _serve(server, "/stall", Route(BODY, stall_first=1.0))
    target = _fetch(remote, tmp_path / "model.bin", retries=1, timeout=(5.0, 0.2))
    assert target.read_bytes() == BODY
    assert len(server.requests_for("/stall")) == 2


def test_read_timeout_on_the_last_attempt_says_timed_out(server: FileServer, tmp_path: Path) -> None:
    remote = _serve(server, "/stall", Route(BODY, stall_first=1.0))
    with pytest.raises(DownloadError, match="after 1 attempt: timed out$"):
        _fetch(remote, tmp_path / "model.bin", retries=0, timeout=(5.0, 0.2))


def test_offline_names_the_file_url_checksum_and_where_to_put_it(server: FileServer, tmp_path: Path) -> None:
    remote = _serve(server, "/model.bin", Route(BODY))
    target = tmp_path / "models" / "model.bin"
    with pytest.raises(DownloadError) as failure:
        _fetch(remote, target, offline=True)
    message = str(failure.value)
    assert message == (
        f"model.bin is missing and flowsr is offline: download {remote.url} (sha256 {SHA}) yourself "
        f"and place it at {target.absolute()}"
    )
    assert "\n" not in message
    assert server.log == []
    assert not target.parent.exists()


def test_offline_returns_an_existing_file(server: FileServer, tmp_path: Path) -> None:
    target = tmp_path / "model.bin"
    target.write_bytes(BODY)
    assert _fetch(RemoteFile(server.url("/model.bin"), SHA), target, offline=True) == target
    assert server.log == []


@pytest.mark.robustness
def test_redirect_to_another_host_is_refused(server: FileServer, tmp_path: Path) -> None:
    server.add("/file", Route(BODY))
    remote = _serve(server, "/away", Route(redirect_to=server.url("/file", host="localhost")))
    target = tmp_path / "model.bin"
    with pytest.raises(DownloadError) as failure:
        _fetch(remote, target)
    message = str(failure.value)
    assert "from host 127.0.0.1 to host localhost" in message
    assert remote.url in message
    assert [seen.path for seen in server.log] == ["/away"]
    assert not target.exists()


@pytest.mark.robustness
def test_redirect_to_an_allowed_host_is_followed(server: FileServer, tmp_path: Path) -> None:
    server.add("/file", Route(BODY))
    remote = _serve(server, "/away", Route(redirect_to=server.url("/file", host="localhost")))
    target = _fetch(remote, tmp_path / "model.bin", allow_redirect_hosts={"LocalHost"})
    assert target.read_bytes() == BODY
    assert [(seen.path, seen.host) for seen in server.log] == [
        ("/away", f"127.0.0.1:{server.port}"),
        ("/file", f"localhost:{server.port}"),
    ]


def test_same_host_redirect_is_followed_and_keeps_the_range(server: FileServer, tmp_path: Path) -> None:
    server.add("/file", Route(BODY))
    remote = _serve(server, "/here", Route(redirect_to="/file"))
    target = tmp_path / "model.bin"
    part_path(target).write_bytes(BODY[:HALF])
    assert _fetch(remote, target).read_bytes() == BODY
    assert [(seen.path, seen.range) for seen in server.log] == [
        ("/here", f"bytes={HALF}-"),
        ("/file", f"bytes={HALF}-"),
    ]


def test_redirect_loop_stops_after_five_hops(server: FileServer, tmp_path: Path) -> None:
    remote = _serve(server, "/loop", Route(redirect_to="/loop"))
    with pytest.raises(DownloadError, match="too many redirects"):
        _fetch(remote, tmp_path / "model.bin", retries=3)
    assert len(server.requests_for("/loop")) == 6


def test_a_held_lock_makes_the_download_wait_then_use_the_finished_file(
    server: FileServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    remote = _serve(server, "/model.bin", Route(BODY))
    target = tmp_path / "model.bin"
    outcome: list[object] = []

    def fetch_in_thread() -> None:
        try:
            outcome.append(_fetch(remote, target, progress=True))
        except Exception as error:  # reported through ``outcome``
            outcome.append(error)

    with open(tmp_path / "model.bin.lock", "a+b") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        worker = threading.Thread(target=fetch_in_thread)
        worker.start()
        printed = ""
        deadline = time.monotonic() + 10
        while "waiting for another process that is downloading model.bin" not in printed:
            assert time.monotonic() < deadline, printed
            time.sleep(0.01)
            printed += capsys.readouterr().err
        target.write_bytes(BODY)
        fcntl.flock(held.fileno(), fcntl.LOCK_UN)
    worker.join(timeout=10)
    assert outcome == [target]
    assert server.log == []


def _download_in_child(url: str, target: str, started: Any) -> None:
    """Runs in a spawned process: announce the start, then download (an exception exits non-zero)."""
    started.put(True)
    download(RemoteFile(url, SHA), Path(target), progress=False, retries=0)


@pytest.mark.robustness
def test_two_processes_downloading_the_same_file_do_not_corrupt_it(server: FileServer, tmp_path: Path) -> None:
    gate = threading.Event()
    remote = _serve(server, "/slow", Route(BODY, chunk_size=4096, chunk_delay=0.001, gate=gate))
    target = tmp_path / "model.bin"
    context = multiprocessing.get_context("spawn")
    started = context.Queue()
    workers = [context.Process(target=_download_in_child, args=(remote.url, str(target), started)) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        for _ in workers:
            started.get(timeout=60)
        deadline = time.monotonic() + 30
        while not server.requests_for("/slow") and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        assert len(server.requests_for("/slow")) == 1, "the second process must wait for the lock"
        assert part_path(target).exists() and not target.exists()
    finally:
        gate.set()
        for worker in workers:
            worker.join(timeout=60)
    assert [worker.exitcode for worker in workers] == [0, 0]
    assert target.read_bytes() == BODY
    assert not part_path(target).exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.bin", "model.bin.lock"]
    assert len(server.requests_for("/slow")) == 1


@pytest.mark.parametrize(("data", "chunk"), [(b"", 1 << 20), (b"abc", 1 << 20), (BODY, 7), (BODY, 1 << 16)])
def test_sha256_of_matches_hashlib(tmp_path: Path, data: bytes, chunk: int) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    assert sha256_of(path, chunk=chunk) == hashlib.sha256(data).hexdigest()
