"""``bandistill export``: each generation to a self-describing ONNX file, checked in onnxruntime."""

from __future__ import annotations

import click

from bandistill.cli.output import print_json, print_table
from bandistill.cli.paths import plan_exports
from bandistill.onnx.export import DEFAULT_TOLERANCE, EXPORTERS, PARITY_SAMPLES, export_checkpoint
from bandistill.onnx.meta import DEFAULT_OPSET


@click.command("export")
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(),
              help="A model.pt, a run folder, or a folder of runs; repeatable (a shell glob may expand after it).")
@click.argument("more_checkpoints", nargs=-1, type=click.Path(), metavar="[CHECKPOINT ...]")
@click.option("--out", "outs", multiple=True, type=click.Path(),
              help="The .onnx file to write (one per --checkpoint), or one folder for several: <folder>/<run>.onnx.")
@click.option("--opset", type=int, default=None,
              help=f"ONNX opset (default: {DEFAULT_OPSET}); below 18 the TorchScript exporter is used.")
@click.option("--exporter", type=click.Choice(EXPORTERS), default="auto", show_default=True,
              help="torch.onnx exporter: dynamo (torch.export) or the older torchscript one.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Where the dataset lives (for the parity images; default: the run's).")
@click.option("--tolerance", type=float, default=DEFAULT_TOLERANCE, show_default=True,
              help="Fail when max |ONNX - PyTorch logit| exceeds tolerance * max(1, max |logit|).")
@click.option("--parity-samples", type=int, default=PARITY_SAMPLES, show_default=True,
              help="Test images the onnxruntime-vs-PyTorch check runs.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def command(checkpoints, more_checkpoints, outs, opset, exporter, data_dir, tolerance, parity_samples, as_json) -> None:
    """Export checkpoints to ONNX (uint8 image in, logits out, normalisation inside).

    \b
    bandistill export --checkpoint runs/gen1/model.pt --out onnx/gen1.onnx
    bandistill export --checkpoint runs/gen*/model.pt --out onnx/      # onnx/gen0.onnx, onnx/gen1.onnx, ...
    bandistill export --checkpoint runs --out onnx                     # every run folder under runs/

    Each file is run in onnxruntime on real test images and compared with PyTorch;
    above tolerance the command fails (exit 1) and leaves no file under the final name.
    """
    pairs = plan_exports([*checkpoints, *more_checkpoints], list(outs))
    results = []
    for ckpt, out in pairs:
        results.append(export_checkpoint(ckpt, out, opset, data_dir=data_dir, exporter=exporter,
                                         tolerance=tolerance, parity_samples=parity_samples))
    if as_json:
        print_json({"exports": results})
        return
    print_table(
        f"exported {len(results)} model{'s' if len(results) != 1 else ''} (input uint8 image, batch dynamic)",
        ["onnx", "gen", "model", "opset", "max |Δlogit|", "same top-1", "reported acc"],
        [
            (r["out"], r["generation"], r["model"], r["opset"], f"{r['parity']['max_abs_logit_diff']:.1e}",
             f"{100 * r['parity']['argmax_agreement']:.1f}%",
             "" if r["test_accuracy"] is None else f"{100 * r['test_accuracy']:.2f}%")
            for r in results
        ],
    )
