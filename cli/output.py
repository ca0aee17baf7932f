"""Printing results: a rich table on stdout, or JSON with --json."""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable, Sequence

import click
from rich.console import Console
from rich.table import Table

#: Results are tables meant to be read whole: when stdout is a file or a pipe, do not wrap at 80 columns.
stdout_console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)


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
    """The paper's Table 2 layout: one row per network; test error %, then NLL and ECE tables."""
    from bandistill.report import FIGURES, format_cell, noise_note

    titles = {"error": "test error %", "nll": "test NLL", "ece": "expected calibration error"}
    columns = rows[0]["columns"]
    for fig in FIGURES:
        table = Table(title=titles[fig])
        table.add_column("network", no_wrap=True)
        table.add_column("params", justify="right", no_wrap=True)
        for col in columns:
            table.add_column(col, justify="right", no_wrap=True)
        for row in rows:
            cells = [format_cell(row["cells"][c][fig], fig) if c in row["cells"] else "/" for c in columns]
            table.add_row(row["network"], f"{row['parameters'] / 1e6:.2f}M", *cells)
        stdout_console.print(table)
    stdout_console.print(noise_note(rows[0]))


def print_variants_table(variants: dict[str, Any]) -> None:
    """Generation 1's students, one row per variant beside the baseline (the paper's Tables 2 and 4)."""
    from bandistill.report import FIGURES, format_cell

    table = Table(title="generation 1: one student per variant, from generation 0's cache")
    for name in ("student", "test error %", "test NLL", "ECE", "collapsed"):
        table.add_column(name, justify="left" if name == "student" else "right", no_wrap=True)
    for row in variants["rows"]:
        name = row["variant"] + (" (chain)" if row["chain"] else "")
        table.add_row(name, *(format_cell(row["cells"][f], f) for f in FIGURES), f"{row['collapsed']} of {row['repeats']}")
    stdout_console.print(table)


def print_report(result: dict[str, Any]) -> None:
    """A run's report as 'ban' and 'report' print it: the tables, the notes, where report.md is."""
    print_report_table(result["rows"])
    if result.get("variants"):
        print_variants_table(result["variants"])
    for note in result.get("notes", []):
        click.echo(note)
    click.echo(f"report: {result['files']['report.md']}")
