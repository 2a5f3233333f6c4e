"""The `flowsr` command: a Typer app whose command groups live in sibling modules.

Nothing here imports torch; commands that compute import it when their work starts.
"""

from __future__ import annotations

import os
import re
import select
import stat
import sys
from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from flowsr_cli import __version__
from flowsr_cli.console import debug_enabled, discard_stdout, report_error
from flowsr_cli.errors import FlowsrError

EXIT_INTERRUPTED = 130
EXIT_READER_LEFT = 1
"""When a reader closes stdout early (`| head -5`): as Click and Rich end then."""

_VALUE_NAMES = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT", "path": "PATH"}


class PlainArgument(TyperArgument):
    """An argument as help shows it in most tools: NAME, NAME... or [NAME], with no Python type."""

    @property
    def display_name_raw(self) -> str:
        # Typer's help adds "..." to a many-valued argument itself, but only to one without a metavar.
        dots = "..." if self.nargs != 1 and self.metavar else ""
        return self._plain_name() + dots

    def display_type_rich(self, ctx: typer.Context) -> str | None:
        return None

    def get_usage_pieces(self, ctx: typer.Context) -> list[str]:
        name = self._plain_name() + ("..." if self.nargs != 1 else "")
        return [name if self.required else f"[{name}]"]

    def _plain_name(self) -> str:
        return self.metavar or (self.name or "").upper()


class PlainOption(TyperOption):
    """An option as help shows it in most tools: a flag alone, a value as FLOAT, INTEGER, TEXT or PATH (also
    for a metavar written in Typer's own style, ``<int>``)."""

    def display_type_rich(self, ctx: typer.Context) -> str | None:
        if self.is_flag or self.count:
            return None
        label = self.metavar or self.display_type(ctx)
        name = _value_name(label) if label.startswith("<") else label
        return name + "..." if self.nargs != 1 else name


def _value_name(label: str) -> str:
    """The conventional name for Typer's label of a value type: <float> -> FLOAT, <list[str]> -> TEXT,
    <int range> -> INTEGER, <a|b> -> [a|b]."""
    label = label.strip("<>").removeprefix("list[").removesuffix("]")
    if "|" in label:
        return f"[{label}]"
    kind = label.split(" ")[0].lower()
    return _VALUE_NAMES.get(kind, kind.upper())


def _plain(params: list[Any]) -> list[Any]:
    """``params`` shown plainly. Typer builds parameters itself, with no hook for their class, so the two
    display classes above take their place here (they change how a parameter looks, never how it parses)."""
    for param in params:
        if type(param) is TyperArgument:
            param.__class__ = PlainArgument
        elif type(param) is TyperOption:
            param.__class__ = PlainOption
    return params


def _reflow(text: str | None) -> str | None:
    """A docstring's paragraphs as running text: Typer's rich help keeps every line break of a docstring
    wrapped in the source, so a line ends mid-sentence on a wider terminal. An indented line (an example)
    stays on its own line."""
    return None if text is None else re.sub(r"(?<=\S)\n(?=\S)", " ", text)


class PlainHelp:
    """Mixed into a Typer command or group: its help shows plain flags and conventional metavars (see
    PlainOption, PlainArgument) and its docstring as running text."""

    help: str | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help = _reflow(self.help)

    def get_params(self, ctx: typer.Context) -> list[Any]:
        return _plain(super().get_params(ctx))  # type: ignore[misc]


class PlainHelpCommand(PlainHelp, TyperCommand):
    """A command with plain help."""


class PlainHelpGroup(PlainHelp, TyperGroup):
    """A command group with plain help."""


class ErrorReportingGroup(PlainHelpGroup):
    """Turns every error raised by a command into one line on stderr and an exit code, unless debugging.
    A reader that closes stdout early (`flowsr models list | head -1`) ends the run quietly, exit 1."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except FlowsrError as exc:
            if debug_enabled(ctx):
                raise
            report_error(str(exc))
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            report_error("interrupted; finished outputs are kept, rerun the same command to continue")
            ctx.exit(EXIT_INTERRUPTED)
        except Exception as exc:
            if isinstance(exc, BrokenPipeError) and _stdout_reader_left():
                discard_stdout()
                ctx.exit(EXIT_READER_LEFT)
            if debug_enabled(ctx):
                raise
            report_error(f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
            ctx.exit(1)


def _stdout_reader_left() -> bool:
    """True when stdout is a pipe whose reader has closed it (`| head -5` after head had its lines): a write
    to it fails with EPIPE and the kernel flags it with POLLERR. A broken pipe elsewhere is a real error."""
    try:
        descriptor = sys.stdout.fileno()
        if not stat.S_ISFIFO(os.fstat(descriptor).st_mode):
            return False
        poller = select.poll()
        poller.register(descriptor, select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no stdout, or not a file (a test's capture)
        return False


EXAMPLES = """[bold]Examples[/]

flowsr upscale photo.png --scale 3.5        # writes photo_x3.5.png
flowsr upscale photo.jpg --width 3840       # a fixed width, aspect ratio kept
flowsr upscale photos/ -s 2 -o big/         # a folder; a rerun skips finished ones
flowsr upscale - -s 2 < in.png > out.png    # stdin to stdout
flowsr models list                          # the models --model can name
flowsr config set model linf                # change a default

Each command has its own help: flowsr upscale --help"""

app = typer.Typer(
    name="flowsr",
    cls=ErrorReportingGroup,
    help="Upscale images at any scale (2x, 3.5x, 7.2x...) with flow-based super-resolution and a learned "
    "prior. Runs on a CUDA GPU or a CPU; the default model ships with flowsr and works offline.",
    epilog=EXAMPLES,
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"flowsr {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks (also FLOWSR_DEBUG=1)."),
) -> None:
    """flowsr: flow-based generative super-resolution with a learned prior, at any scale."""


def _register_commands() -> None:
    from flowsr_cli.cli import config_cmd, eval_cmd, models_cmd, rescale_cmd, train_cmd, upscale

    app.command("upscale", no_args_is_help=True, epilog=upscale.EPILOG)(upscale.upscale)
    app.command("eval", no_args_is_help=True, epilog=eval_cmd.EPILOG)(eval_cmd.eval_command)
    app.add_typer(rescale_cmd.rescale_app, name="rescale", cls=PlainHelpGroup)
    app.add_typer(train_cmd.train_app, name="train", cls=PlainHelpGroup)
    app.add_typer(models_cmd.models_app, name="models", cls=PlainHelpGroup)
    app.add_typer(config_cmd.config_app, name="config", cls=PlainHelpGroup)
    _use_plain_help(app)


def _use_plain_help(typer_app: typer.Typer) -> None:
    """Every command of ``typer_app`` and of its sub-apps shows plain help, unless it chose a class of its own
    (Typer's default is TyperCommand)."""
    for command in typer_app.registered_commands:
        if command.cls in (None, TyperCommand):
            command.cls = PlainHelpCommand
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _use_plain_help(group.typer_instance)


_register_commands()


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
