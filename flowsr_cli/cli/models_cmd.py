"""`flowsr models`: bring model files into flowsr's model folder."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from flowsr_cli.config import Settings, choice_flag, integer_flag
from flowsr_cli.console import printable
from flowsr_cli.errors import UsageError
from flowsr_cli.hub.manifest import TASKS, UPSCALE

if TYPE_CHECKING:
    from flowsr_cli.hub.catalog import Hub
    from flowsr_cli.hub.manifest import ModelEntry

EXAMPLES = """[bold]Examples[/]

flowsr models list                              # name, source, size, here?
flowsr models add NAME URL --sha256 HEX         # downloads on first use
flowsr upscale photo.png -s 4 --model NAME
flowsr models download NAME                     # ahead of time (--all: all)
flowsr models verify                            # re-hash every file
flowsr models import LINF.pth --name mine       # an original checkpoint
flowsr models import LINF.pth --prior LP.pth --name mine-lp   # with its learned prior
flowsr models remove NAME                       # unregister, delete its file"""

models_app = typer.Typer(
    help="Named models: list, download (checked by sha256), verify, locate, remove, add, import.",
    epilog=EXAMPLES,
    no_args_is_help=True,
    rich_markup_mode="rich",
)


@models_app.command("import")
def import_command(
    checkpoint: Path = typer.Argument(
        ..., help="An original LINF, SRFlow or HCFlow (SR or rescaling) checkpoint (.pth).", show_default=False
    ),
    name: str = typer.Option(..., "--name", help="The name to use with --model.", show_default=False),
    prior: Path | None = typer.Option(
        None,
        "--prior",
        help="The original learned prior trained for this flow (FlowSR-LP's LINF-LP or SRFlow-LP .pth): "
        "one model of both, run with the original code's numerics.",
        show_default=False,
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing model of that name."),
) -> None:
    """Convert an original LINF, SRFlow or HCFlow checkpoint (with --prior: and its learned prior) into a flowsr
    model; an HCFlow rescaling checkpoint becomes a model for `flowsr rescale`.

    Only weights are read (no pickled code is run). The model's sha256 is recorded and checked before each
    use."""
    from flowsr_cli.families.importing import convert_original
    from flowsr_cli.families.model_file import save_model
    from flowsr_cli.families.registry import network
    from flowsr_cli.hub.manifest import RESCALE, check_name

    check_name(name, "--name")
    hub = _hub()
    if name in hub.registry:
        raise UsageError(f"--name {name!r} is a registered model (`flowsr models list`); choose another name")
    target = hub.cached_path(name)
    if target.exists() and not force:
        raise UsageError(f"a model named {name!r} exists ({printable(target)}); use --force to replace it")
    model = convert_original(checkpoint, prior)
    target.parent.mkdir(parents=True, exist_ok=True)
    sources = {"source": checkpoint.name} if prior is None else {"source": checkpoint.name, "prior": prior.name}
    save_model(model, target, **sources)
    task = network(model.spec["name"]).task
    hub.record_import(name, target, checkpoint.absolute(), prior.absolute() if prior is not None else None, task)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    typer.echo(f"imported {name}: {parameters / 1e6:.2f} M parameters -> {printable(target)}")
    scale = getattr(model, "scale", 3.5)  # fixed-scale models (SRFlow: 4) say which scale they do
    if task == RESCALE:
        typer.echo(
            f"use it with: flowsr rescale down IMAGE.png --scale {scale} --model {name}, then flowsr rescale up "
            f"IMAGE_lr{scale}.png (an image rescaling model restores its own LRs; `upscale` cannot run it)"
        )
        return
    typer.echo(f"use it with: flowsr upscale IMAGE --scale {scale} --model {name}")


def _hub() -> Hub:
    from flowsr_cli.hub.catalog import Hub

    return Hub(Settings())


def _entry(hub: Hub, name: str) -> ModelEntry:
    entry = hub.find(name)
    if entry is None:
        known = ", ".join(hub.entries()) or "none yet"
        raise UsageError(f"no model named {name!r}; known: {known}")
    return entry


@models_app.command("list")
def list_command() -> None:
    """Every named model: what it is for, where it comes from, its size, whether it is on this machine."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    hub = _hub()
    table = Table(title=f"flowsr models (cache: {printable(hub.models_dir)})", title_justify="left")
    for column in ("name", "for", "source", "size", "here", "description"):
        table.add_column(column)
    for entry in hub.entries().values():
        path = hub.local_path(entry)
        size = path.stat().st_size if path.is_file() else entry.size
        cells = (
            entry.name,
            _purpose(entry),
            "bundled" if entry.bundled else entry.source,
            f"{size / 1e6:.1f} MB" if size else "?",
            "yes" if path.is_file() else "no",
            entry.description,
        )
        table.add_row(*(Text(cell) for cell in cells))
    if not table.rows:
        typer.echo("no named models yet: add one with `flowsr models add` or `flowsr models import`")
        return
    Console().print(table)


def _purpose(entry: ModelEntry) -> str:
    """What a model is for: its command (`upscale` or `rescale`) and, when fixed, its scale."""
    if entry.scales is not None and entry.scales[0] == entry.scales[1]:
        return f"{entry.task} x{entry.scales[0]:g}"
    return entry.task if entry.scales is None else f"{entry.task}, any scale"


@models_app.command("download")
def download_command(
    name: str | None = typer.Argument(None, help="The model to fetch; needed unless --all.", show_default=False),
    all_models: bool = typer.Option(False, "--all", help="Fetch every registry model."),
) -> None:
    """Download models into the cache (resumable, checked by sha256)."""
    hub = _hub()
    if (name is None) == (not all_models):
        raise UsageError("give a model name or --all")
    names = [entry.name for entry in hub.registry.values()] if all_models else [name]
    for model in names:
        path = hub.fetch(_entry(hub, model))
        typer.echo(f"{model}: {printable(path)}")


@models_app.command("verify")
def verify_command(
    name: str | None = typer.Argument(
        None, help="One model (default: every model on this machine).", show_default=False
    ),
) -> None:
    """Re-hash model files on disk against their published sha256 (exit 1 on any mismatch)."""
    from flowsr_cli.hub.catalog import changed_digest, reimport_command

    hub = _hub()
    entries = [_entry(hub, name)] if name else list(hub.entries().values())
    bad = 0
    for entry in entries:
        path = hub.local_path(entry)
        if not path.is_file():
            if name:
                raise UsageError(f"{entry.name}: not downloaded ({printable(path)})")
            continue
        if entry.source == "imported" and not entry.sha256:
            remedy = reimport_command(entry)
            typer.echo(f"{entry.name}: no recorded sha256 (imported by an older flowsr; to record one: {remedy})")
            continue
        if not entry.sha256:
            typer.echo(f"{entry.name}: no published checksum ({entry.source})")
            continue
        actual = changed_digest(entry, path)
        if actual is None:
            typer.echo(f"{entry.name}: ok")
        else:
            bad += 1
            typer.echo(f"{entry.name}: CORRUPT {printable(path)} (expected {entry.sha256}, got {actual})")
    if bad:
        raise typer.Exit(1)


@models_app.command("path")
def path_command(
    name: str | None = typer.Argument(None, help="A model (default: print the models folder).", show_default=False),
) -> None:
    """Print where a model's file is (or would be downloaded to)."""
    hub = _hub()
    typer.echo(printable(hub.local_path(_entry(hub, name)) if name else hub.models_dir))


@models_app.command("remove")
def remove_command(name: str = typer.Argument(..., help="The model to remove.", show_default=False)) -> None:
    """Forget a model: its file and its registration.

    Deletes the model's downloaded or imported file and, for a model added with `flowsr models add`, its
    entry in your models.json. Models that ship inside flowsr cannot be removed."""
    hub = _hub()
    removed = hub.remove(_entry(hub, name))
    what = [f"its entry in {printable(removed.manifest)}"] if removed.manifest else []
    if removed.file:
        what.append(f"its file {printable(removed.file)}")
    note = "" if removed.file else " (it was not downloaded)"
    typer.echo(f"removed {name}: {' and '.join(what)}{note}")


@models_app.command("add")
def add_command(
    name: str = typer.Argument(..., help="The name to use with --model.", show_default=False),
    url: str = typer.Argument(..., help="Where the .safetensors file is served.", show_default=False),
    sha256: str = typer.Option(..., "--sha256", help="The file's SHA-256 (64 hex digits).", show_default=False),
    size: int | None = typer.Option(
        None,
        "--size",
        parser=integer_flag("--size", 1),
        help="The file's size in bytes (default: unknown; max_download_mb caps it).",
        show_default=False,
    ),
    description: str = typer.Option(
        "", "--description", help="A line for `flowsr models list` (default: none).", show_default=False
    ),
    task: str = typer.Option(
        UPSCALE,
        "--task",
        parser=choice_flag("--task", TASKS),
        metavar="upscale|rescale",
        help="What it is for: super-resolution (upscale, eval, train) or image rescaling (flowsr rescale).",
    ),
) -> None:
    """Register a model served elsewhere (e.g. a team's server); it downloads on first use."""
    from flowsr_cli.hub.manifest import ModelEntry, check_name

    check_name(name, "name")
    if re.fullmatch(r"[0-9a-fA-F]{64}", sha256) is None:
        raise UsageError(f"--sha256 {sha256!r}: expected 64 hexadecimal digits")
    if not url.startswith(("https://", "http://")):
        raise UsageError(f"url {url!r}: expected an http(s) URL")
    manifest = _hub().add(ModelEntry(name, description, sha256.lower(), size, url=url, source="user", task=task))
    typer.echo(f"added {name} to {printable(manifest)}; it downloads on first use")
