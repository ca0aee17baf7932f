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


def print_report_table(rows: Sequence[dict[str, Any]]) -> None:
    """The paper's Table 2 layout: test error % per generation and ensemble (NLL, ECE below each)."""
    from bandistill.report import noise_note

    columns = rows[0]["columns"]
    table = Table(title="test error % (NLL / ECE)")
    table.add_column("network")
    table.add_column("params", justify="right")
    for col in columns:
        table.add_column(col, justify="right")
    for row in rows:
        cells = []
        for col in columns:
            c = row["cells"][col]
            err = f"{c['error']['mean']:.2f}" + (f" ± {c['error']['std']:.2f}" if c["error"]["std"] is not None else "")
            cells.append(f"{err}\n{c['nll']['mean']:.3f} / {c['ece']['mean']:.3f}")
        table.add_row(row["network"], f"{row['parameters'] / 1e6:.2f}M", *cells)
    stdout_console.print(table)
    stdout_console.print(noise_note(rows[0]))
