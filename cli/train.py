"""``bandistill train``: generation 0 on labels, or a student from cached teacher logits."""

from __future__ import annotations

import click
from click.core import ParameterSource

from bandistill.cli.output import print_json, print_mapping
from bandistill.collapse import warning
from bandistill.distributed import is_main
from bandistill.errors import UserError
from bandistill.losses import LOSSES
from bandistill.step import COMPILE_MODES
from bandistill.train import TrainConfig, train


@click.command("train")
@click.option("--model", required=True, help="Architecture, e.g. resnet-20, densenet-bc-100-12, wrn-28-10.")
@click.option("--dataset", required=True, help="cifar10, cifar100, imagefolder or digits.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Where the dataset lives.")
@click.option("--download", is_flag=True, help="Let torchvision download CIFAR (needs network).")
@click.option("--image-size", type=int, default=None,
              help="--dataset imagefolder: stream the photos from disk as RandomResizedCrop views of this size "
                   "(e.g. 224, 160, 128); without it the tree is decoded whole into memory.")
@click.option("--epochs", type=int, default=200, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True,
              help="The global batch: under torchrun each rank trains its slice of it.")
@click.option("--lr", type=float, default=0.1, show_default=True)
@click.option("--weight-decay", type=float, default=None, help="Default: 1e-4 DenseNet/ResNet, 5e-4 Wide-ResNet.")
@click.option("--schedule", type=click.Choice(["step", "cosine"]), default="step", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--val-split", type=float, default=0.0, help="Fraction of train held out for validation.")
@click.option("--memory-efficient", is_flag=True, help="DenseNet: recompute concatenations to save memory.")
@click.option("--dropout", type=float, default=0.0, help="Wide-ResNet dropout rate.")
@click.option("--compile", type=click.Choice(list(COMPILE_MODES)), default="auto", show_default=True,
              help="graph: capture the whole step as one CUDA graph (needs a GPU); none: run it eagerly; "
                   "auto: graph on a GPU, none on the CPU.")
@click.option("--eval-every", type=int, default=1, show_default=True,
              help="Evaluate on the test split every N epochs (the last epoch always).")
@click.option("--teacher-logits", "teacher_cache", type=click.Path(dir_okay=False), multiple=True,
              help="Cache from 'bandistill dump-logits': train a student against it. Give it once per member "
                   "to learn from their average (the BANE as teacher; the caches must share views and seed).")
@click.option("--teacher-average", type=click.Choice(["probs", "logits"]), default="probs", show_default=True,
              help="With several --teacher-logits: average the members' probabilities (the BANE) or logits.")
@click.option("--teacher-checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Run this teacher live on the student's views every step (online distillation: the "
                   "reference the cache is measured against; slower).")
@click.option("--views", default=None,
              help="With --teacher-checkpoint: the view plan, K, 'epochs' (default) or 'all', as dump-logits names it.")
@click.option("--view-seed", type=int, default=None,
              help="With --teacher-checkpoint: seed of the views' parameters (dump-logits --seed; default 0).")
@click.option("--loss", type=click.Choice(LOSSES), default="ban+l", show_default=True, help="Student loss.")
@click.option("--warmup-epochs", type=int, default=0, show_default=True,
              help="Raise the lr linearly over the first N epochs (0: none, the paper's recipe); against a "
                   "student that collapses onto one class early.")
@click.option("--temperature", type=float, default=1.0, show_default=True, help="Softmax temperature (kd).")
@click.option("--alpha", type=float, default=0.5, show_default=True, help="Weight of the soft term (kd).")
@click.option("--device-cache-gb", type=float, default=4.0, show_default=True,
              help="Hold the cache in the training device's memory (GPU memory on CUDA, host memory on the CPU) "
                   "when it fits this many GB, else stream one view at a time.")
@click.option("--cache-memory-gb", type=float, default=None, hidden=True)  # its old name, kept for scripts
@click.option("--init-weights", type=click.Path(dir_okay=False), default=None,
              help="Start from these weights (a torchvision/timm state dict or a bandistill checkpoint); inputs are "
                   "then normalised as the weights expect.")
@click.option("--class-map", default=None,
              help="With --init-weights of more classes: 'wnid' or a file (see import-teacher) to keep theirs.")
@click.option("--fresh-head", is_flag=True, help="With --init-weights: a new classifier for the dataset's classes.")
@click.option("--sync-bn", is_flag=True,
              help="Under torchrun: BatchNorm statistics over the whole global batch (default: each rank's slice).")
@click.option("--out", required=True, type=click.Path(), help="Run folder to write.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last epoch.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.pass_context
def command(ctx: click.Context, **opts) -> None:
    """Train a model: on labels, or born-again from a teacher's cache (--teacher-logits) or a live teacher."""
    out, resume, as_json = opts.pop("out"), opts.pop("resume"), opts.pop("as_json")
    old_name = opts.pop("cache_memory_gb")
    if old_name is not None:
        if ctx.get_parameter_source("device_cache_gb") != ParameterSource.DEFAULT:
            raise UserError("--cache-memory-gb is the old name of --device-cache-gb; give one of them")
        opts["device_cache_gb"] = old_name
    opts["teacher_cache"] = list(opts["teacher_cache"]) or None
    if not (opts["teacher_cache"] or opts["teacher_checkpoint"]):
        given = [n for n in ("loss", "temperature", "alpha") if ctx.get_parameter_source(n) != ParameterSource.DEFAULT]
        if given:  # they shape a student's loss; without a teacher they would be silently ignored
            raise UserError(f"--{given[0]} applies to a student: add --teacher-logits CACHE, or drop --{given[0]}")
        opts["loss"] = "ce"
    result = train(TrainConfig(**opts), out, resume=resume)
    if not is_main():  # under torchrun, rank 0 reports
        return
    collapsed = warning(result.get("collapse"))
    if collapsed:  # a run that learned nothing must not pass silently (stderr, so --json stays one object)
        click.echo(collapsed, err=True)
    if as_json:
        print_json(result)
    else:
        print_mapping(f"trained {result['model']} on {result['dataset']}", {
            k: result[k] for k in ("generation", "epochs", "test_accuracy", "test_loss", "train_accuracy",
                                   "parameters", "seconds", "device", "checkpoint") if k in result
        } | {"collapsed": "YES" if collapsed else "no"})
