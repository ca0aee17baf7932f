"""``bandistill models``: the model zoo with parameter counts."""

from __future__ import annotations

import click

from bandistill.cli.output import print_json, print_table
from bandistill.models import build_model, count_parameters, list_models


@click.command("models")
@click.option("--num-classes", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--in-channels", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def command(num_classes: int, in_channels: int, as_json: bool) -> None:
    """List model names with their parameter counts. Any valid depth/width also works."""
    rows = []
    for name in list_models():
        params = count_parameters(build_model(name, num_classes, in_channels))
        rows.append({"name": name, "parameters": params, "millions": round(params / 1e6, 2)})
    if as_json:
        print_json({"num_classes": num_classes, "in_channels": in_channels, "models": rows})
    else:
        print_table(
            f"models ({num_classes} classes)", ["name", "parameters", "M"],
            [(r["name"], f"{r['parameters']:,}", f"{r['millions']:.2f}") for r in rows],
        )
        click.echo("patterns: densenet-bc-{depth}-{growth} (depth 6n+4), wrn-{depth}-{width} (depth 6n+4), resnet-{20,32,44,56,110}")
