"""Where a `--backend ray` batch runs: a Ray cluster joined (``--address``) or started on this machine, quietly,
and shut down again however the run ends; how many workers it runs and what each one holds."""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType

from flowsr_cli.errors import UsageError

INSTALL_HINT = "pip install 'flowsr[ray]'"
CONNECT_TIMEOUT = 10.0
"""Seconds to wait for a cluster's address to answer."""


@dataclass(frozen=True)
class ClusterRequest:
    """What the user asked of the cluster: ``address`` (None: start one here), the number of workers (None: as
    many as its CPUs, or GPUs, hold) and the CPUs and GPUs each worker reserves."""

    address: str | None = None
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0


def require_ray() -> ModuleType:
    """The ``ray`` module, or a UsageError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError(f"--backend ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


@contextmanager
def connected(request: ClusterRequest) -> Iterator[int]:
    """Join the cluster at ``request.address`` or start one on this machine, with Ray's logs, dashboard and
    usage reports off; yields the number of workers to run. A cluster started here is shut down on the way out
    (also on errors and Ctrl-C); a connection this process already had (a library user's, a test's) is kept."""
    ray = require_ray()
    started = not ray.is_initialized()
    if started:
        if request.address not in (None, "auto"):
            _check_reachable(request.address)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            ray.init(
                address=request.address,
                include_dashboard=False,
                logging_level=logging.ERROR,
                log_to_driver=False,
                configure_logging=True,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UsageError(f"--address {request.address}: cannot join the Ray cluster: {_first_line(exc)}") from None
    with _raylet_messages_dropped():  # until the cluster is shut down: killing the workers makes it speak too
        try:
            yield worker_count(request, ray.cluster_resources(), local=started and request.address is None)
        finally:
            if started:
                ray.shutdown()


@contextmanager
def _raylet_messages_dropped() -> Iterator[None]:
    """Ray's driver prints what its cluster says of failures (a worker died, a task is retried) on stdout, where
    it would break the `--json` lines; flowsr reports what became of each input itself, so those messages are
    dropped while the batch runs. (Ray has no setting for it: its printer is replaced, if this Ray has it.)"""
    module = sys.modules.get("ray._private.worker")
    printer = getattr(module, "print_to_stdstream", None)
    if printer is None:
        yield
        return

    def print_unless_raylet(data: dict[str, object], ignore_prefix: bool) -> None:
        if data.get("pid") != "raylet":
            printer(data, ignore_prefix)

    module.print_to_stdstream = print_unless_raylet
    try:
        yield
    finally:
        module.print_to_stdstream = printer


def worker_count(request: ClusterRequest, resources: dict[str, float], *, local: bool) -> int:
    """``--workers``, else as many workers as the cluster's CPUs (or GPUs, when each worker takes some) hold, at
    least one. A cluster started here cannot grow, so a request it cannot hold is a UsageError; a cluster
    joined may add nodes as the workers wait for them."""
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    fits = int(cpus // request.cpus_per_worker) if request.cpus_per_worker else None
    if request.gpus_per_worker:
        by_gpus = int(gpus // request.gpus_per_worker)
        fits = by_gpus if fits is None else min(fits, by_gpus)
    workers = request.workers or max(fits or 1, 1)
    if local and fits is not None and workers > fits:
        raise UsageError(
            f"{workers} worker(s) with {request.cpus_per_worker:g} CPU(s) and {request.gpus_per_worker:g} GPU(s) "
            f"each do not fit this machine ({cpus:g} CPUs, {gpus:g} GPUs); lower --workers or --cpus-per-worker, "
            "or join a larger cluster with --address"
        )
    return workers


def parse_address(raw: object) -> str:
    """``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``; a ValueError otherwise."""
    text = str(raw).strip()
    if text == "auto":
        return text
    host, _, port = text.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c.isspace() for c in host):
        raise ValueError(raw)
    return text


def _check_reachable(address: str) -> None:
    """Refuse at once an address nothing listens at (Ray itself would retry for minutes, logging each try)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise UsageError(f"--address {address}: cannot reach a Ray cluster there: {exc.strerror or exc}") from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
