"""``omniseg-rt inspect PATH``: what an artefact is and what it holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from omniseg_rt.cli.errors import domain_errors
from omniseg_rt.cli.render import console, key_value_table, print_json


def inspect(
    path: Annotated[Path, typer.Argument(help="A checkpoint (.pth).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show a checkpoint's family, parameter count, tissues and file hash."""
    from omniseg_rt.artifacts import describe

    info = describe(path)
    if json_out:
        print_json(info)
        return
    rows = {
        "path": info["path"],
        "kind": info["kind"],
        "family": f"{info['family']}: {info['family_description']}",
        "parameters": f"{info['parameters']:,} ({info['parameters'] - info['parameters_used']:,} "
        "in the four unused upstream modules)",
        "tensors": f"{info['tensors']} ({', '.join(info['dtypes'])})",
        "tissues": ", ".join(f"{t['task_id']} {t['abbrev']} ({t['scale']})" for t in info["tissues"]),
        "bytes": f"{info['bytes']:,}",
        "sha256": info["sha256"],
    }
    if info.get("extra_keys"):
        rows["other entries"] = ", ".join(info["extra_keys"])
    console.print(key_value_table(f"{Path(info['path']).name}", rows))


def register(app: typer.Typer) -> None:
    app.command("inspect")(domain_errors(inspect))
