"""The `flowsr` command: a Typer app whose command groups live in sibling modules.

Nothing here imports torch; commands that compute import it when their work starts.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperGroup

from flowsr_cli import __version__
from flowsr_cli.console import debug_enabled, report_error
from flowsr_cli.errors import FlowsrError

EXIT_INTERRUPTED = 130


class ErrorReportingGroup(TyperGroup):
    """Turns every error raised by a command into one line on stderr and an exit code, unless debugging."""

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
            if debug_enabled(ctx):
                raise
            report_error(f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
            ctx.exit(1)


app = typer.Typer(
    name="flowsr",
    cls=ErrorReportingGroup,
    help="Upscale images at any scale with flow-based super-resolution and a learned prior.",
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
    from flowsr_cli.cli import config_cmd, eval_cmd, models_cmd, train_cmd, upscale

    app.command("upscale", no_args_is_help=True)(upscale.upscale)
    app.command("eval", no_args_is_help=True)(eval_cmd.eval_command)
    app.add_typer(train_cmd.train_app, name="train")
    app.add_typer(models_cmd.models_app, name="models")
    app.add_typer(config_cmd.config_app, name="config")


_register_commands()


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
