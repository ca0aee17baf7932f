"""``bandistill models``: the model zoo and the torchvision/timm networks, with parameter counts."""

from __future__ import annotations

import click

from bandistill.cli.output import print_json, print_table
from bandistill.errors import UserError
from bandistill.models import build_model, count_parameters, list_models
from bandistill.models.libraries import (
    TIMM_INSTALL, library_models, list_library_models, matches, meta_parameter_count, timm_available,
)


@click.command("models")
@click.argument("patterns", nargs=-1)
@click.option("--num-classes", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--in-channels", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--image-size", type=click.IntRange(min=1), default=224, show_default=True,
              help="Input size for the networks whose parameters depend on it (ViT).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def command(patterns: tuple[str, ...], num_classes: int, in_channels: int, image_size: int, as_json: bool) -> None:
    """List model names with their parameter counts. Any valid depth/width also works.

    PATTERNS filter the names (globs such as 'timm/resnet*', or substrings such as
    efficientnet). Without one: the CIFAR zoo and torchvision's classification networks
    (timm's are many; name a pattern to list them).
    """
    zoo = [n for n in list_models() if not patterns or any(matches(n, p) for p in patterns)]
    if patterns:
        library = sorted({n for p in patterns for n in list_library_models(p)})
    else:
        library = [f"torchvision/{n}" for n in library_models("torchvision")]
    if patterns and not zoo and not library:
        hint = "" if timm_available() else f" (timm is not installed: {TIMM_INSTALL})"
        raise UserError(f"no model matches {' '.join(patterns)}{hint}; try a shorter pattern such as resnet")
    rows = []
    for name in zoo:
        rows.append(_row(name, count_parameters(build_model(name, num_classes, in_channels))))
    for name in library:
        rows.append(_row(name, meta_parameter_count(name, num_classes, in_channels, (image_size, image_size))))
    if as_json:
        print_json({"num_classes": num_classes, "in_channels": in_channels, "models": rows})
        return
    print_table(
        f"models ({num_classes} classes)", ["name", "parameters", "M"],
        [(r["name"], "?" if r["parameters"] is None else f"{r['parameters']:,}",
          "?" if r["millions"] is None else f"{r['millions']:.2f}") for r in rows],
    )
    if not patterns:
        click.echo("patterns: densenet-bc-{depth}-{growth} (depth 6n+4), wrn-{depth}-{width} (depth 6n+4), "
                   "resnet-{20,32,44,56,110}, torchvision/<name>, timm/<name>")
        timm = (f"timm: {len(library_models('timm'))} more networks, list them with: bandistill models 'timm/*'"
                if timm_available() else f"timm networks: install timm ({TIMM_INSTALL})")
        click.echo(timm)


def _row(name: str, params: int | None) -> dict:
    return {"name": name, "parameters": params, "millions": None if params is None else round(params / 1e6, 2)}
