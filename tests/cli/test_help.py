"""Every help page, rendered at a fixed width, reads like the help of tools people know: plain flags,
metavars such as FLOAT and INPUTS... rather than Python types, defaults shown, examples at the end."""

from __future__ import annotations

import re

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from flowsr_cli.cli import app
from tests.conftest import CliInvoker

WIDTH = {"COLUMNS": "100"}
PYTHON_TYPE = re.compile(r"<[a-z_]+(\[[^\]]*\])?>")
"""Typer's own labels: <bool>, <int>, <str>, <path>, <list[str]>..."""


def _command_paths() -> list[tuple[str, ...]]:
    """Every command and sub-command of `flowsr`, as its words after `flowsr`."""
    found: list[tuple[str, ...]] = []

    def walk(command: object, path: tuple[str, ...]) -> None:
        found.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return found


def _help(run_cli: CliInvoker, *path: str) -> str:
    result = run_cli(*path, "--help", env=WIDTH)
    assert result.exit_code == 0, result.output
    return result.stdout


def _usage(page: str) -> str:
    return next(line.strip() for line in page.splitlines() if line.strip().startswith("Usage:"))


@pytest.mark.parametrize("path", _command_paths(), ids=lambda path: " ".join(("flowsr", *path)))
def test_help_shows_no_python_types_and_plain_argument_names(run_cli: CliInvoker, path: tuple[str, ...]) -> None:
    page = _help(run_cli, *path)
    assert PYTHON_TYPE.search(page) is None, PYTHON_TYPE.search(page)
    assert "BOOLEAN" not in page, "a flag takes no value"
    usage = _usage(page)
    assert "{" not in usage and "}" not in usage, usage
    assert re.search(r"\b[a-z_]+\.\.\.", usage) is None, f"arguments are named in capitals: {usage}"


def test_metavars_follow_the_usual_conventions(run_cli: CliInvoker) -> None:
    page = _help(run_cli, "upscale")
    assert re.search(r"Usage: flowsr upscale \[OPTIONS\] INPUTS?\.\.\.", page), _usage(page)
    assert re.search(r"--scale +-s +FLOAT ", page), page
    assert re.search(r"--recursive +-r +Descend", page), "a flag is shown alone"
    assert re.search(r"--help +-h +Show this message", page)
    add = _help(run_cli, "models", "add")
    assert "Usage: flowsr models add [OPTIONS] NAME URL" in add
    assert re.search(r"--size +INTEGER ", add) and re.search(r"--sha256 +TEXT ", add)
    assert "Usage: flowsr models download [OPTIONS] [NAME]" in _help(run_cli, "models", "download")


def test_flowsr_help_says_what_it_does_and_ends_with_examples(run_cli: CliInvoker) -> None:
    page = _help(run_cli)
    assert "Upscale images" in page.split("Options")[0]
    examples = page.rsplit("Commands", 1)[1]
    assert "Examples" in examples
    for example in (
        "flowsr upscale photo.png --scale 3.5",
        "flowsr upscale photos/ -s 2 -o big/",
        "flowsr models list",
        "flowsr config set model linf",
    ):
        assert example in examples, example


@pytest.mark.parametrize(
    ("group", "examples"),
    [
        ("models", ["flowsr models list", "flowsr models add NAME URL --sha256 HEX", "flowsr models remove NAME"]),
        ("config", ["flowsr config show", "flowsr config set format webp", "flowsr config unset format"]),
    ],
)
def test_models_and_config_end_with_examples(run_cli: CliInvoker, group: str, examples: list[str]) -> None:
    page = _help(run_cli, group)
    tail = page.rsplit("Commands", 1)[1]
    assert "Examples" in tail
    for example in examples:
        assert example in tail, example


def _words(page: str) -> str:
    """The page's words without the panels' borders, so text wrapped over two rows reads as one line."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", page).split())


@pytest.mark.parametrize(
    ("command", "default"),
    [
        (("models", "verify"), "NAME One model (default: every model on this machine)."),
        (("models", "path"), "NAME A model (default: print the models folder)."),
        (("models", "download"), "NAME The model to fetch; needed unless --all."),
        (("models", "add"), "--size INTEGER The file's size in bytes (default: unknown; max_download_mb caps it)"),
        (("models", "add"), "--description TEXT A line for `flowsr models list` (default: none)."),
    ],
)
def test_optional_values_of_models_say_their_default(
    run_cli: CliInvoker, command: tuple[str, ...], default: str
) -> None:
    assert default in _words(_help(run_cli, *command))


@pytest.mark.parametrize("path", _command_paths(), ids=lambda path: " ".join(("flowsr", *path)))
def test_help_text_wrapped_in_the_source_is_running_text(run_cli: CliInvoker, path: tuple[str, ...]) -> None:
    """On a terminal wide enough for a whole paragraph, each paragraph is one line."""
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    page = run_cli(*path, "--help", env={"COLUMNS": "1000"}).stdout
    lines = [" ".join(line.split()) for line in page.splitlines()]
    for paragraph in (command.help or "").split("\n\n"):
        text = " ".join(re.sub(r"\[/?[a-z ]*\]", "", paragraph).split())
        assert any(text in line for line in lines), text


def test_a_metavar_a_command_chooses_is_kept_and_shown_the_same_way() -> None:
    from flowsr_cli.cli import PlainHelpCommand

    toy = typer.Typer()

    @toy.command(cls=PlainHelpCommand)
    def go(
        inputs: list[str] = typer.Argument(..., metavar="INPUT", help="Files."),
        level: int = typer.Option(3, "--level", metavar="N", help="How much."),
        loud: bool = typer.Option(False, "--loud", help="Say more."),
        size: str = typer.Option("1", "--size", metavar="<int>", help="How big."),
    ) -> None:
        """Do it."""

    page = CliRunner().invoke(toy, ["--help"], env=WIDTH).stdout
    assert re.search(r"Usage: \S+ \[OPTIONS\] INPUT\.\.\. *\n", page), page
    assert re.search(r"\* +INPUT\.\.\. +Files\.", page) and re.search(r"--level +N +How much\.", page)
    assert re.search(r"--loud +Say more\.", page)
    assert re.search(r"--size +INTEGER +How big\.", page), "a metavar in Typer's style is shown plainly"
