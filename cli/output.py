"""Printing results: a rich table on stdout, or JSON with --json."""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

from rich.console import Console
from rich.table import Table

stdout_console = Console(soft_wrap=True)


def print_json(obj: Any) -> None:
    """One JSON document on stdout (nothing else goes to stdout with --json)."""
    print(json.dumps(obj, indent=2, default=str))


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="left" if col == columns[0] else "right")
    for row in rows:
        table.add_row(*[_fmt(v) for v in row])
    stdout_console.print(table)


def print_mapping(title: str, data: dict[str, Any]) -> None:
    print_table(title, ["", "value"], [(k, v) for k, v in data.items()])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v)
