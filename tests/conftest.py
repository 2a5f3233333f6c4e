"""Shared fixtures: every test runs with its own config file and no FLOWSR_* settings from outside."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from flowsr_cli.cli import app

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"


def default_sigint() -> None:
    """A ``preexec_fn`` for a child that a test interrupts with SIGINT: Ctrl-C's default action, even when the test
    runs in a background job (a non-interactive shell starts those with SIGINT ignored, and Python then never
    raises KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private config file path (not created), a private cache dir and no other FLOWSR_* settings,
    except FLOWSR_MODEL=bicubic: tests of the CLI's plumbing run the instant baseline instead of the
    default model (tests of the default model delete it)."""
    for name in list(os.environ):
        if name.startswith("FLOWSR_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FLOWSR_MODEL", "bicubic")
    config_file = tmp_path_factory.mktemp("config") / "config.toml"
    monkeypatch.setenv("FLOWSR_CONFIG", str(config_file))
    monkeypatch.setenv("FLOWSR_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    return config_file


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a test module of tiny tensors: on a busy machine, synchronising threads
    costs far more than the work. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CliInvoker = Callable[..., Result]


@pytest.fixture
def run_cli() -> CliInvoker:
    """Run the real Typer app in-process: ``run_cli("upscale", "a.png", "--scale", "2")``."""
    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None, input: bytes | None = None) -> Result:
        return runner.invoke(app, list(args), env=env, input=input, catch_exceptions=False)

    return invoke
