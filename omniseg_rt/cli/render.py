"""Rendering helpers shared by commands: JSON to stdout, key/value and row tables with rich."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()  # stdout: the results (tables, JSON)
err_console = Console(stderr=True)  # stderr: progress, per-slide lines and logs, so that stdout stays parseable


def print_json(obj: Any) -> None:
    """One JSON object on stdout (no rich markup, no wrapping)."""
    print(json.dumps(obj, indent=2, sort_keys=False, default=str))


def key_value_table(title: str, rows: Mapping[str, Any]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in rows.items():
        table.add_row(escape(key), escape(str(value)))
    return table


def rows_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(escape(column), overflow="fold")
    for row in rows:
        table.add_row(*(escape(str(v)) for v in row))
    return table
