"""The Typer application, its global options and the error-to-exit-code rule."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from omniseg_rt import __version__

app = typer.Typer(
    name="omniseg-rt",
    help="Omni-Seg kidney tissue segmentation: export, build engines, segment whole slides.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"omniseg-rt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv: debug).")] = 0,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Omni-Seg kidney tissue segmentation: export, build engines, segment whole slides."""
    level = logging.WARNING - 10 * min(verbose, 2)
    from omniseg_rt.cli.render import err_console

    # Logs go to stderr (the console progress bars use too): stdout stays clean for --json output.
    # On a terminal rich lays them out; in a pipe or a log file each record is one plain line.
    if err_console.is_terminal:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=err_console, show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("omniseg-rt: %(levelname)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def _register() -> None:
    # Command modules import only core packages at module level (rule: --help works without torch).
    from omniseg_rt.cli import (bench_cmd, build_cmd, calibrate_cmd, export_cmd, inspect_cmd, segment_cmd,
                                tissues_cmd, train_cmd)

    for module in (segment_cmd, build_cmd, calibrate_cmd, bench_cmd, export_cmd, inspect_cmd, tissues_cmd,
                   train_cmd):
        module.register(app)


_register()


def main() -> None:
    """Console-script entry point."""
    app(prog_name="omniseg-rt")
