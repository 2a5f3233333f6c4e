"""Fetch a file over HTTP(S): resumable, retried, checksum-verified, atomic, and safe between processes.

The bytes go to ``<target>.part`` in the target's folder; an interrupted run leaves it there and the next
run resumes it with a ``Range`` request. Only a complete file whose sha256 matches is renamed to
``target``. An exclusive ``flock`` on ``<target>.lock`` keeps two processes from writing the same file.
A download never grows past the file's known size (else ``max_download_mb``) and ends within
``download_timeout`` seconds (:class:`DownloadLimits`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from urllib3.exceptions import ReadTimeoutError

from flowsr_cli.errors import FlowsrError
from flowsr_cli.io.atomic import TEMP_SUFFIX

LOCK_SUFFIX = ".lock"
MAX_REDIRECTS = 5
MEGABYTE = 1 << 20
_STREAM_CHUNK = 1 << 16

ProgressUpdate = Callable[[int, int | None], None]


@dataclass(frozen=True)
class RemoteFile:
    """A file to download and the sha256 (lowercase hex) it must have; ``size`` in bytes if known."""

    url: str
    sha256: str
    size: int | None = None


@dataclass(frozen=True)
class DownloadLimits:
    """What one download may cost: ``max_mb`` megabytes when the file's size is not known (the
    max_download_mb setting; a known size is always the limit) and ``seconds`` in all, retries included
    (download_timeout). None: no limit."""

    max_mb: int | None = None
    seconds: float | None = None


class DownloadError(FlowsrError):
    """A download failed or was refused; the message names the URL and the cause."""


class _Budget:
    """The limits of one download: the most bytes its file may have and the moment it must be done by."""

    def __init__(self, remote: RemoteFile, limits: DownloadLimits) -> None:
        self.remote = remote
        self.limits = limits
        self.ends = None if limits.seconds is None else time.monotonic() + limits.seconds

    def remaining(self) -> float | None:
        """Seconds left (never below a millisecond), or None without a deadline."""
        return None if self.ends is None else max(self.ends - time.monotonic(), 0.001)

    def timeouts(self, timeout: tuple[float, float]) -> tuple[float, float]:
        """Connect and read timeouts that end no later than the deadline."""
        left = self.remaining()
        return timeout if left is None else (min(timeout[0], left), min(timeout[1], left))

    def check_size(self, total: int, part: Path) -> None:
        """Stop (deleting ``part``) when the file would grow to ``total`` bytes, past its limit."""
        size, max_mb = self.remote.size, self.limits.max_mb
        limit = size if size is not None else (None if max_mb is None else max_mb * MEGABYTE)
        if limit is None or total <= limit:
            return
        part.unlink(missing_ok=True)
        if size is not None:
            raise DownloadError(
                f"{self.remote.url} sends more than the {size} bytes registered for it; the download was stopped "
                "and deleted (if the file really changed, register its new size and sha256 with `flowsr models add`)"
            )
        raise DownloadError(
            f"{self.remote.url} is larger than max_download_mb ({max_mb} MB); the download was stopped and deleted; "
            "raise the limit with `flowsr config set max_download_mb MB` or FLOWSR_MAX_DOWNLOAD_MB"
        )

    def check_time(self, kept: int, pause: float = 0.0) -> None:
        """Stop when the deadline has passed, or would pass during a ``pause``; ``kept`` bytes stay for a resume."""
        if self.ends is None or time.monotonic() + pause < self.ends:
            return
        raise DownloadError(
            f"the download of {self.remote.url} did not finish within download_timeout ({self.limits.seconds:g} s); "
            f"stopped with {kept} bytes kept for the next run to resume; raise the limit with "
            "`flowsr config set download_timeout SECONDS` or FLOWSR_DOWNLOAD_TIMEOUT"
        )


class _TransientError(Exception):
    """A failure worth retrying that ``requests`` does not raise itself (HTTP 5xx, a short body)."""


_RETRYABLE = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError, _TransientError)


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """Lowercase hex sha256 of the file at ``path``, read ``chunk`` bytes at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def part_path(target: Path) -> Path:
    """Where the bytes of ``target`` are collected until they are complete and verified."""
    return target.with_name(target.name + TEMP_SUFFIX)


