"""``bandistill ensemble``: every member, every prefix ensemble and the BANE, on onnxruntime."""

from __future__ import annotations

import click

from bandistill.cli.output import print_json, print_table
from bandistill.bane import AVERAGES
from bandistill.cli.paths import resolve_onnx_paths
from bandistill.onnx.ensemble import SPLITS, evaluate_ensemble
from bandistill.onnx.runtime import PROVIDERS
from bandistill.progress import stderr_console


@click.command("ensemble")
@click.option("--onnx", "onnx_paths", multiple=True, type=str,
              help="Member ONNX files: repeat it, quote a glob ('gen*.onnx'), or let the shell expand gen*.onnx.")
@click.argument("more_onnx", nargs=-1, type=str, metavar="[MODEL.onnx ...]")
@click.option("--dataset", default=None, help="Dataset to evaluate on (default: the one the models name).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Where the dataset lives.")
@click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--provider", type=click.Choice(PROVIDERS), default="auto", show_default=True,
              help="onnxruntime execution provider: auto is CUDA when a GPU is usable, else CPU; cuda never "
                   "falls back (one line says why CUDA cannot run). The provider each session ran on is shown.")
@click.option("--cuda-graph", is_flag=True,
              help="Capture each session as an onnxruntime CUDA graph at --batch-size (the last batch padded); "
                   "CUDA only.")
@click.option("--average", type=click.Choice(AVERAGES), default="probs", show_default=True,
              help="Average the members' probabilities, or their logits (then softmax).")
@click.option("--allow-mixed", is_flag=True, help="Ensemble members trained on different data.")
@click.option("--predictions", type=click.Path(dir_okay=False), default=None,
              help="Write the ensemble's probabilities (.npy, .npz with labels, or .csv).")
@click.option("--save-onnx", type=click.Path(dir_okay=False), default=None,
              help="Write the whole ensemble as one ONNX graph (checked against the members).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def command(onnx_paths, more_onnx, dataset, data_dir, split, batch_size, provider, cuda_graph, average, allow_mixed,
            predictions, save_onnx, as_json) -> None:
    """Evaluate ONNX generations and their ensembles (BANE): top-1 error, NLL, ECE.

    \b
    bandistill ensemble --onnx onnx/gen*.onnx --dataset digits
    bandistill ensemble --onnx onnx/gen*.onnx --dataset digits --save-onnx bane.onnx

    Members are ordered by generation (from their metadata), then by file name; the
    report has every member and the paper's ensembles of them: Ens*k (BAN-1 .. BAN-k,
    without the teacher) and Ens(0..k) (with it), the last being the whole BANE.
    """
    result = evaluate_ensemble(
        resolve_onnx_paths([*onnx_paths, *more_onnx]), dataset, data_dir=data_dir, split=split, batch_size=batch_size,
        provider=provider, average=average, allow_mixed=allow_mixed, predictions=predictions,
        save_onnx=save_onnx, progress=not as_json, cuda_graph=cuda_graph,
    )
    for warning in result["warnings"]:
        stderr_console.print(f"[yellow]warning:[/yellow] {warning}")
    if as_json:
        print_json(result)
        return
    rows = []
    for m in result["members"]:
        reported = m.get("train_reported_accuracy")
        rows.append((m["name"], m["generation"], m["networks"], *_figures(m),
                     "" if reported is None else f"{100 * (1 - reported):.2f}", m["provider"]))
    for e in result["ensembles"][:-1]:
        rows.append((e["name"], "", e["members"], *_figures(e), "", ""))
    if len(result["members"]) > 1:
        e = result["ensemble"]
        rows.append((e["label"], "", e["members"], *_figures(e), "", ""))
    print_table(
        f"{result['dataset']} {result['split']} ({result['samples']} images), average of {result['average']}, "
        f"onnxruntime on {result['provider']}",
        ["model", "gen", "nets", "top-1 err %", "NLL", "ECE %", "reported err %", "ran on"],
        rows,
    )
    if any(e["name"].startswith("Ens") for e in result["ensembles"]):
        click.echo("Ens*k averages BAN-1 .. BAN-k (the paper's convention, without the teacher); "
                   "Ens(0..k) averages the teacher and BAN-1 .. BAN-k.")
    if "merged" in result:
        m = result["merged"]
        click.echo(
            f"wrote {m['out']}: one graph of {len(m['members'])} members; top-1 err {100 * m['merged_error']:.2f}% "
            f"on {m['provider']} (checked on {m['checked_on']}: max |prob diff| vs members "
            f"{m['max_abs_prob_diff']:.1e}, predictions agree {100 * m['prediction_agreement']:.1f}%)"
        )
    if "predictions" in result:
        click.echo(f"wrote {result['predictions']}")


def _figures(row: dict) -> tuple[str, str, str]:
    return f"{100 * row['error']:.2f}", f"{row['nll']:.4f}", f"{100 * row['ece']:.2f}"
