"""`flowsr config`: show and edit the user config file."""

from __future__ import annotations

import typer

from flowsr_cli import config
from flowsr_cli.console import printable

EXAMPLES = """[bold]Examples[/]

flowsr config show                    # every setting, its value, its source
flowsr config set format webp         # checked, then stored
flowsr config get device
flowsr config unset format            # back to FLOWSR_FORMAT or the default
FLOWSR_DEVICE=cpu flowsr upscale a.png -s 2    # a setting for one run"""

config_app = typer.Typer(
    help="Show and edit settings (file: `flowsr config path`; precedence: flag > FLOWSR_* env > file > default).",
    epilog=EXAMPLES,
    no_args_is_help=True,
    rich_markup_mode="rich",
)


def _complete_key(incomplete: str) -> list[str]:
    return [key for key in config.SETTINGS if key.startswith(incomplete)]


KEY_ARGUMENT = typer.Argument(
    ..., help="A setting name (see `flowsr config show`).", autocompletion=_complete_key, show_default=False
)


@config_app.command("path")
def path_command() -> None:
    """Print the config file's path (it may not exist yet)."""
    typer.echo(printable(config.config_path()))


@config_app.command("show")
def show_command() -> None:
    """Show every setting, its effective value and where that value comes from."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    settings = config.Settings()
    table = Table(title=f"flowsr settings (file: {printable(settings.path)})", title_justify="left")
    for column in ("key", "value", "source", "description"):
        table.add_column(column)
    for key, setting in config.SETTINGS.items():
        resolved = settings.resolve(key)
        cells = (key, printable(config.format_value(resolved.value)), printable(resolved.source), setting.help)
        table.add_row(*(Text(cell) for cell in cells))
    Console().print(table)


@config_app.command("get")
def get_command(key: str = KEY_ARGUMENT) -> None:
    """Print the effective value of one setting."""
    typer.echo(printable(config.format_value(config.Settings()[key])))


@config_app.command("set")
def set_command(
    key: str = KEY_ARGUMENT, value: str = typer.Argument(..., help="The new value.", show_default=False)
) -> None:
    """Store a setting in the config file (validated first)."""
    stored = config.set_value(key, value)
    typer.echo(f"{key} = {printable(config.format_value(stored))}  ({printable(config.config_path())})")


@config_app.command("unset")
def unset_command(key: str = KEY_ARGUMENT) -> None:
    """Remove a setting from the config file, so the environment or the default applies."""
    if config.unset_value(key):
        typer.echo(f"{key} removed from {printable(config.config_path())}")
    else:
        typer.echo(f"{key} was not set in {printable(config.config_path())}")