def download(
    remote: RemoteFile,
    target: Path,
    *,
    offline: bool = False,
    progress: bool = True,
    timeout: tuple[float, float] = (10.0, 60.0),
    retries: int = 4,
    backoff: float = 1.0,
    session: requests.Session | None = None,
    allow_redirect_hosts: Collection[str] = frozenset(),
    limits: DownloadLimits = DownloadLimits(),
) -> Path:
    """Make sure ``target`` holds ``remote`` and return it.

    An existing ``target`` is returned untouched (the caller verifies cached files with
    :func:`sha256_of`). Otherwise the file is streamed into ``<target>.part``, resuming what an earlier
    run left there, retried ``retries`` times with delays of ``backoff * 2**n`` seconds on connection
    errors, timeouts, cut-off bodies and HTTP 5xx, verified and renamed into place. Redirects may only
    stay on the URL's host or go to ``allow_redirect_hosts``. Past its ``limits`` (bytes: the part is
    deleted; time, counted once the lock is held: the part is kept to resume) it stops. Raises
    :class:`DownloadError`.
    """
    if retries < 0:
        raise ValueError(f"retries must be >= 0, not {retries}")
    target = Path(target)
    if target.exists():
        return target
    if offline:
        raise DownloadError(
            f"{target.name} is missing and flowsr is offline: download {remote.url} "
            f"(sha256 {remote.sha256}) yourself and place it at {target.absolute()}"
        )
    allowed_hosts = {host.lower() for host in allow_redirect_hosts}
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(target, announce=progress):
            if target.exists():
                return target
            part = part_path(target)
            budget = _Budget(remote, limits)
            with _progress_bar(progress, target.name) as update, _session_for(session) as http:
                fetch = _Fetch(http, remote, part, timeout, allowed_hosts, update, budget)
                _fetch_with_retries(fetch, retries, backoff)
            _verify(remote, part)
            os.replace(part, target)
    except OSError as error:
        raise DownloadError(f"could not save {remote.url} to {target}: {error}") from error
    return target


@contextlib.contextmanager
def _exclusive_lock(target: Path, *, announce: bool) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<target>.lock``; the file itself is left in place afterwards."""
    with open(target.with_name(target.name + LOCK_SUFFIX), "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if announce:
                from flowsr_cli.console import report_note

                report_note(f"waiting for another process that is downloading {target.name}")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _session_for(session: requests.Session | None) -> Iterator[requests.Session]:
    """The caller's session, or a new one that is closed afterwards."""
    if session is not None:
        yield session
        return
    with requests.Session() as own:
        yield own


@contextlib.contextmanager
def _progress_bar(enabled: bool, label: str) -> Iterator[ProgressUpdate]:
    """A transient Rich bar on stderr (size, speed, ETA); yields ``update(bytes_done, total_or_None)``."""
    if not enabled:
        yield lambda done, total: None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from flowsr_cli.console import stderr_console

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=stderr_console(), transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


@dataclass(frozen=True)
class _Fetch:
    """One download in progress: where it comes from and goes, and what it may cost."""

    http: requests.Session
    remote: RemoteFile
    part: Path
    timeout: tuple[float, float]
    allowed_hosts: set[str]
    update: ProgressUpdate
    budget: _Budget

    def kept(self) -> int:
        """The bytes ``part`` holds so far."""
        return self.part.stat().st_size if self.part.exists() else 0


def _fetch_with_retries(fetch: _Fetch, retries: int, backoff: float) -> None:
    """Bring ``part`` to the complete length, retrying transient failures; each try resumes ``part``."""
    url = fetch.remote.url
    attempts = retries + 1
    last_error: BaseException | None = None
    for attempt in range(attempts):
        if attempt:
            pause = backoff * 2 ** (attempt - 1)
            fetch.budget.check_time(fetch.kept(), pause)
            time.sleep(pause)
        try:
            _fetch_once(fetch)
            return
        except requests.exceptions.SSLError as error:
            raise DownloadError(f"could not download {url}: {_describe(error)}") from error
        except _RETRYABLE as error:
            fetch.budget.check_time(fetch.kept())  # a timeout at the deadline is the deadline's
            last_error = error
        except requests.RequestException as error:
            raise DownloadError(f"could not download {url}: {_describe(error)}") from error
    plural = "s" if attempts != 1 else ""
    message = f"could not download {url} after {attempts} attempt{plural}: {_describe(last_error)}"
    raise DownloadError(message) from last_error


def _fetch_once(fetch: _Fetch) -> None:
    """One request: append the rest of the file to ``part`` (206), or rewrite it (200)."""
    remote, part, budget = fetch.remote, fetch.part, fetch.budget
    offset = fetch.kept()
    if remote.size is not None and offset == remote.size:
        return
    if remote.size is not None and offset > remote.size:
        offset = 0
    budget.check_time(offset)
    response = _open(fetch.http, remote.url, offset, budget.timeouts(fetch.timeout), fetch.allowed_hosts)
    with response:
        status = response.status_code
        if status == HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE and offset:
            return
        if status >= 500:
            raise _TransientError(_status_text(response))
        if status not in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
            moved = f" (redirected to {response.url})" if response.url != remote.url else ""
            raise DownloadError(f"{_status_text(response)} for {remote.url}{moved}")
        start = offset if status == HTTPStatus.PARTIAL_CONTENT else 0
        if start != _range_start(response):
            part.unlink(missing_ok=True)
            raise _TransientError(f"the server answered a resume from byte {start} with {_content_range(response)}")
        expected = _content_length(response)
        if expected is not None:
            budget.check_size(start + expected, part)
        received = _write_body(fetch, response, start, expected)
        if expected is not None and received < expected:
            raise _TransientError(f"the connection closed after {received} of {expected} bytes")


