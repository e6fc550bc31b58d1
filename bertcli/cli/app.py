"""The Typer app. Subcommands are discovered from the modules of ``bertcli.cli``.

Each command module defines ``NAME``, ``ORDER`` and ``command`` (and imports torch only
inside ``command``), so ``bertcli --help`` stays instant.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Annotated

import typer

from bertcli import __version__
from bertcli.cli._common import STATE

app = typer.Typer(
    name="bertcli",
    help="A command-line toolchain for BERT: vocabularies, pretraining, fine-tuning, embeddings, similarity.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bertcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    if debug:
        STATE["debug"] = True


def _register() -> None:
    import bertcli.cli as pkg

    found = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("_") or info.name == "app":
            continue
        mod = importlib.import_module(f"bertcli.cli.{info.name}")
        if hasattr(mod, "command") and hasattr(mod, "NAME"):
            found.append((getattr(mod, "ORDER", 100), mod.NAME, mod))
    for _, name, mod in sorted(found):
        app.command(name, help=mod.command.__doc__, epilog=getattr(mod, "EPILOG", None))(mod.command)


_register()


def main() -> None:
    app(prog_name="bertcli")
