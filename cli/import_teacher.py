"""``bandistill import-teacher``: weights you already have as a generation 0, without training."""

from __future__ import annotations

import click

from bandistill.cli.output import print_json, print_mapping
from bandistill.errors import UserError
from bandistill.import_teacher import import_teacher


def _floats(value: str | None, option: str) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(v) for v in value.replace(",", " ").split()]
    except ValueError:
        raise UserError(f"{option} takes numbers separated by commas, e.g. 0.485,0.456,0.406; got {value!r}") from None


@click.command("import-teacher")
@click.argument("weights", type=click.Path(dir_okay=False))
@click.option("--model", default=None,
              help="Architecture the weights were saved from, e.g. torchvision/resnet50 or timm/efficientnet_b0 "
                   "(not needed for a bandistill checkpoint).")
@click.option("--dataset", required=True, help="The dataset the students will train on.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Where the dataset lives.")
@click.option("--image-size", type=click.IntRange(min=1), default=None,
              help="Stream the ImageFolder tree's photos at this size (as train --image-size does).")
@click.option("--class-map", default=None,
              help="When the teacher has more classes: 'wnid' (class folders are ImageNet WordNet ids) or a file, "
                   "JSON {\"dataset class\": teacher index} or lines '<class> <index>'.")
@click.option("--mean", default=None, help="Override the normalisation: per-channel mean, e.g. 0.485,0.456,0.406.")
@click.option("--std", default=None, help="Override the normalisation: per-channel std, e.g. 0.229,0.224,0.225.")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--out", required=True, type=click.Path(), help="Run folder to write (its model.pt).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def command(weights, model, dataset, data_dir, image_size, class_map, mean, std, batch_size, device, out, as_json) -> None:
    """Turn a torchvision/timm state dict (.pth, .safetensors) or a bandistill checkpoint into a
    generation 0 for DATASET, and print its test accuracy there.

    Then dump its logits (bandistill dump-logits --checkpoint OUT/model.pt ...) or start a
    born-again chain from it (bandistill ban --teacher OUT/model.pt ...). Nothing is downloaded.
    """
    result = import_teacher(weights, dataset, out, model=model, data_dir=data_dir, image_size=image_size,
                            class_map=class_map,
                            mean=_floats(mean, "--mean"), std=_floats(std, "--std"), device=device,
                            batch_size=batch_size)
    if as_json:
        print_json(result)
        return
    mapped = result["class_map"]
    print_mapping(f"imported teacher: {result['checkpoint']}", {
        "model": f"{result['model']} ({result['parameters']:,} parameters)",
        "classes": (f"{result['classes']} of the teacher's {result['teacher_outputs']} ({mapped['spec']})"
                    if mapped else str(result["classes"])),
        "normalisation": f"mean {result['normalization']['mean']} std {result['normalization']['std']}",
        "from": result["normalization_source"],
        "evaluation": result["eval_transform"],
        "test accuracy": f"{result['test_accuracy']:.4f} (chance {result['chance_accuracy']:.4f})",
        "test loss": result["test_loss"],
        "content digest": result["checkpoint_digest"],
    })
