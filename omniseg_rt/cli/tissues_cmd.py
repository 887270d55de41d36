"""``omniseg-rt tissues``: the six tissue types and their scale groups."""

from __future__ import annotations

from typing import Annotated

import typer

from omniseg_rt.cli.errors import domain_errors
from omniseg_rt.cli.render import console, print_json, rows_table
from omniseg_rt.tissues import TISSUES


def tissues(json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False) -> None:
    """List the tissue types the network segments, with magnification and pixel size."""
    rows = [
        {
            "task_id": t.task_id,
            "abbrev": t.abbrev,
            "name": t.name,
            "scale_group": t.group.name,
            "nominal_mpp": t.nominal_mpp,
            "colour": "#%02x%02x%02x" % t.colour,
        }
        for t in TISSUES
    ]
    if json_out:
        print_json({"tissues": rows})
        return
    console.print(rows_table("Omni-Seg tissue types", list(rows[0]), [list(r.values()) for r in rows]))


def register(app: typer.Typer) -> None:
    app.command("tissues")(domain_errors(tissues))
