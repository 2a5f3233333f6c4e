"""`flowsr models`: bring model files into flowsr's model folder."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from flowsr_cli.cli.console import printable
from flowsr_cli.config import Settings
from flowsr_cli.errors import UsageError

models_app = typer.Typer(help="Manage model files.", no_args_is_help=True, rich_markup_mode="rich")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@models_app.command("import")
def import_command(
    checkpoint: Path = typer.Argument(..., help="An original LINF checkpoint (.pth).", show_default=False),
    name: str = typer.Option(..., "--name", help="The name to use with --model.", show_default=False),
    force: bool = typer.Option(False, "--force", help="Replace an existing model of that name."),
) -> None:
    """Convert an original LINF checkpoint into a flowsr model (weights only; no pickled code is run)."""
    from flowsr_cli.models import save_model
    from flowsr_cli.models.importer import convert_original

    if _NAME.fullmatch(name) is None:
        raise UsageError(f"--name {name!r}: use letters, digits, '.', '_' or '-' (starting with a letter or digit)")
    target = Settings()["cache_dir"] / "models" / f"{name}.safetensors"
    if target.exists() and not force:
        raise UsageError(f"a model named {name!r} exists ({printable(target)}); use --force to replace it")
    model = convert_original(checkpoint)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, target, source=checkpoint.name)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    typer.echo(f"imported {name}: {parameters / 1e6:.2f} M parameters -> {printable(target)}")
    typer.echo(f"use it with: flowsr upscale IMAGE --scale 3.5 --model {name}")