def _write_body(fetch: _Fetch, response: requests.Response, start: int, expected: int | None) -> int:
    """Write the body to ``part`` from byte ``start`` within the budget; returns the bytes received."""
    remote, budget = fetch.remote, fetch.budget
    total = remote.size if remote.size is not None else (None if expected is None else start + expected)
    received = 0
    fetch.update(start, total)
    with open(fetch.part, "ab" if start else "wb") as handle:
        for block in _body_blocks(response):
            budget.check_size(start + received + len(block), fetch.part)
            handle.write(block)
            received += len(block)
            fetch.update(start + received, total)
            budget.check_time(start + received)
        handle.flush()
        os.fsync(handle.fileno())
    return received


def _body_blocks(response: requests.Response) -> Iterator[bytes]:
    """The body exactly as sent, in blocks: undecoded, because ``Range`` offsets count these bytes.

    Unlike ``iter_content``, a block that arrived before the connection broke is still yielded, so a
    resume starts after it; a block is what one read brought (``read1``), so a trickling server cannot
    keep the caller from checking its limits. A broken connection (reset, cut short, TLS failure) becomes
    ``ChunkedEncodingError``, a stalled one ``ConnectionError``, as ``requests`` itself does.
    """
    try:
        while block := response.raw.read1(_STREAM_CHUNK, decode_content=False):
            yield block
    except ReadTimeoutError as error:
        raise requests.ConnectionError(error) from error
    except urllib3.exceptions.HTTPError as error:
        raise requests.exceptions.ChunkedEncodingError(error) from error


def _open(
    http: requests.Session, url: str, offset: int, timeout: tuple[float, float], allowed_hosts: set[str]
) -> requests.Response:
    """GET ``url`` from byte ``offset``, following up to MAX_REDIRECTS redirects to permitted hosts."""
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    origin_host = urlsplit(url).hostname or ""
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        response = http.get(current, headers=headers, stream=True, timeout=timeout, allow_redirects=False)
        if not response.is_redirect:
            return response
        response.close()
        current = urljoin(current, response.headers["Location"])
        host = urlsplit(current).hostname or ""
        if host != origin_host and host not in allowed_hosts:
            raise DownloadError(
                f"refusing the redirect of {url} from host {origin_host} to host {host} "
                "(only redirects within the same host are followed)"
            )
    raise DownloadError(f"too many redirects (more than {MAX_REDIRECTS}) for {url}")


def _verify(remote: RemoteFile, part: Path) -> None:
    """Check the length and sha256 of the complete ``part``; on a mismatch delete it and raise."""
    if remote.size is not None:
        actual_size = part.stat().st_size
        if actual_size != remote.size:
            part.unlink()
            raise DownloadError(
                f"{remote.url} has the wrong size: expected {remote.size} bytes got {actual_size} bytes "
                "(the download was deleted)"
            )
    actual = sha256_of(part)
    if actual != remote.sha256.lower():
        part.unlink()
        raise DownloadError(
            f"checksum mismatch for {remote.url}: expected sha256 {remote.sha256.lower()} got {actual} "
            "(the download was deleted)"
        )


def _status_text(response: requests.Response) -> str:
    """``HTTP 404 Not Found``: the code and its reason phrase."""
    reason = response.reason
    if not reason:
        with contextlib.suppress(ValueError):
            reason = HTTPStatus(response.status_code).phrase
    return f"HTTP {response.status_code} {reason}".rstrip()


def _content_length(response: requests.Response) -> int | None:
    """The body length the server announced, if it announced a usable one."""
    if response.headers.get("Content-Encoding", "identity") != "identity":
        return None
    try:
        return int(response.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def _content_range(response: requests.Response) -> str:
    """The ``Content-Range`` header as sent, quoted, for error messages."""
    return repr(response.headers.get("Content-Range", "no Content-Range"))


def _range_start(response: requests.Response) -> int:
    """The first byte a response carries: from ``Content-Range`` on a 206, else 0 (-1 if unreadable)."""
    if response.status_code != HTTPStatus.PARTIAL_CONTENT:
        return 0
    unit, _, spec = response.headers.get("Content-Range", "").partition(" ")
    first, _, _ = spec.partition("-")
    return int(first) if unit == "bytes" and first.isdigit() else -1


def _describe(error: BaseException | None) -> str:
    """A short cause for an error: the operating system's words where there are some, e.g. ``Connection refused``."""
    current = error
    for _ in range(10):
        if current is None:
            break
        if isinstance(current, TimeoutError) or "timeout" in type(current).__name__.lower():
            return "timed out"
        if isinstance(current, OSError) and current.strerror and not isinstance(current, requests.RequestException):
            return current.strerror
        if isinstance(current, requests.exceptions.ChunkedEncodingError):
            return "the connection closed before the whole file arrived"
        nested = current.args[0] if current.args and isinstance(current.args[0], BaseException) else None
        reason = getattr(current, "reason", None)
        current = nested or (reason if isinstance(reason, BaseException) else None) or current.__cause__
    return str(error)
