"""``bandistill report``: regenerate a run's report from what is on disk."""

from __future__ import annotations

import click

from bandistill.cli.output import print_json, print_report
from bandistill.run import build_report


@click.command("report")
@click.argument("run_dir", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the report's JSON on stdout.")
def command(run_dir: str, as_json: bool) -> None:
    """Rewrite report.md, report.json and report.png of a 'bandistill ban' run."""
    result = build_report(run_dir)
    if as_json:
        print_json({"rows": result["rows"], "files": result["files"], "variants": result.get("variants")})
    else:
        print_report(result)
