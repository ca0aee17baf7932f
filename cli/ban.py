"""``bandistill ban``: the whole born-again experiment in one resumable command."""

from __future__ import annotations

import click
from click.core import ParameterSource

from bandistill.cli.output import print_json, print_report
from bandistill.errors import UserError
from bandistill.losses import LOSSES
from bandistill.run import DEFAULT_VIEWS, ban_options, run_ban
from bandistill.progress import stderr_console


@click.command("ban")
@click.option("--model", default=None, help="Teacher (generation 0) architecture, e.g. densenet-bc-90-60 or "
                                            "torchvision/resnet50 (with --teacher: the weights' architecture).")
@click.option("--teacher", type=click.Path(dir_okay=False), default=None,
              help="Start from a teacher you have: a torchvision/timm state dict (.pth, .safetensors) or a bandistill "
                   "model.pt, imported as generation 0 (see import-teacher) instead of training one.")
@click.option("--class-map", default=None,
              help="With --teacher of more classes: 'wnid' or a file mapping the dataset's classes to its outputs.")
@click.option("--student-model", default=None, help="Architecture of generations 1..N (default: --model).")
@click.option("--transfer-ends", is_flag=True,
              help="Copy the teacher's first and last layers into the students and freeze them (paper Table 5).")
@click.option("--dataset", default=None, help="cifar10, cifar100, imagefolder or digits.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None)
@click.option("--image-size", type=int, default=None,
              help="--dataset imagefolder: stream the photos as RandomResizedCrop views of this size (see train).")
@click.option("--generations", type=int, default=3, show_default=True, help="Born-again generations after gen0.")
@click.option("--views", default=DEFAULT_VIEWS, show_default=True,
              help="Views cached per sample: 'epochs' (one per student epoch), 'all' (the view policy's whole "
                   "space) or K (cycled).")
@click.option("--top-k", type=int, default=0, show_default=True,
              help="Cache each row's k largest logits and log-sum-exp instead of the full row (0: full rows).")
@click.option("--epochs", type=int, default=200, show_default=True, help="Epochs per generation.")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=0.1, show_default=True)
@click.option("--weight-decay", type=float, default=None)
@click.option("--schedule", type=click.Choice(["step", "cosine"]), default="step", show_default=True)
@click.option("--loss", type=click.Choice(LOSSES), default="ban+l", show_default=True)
@click.option("--variants", default=None,
              help="Several students of generation 0's cache, e.g. ban,ban+l,cwtm,dkpp,kd:T=4 (items: a loss with "
                   "optional :T=, :alpha=, :model=); one report row each. Replaces --loss/--temperature/--alpha.")
@click.option("--chain-from", default=None, help="The variant the chain goes on from (default: the first).")
@click.option("--warmup-epochs", type=int, default=0, show_default=True,
              help="Students only: raise the lr linearly over their first N epochs (0: the paper's recipe); "
                   "against a student collapsing onto one class.")
@click.option("--bane-teacher", is_flag=True,
              help="Generation k learns from the average of generations 0..k-1's caches (the BANE as teacher).")
@click.option("--teacher-average", type=click.Choice(["probs", "logits"]), default="probs", show_default=True,
              help="With --bane-teacher: average the members' probabilities (the BANE) or logits.")
@click.option("--temperature", type=float, default=1.0, show_default=True)
@click.option("--alpha", type=float, default=0.5, show_default=True)
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--repeats", type=int, default=1, show_default=True, help="Independent seeds of the whole chain.")
@click.option("--device", default="auto", show_default=True)
@click.option("--opset", type=int, default=None, help="ONNX opset of the exported generations.")
@click.option("--nproc-per-node", type=int, default=1, show_default=True,
              help="Run the train and dump stages under torchrun on this many processes (one per GPU).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Experiment folder.")
@click.option("--supersede", is_flag=True,
              help="Let changed options redo finished stages; their outputs are moved to OUT/superseded/.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json on stdout.")
@click.pass_context
def command(ctx: click.Context, out: str, supersede: bool, as_json: bool, **opts) -> None:
    """Train gen0, then N born-again generations from cached logits; export, ensemble, report.

    Run it again to finish an interrupted run: options left out are taken from OUT/ban.json,
    and options that would redo finished stages are refused unless --supersede is given.
    """
    given = {k: v for k, v in opts.items() if ctx.get_parameter_source(k) != ParameterSource.DEFAULT}
    if given.get("variants"):
        clash = next((k for k in ("loss", "temperature", "alpha") if k in given), None)
        if clash:
            raise UserError(f"--{clash} and --variants both say how students learn; put it in a variant "
                            "(e.g. kd:T=4:alpha=0.9) and drop --" + clash)
    result = run_ban(ban_options(out, given), out, supersede=supersede,
                     log=lambda msg: stderr_console.print(f"[dim]{msg}[/dim]"))
    if as_json:
        print_json({k: result.get(k) for k in ("out", "stages_run", "rows", "files", "variants")})
    else:
        print_report(result)
