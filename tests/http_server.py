"""A real HTTP file server on 127.0.0.1 for download tests: byte ranges, a request log and fault modes."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

_RANGE = re.compile(r"bytes=(\d+)-$")


@dataclass
class Route:
    """What one path serves, and how it misbehaves.

    ``cut_first``: the first request gets the full ``Content-Length`` but only half the body, then the
    connection closes. ``wrong_body``: served instead of ``body``. ``status``: always this error status.
    ``fail_times``/``fail_status``: the first N requests get that status. ``redirect_to``: a ``Location``
    (absolute or relative) sent with 302. ``ignore_range``: always 200 with the whole body.
    ``stall_first``: seconds the first response waits after its headers. ``chunk_size``/``chunk_delay``:
    the body is written in pieces with a pause between them. ``gate``: after the first piece, the
    response waits until the event is set.
    """

    body: bytes = b""
    cut_first: bool = False
    wrong_body: bytes | None = None
    status: int | None = None
    fail_times: int = 0
    fail_status: int = 500
    redirect_to: str | None = None
    ignore_range: bool = False
    stall_first: float = 0.0
    chunk_size: int = 1 << 16
    chunk_delay: float = 0.0
    gate: threading.Event | None = None
    served: int = field(default=0, init=False)


@dataclass(frozen=True)
class Seen:
    """One request as the server received it."""

    path: str
    range: str | None
    host: str | None


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """Clients that hang up mid-response are part of the tests, not errors to print."""


class FileServer:
    """``ThreadingHTTPServer`` on 127.0.0.1 (a free port) in a background thread; use as a context manager."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.log: list[Seen] = []
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), _make_handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        """The address of ``path`` on this server, spelled with ``host``."""
        return f"http://{host}:{self.port}{path}"

    def add(self, path: str, route: Route) -> Route:
        """Serve ``route`` at ``path``."""
        self.routes[path] = route
        return route

    def requests_for(self, path: str) -> list[Seen]:
        """The logged requests for ``path``, oldest first."""
        with self._lock:
            return [seen for seen in self.log if seen.path == path]

    def _record(self, seen: Seen, path: str) -> tuple[Route | None, int]:
        with self._lock:
            self.log.append(seen)
            route = self.routes.get(path)
            if route is None:
                return None, 0
            route.served += 1
            return route, route.served

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        for route in self.routes.values():
            if route.gate is not None:
                route.gate.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def _make_handler(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            """Silent: the server keeps its own log."""

        def do_GET(self) -> None:
            requested_range = self.headers.get("Range")
            route, count = server._record(Seen(self.path, requested_range, self.headers.get("Host")), self.path)
            if route is None:
                self._send_empty(HTTPStatus.NOT_FOUND)
            elif route.status is not None:
                self._send_empty(route.status)
            elif count <= route.fail_times:
                self._send_empty(route.fail_status)
            elif route.redirect_to is not None:
                self._send_empty(HTTPStatus.FOUND, {"Location": route.redirect_to})
            else:
                self._send_body(route, count, requested_range)

        def _send_empty(self, status: int, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _send_body(self, route: Route, count: int, requested_range: str | None) -> None:
            body = route.wrong_body if route.wrong_body is not None else route.body
            match = _RANGE.match(requested_range or "")
            start = int(match.group(1)) if match and not route.ignore_range else 0
            if start and start >= len(body):
                self._send_empty(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, {"Content-Range": f"bytes */{len(body)}"})
                return
            if start:
                self.send_response(HTTPStatus.PARTIAL_CONTENT)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(HTTPStatus.OK)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            payload = body[start:]
            if route.cut_first and count == 1:
                payload = payload[: len(payload) // 2]
                self.close_connection = True
            if route.stall_first and count == 1:
                self.wfile.flush()
                time.sleep(route.stall_first)
            self._write_slowly(route, payload)

        def _write_slowly(self, route: Route, payload: bytes) -> None:
            for offset in range(0, len(payload), route.chunk_size):
                if offset and route.chunk_delay:
                    time.sleep(route.chunk_delay)
                self.wfile.write(payload[offset : offset + route.chunk_size])
                self.wfile.flush()
                if offset == 0 and route.gate is not None:
                    route.gate.wait(timeout=20)

    return Handler
