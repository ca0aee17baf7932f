"""``bandistill dump-logits``: the teacher's logits on the planned views of the train split, into HDF5."""

from __future__ import annotations

import click

from bandistill.cache.schema import DTYPES, human_bytes
from bandistill.cli.output import print_json, print_mapping
from bandistill.distributed import is_main
from bandistill.dump import dump_logits


@click.command("dump-logits")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False), help="Teacher model.pt.")
@click.option("--dataset", required=True, help="The dataset the teacher was trained on.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Where the dataset lives.")
@click.option("--views", required=True,
              help="K (views cycled by the student), 'epochs' (one view per student epoch) or 'all' "
                   "(the view policy's whole space, e.g. 162 for pad 4 + flip).")
@click.option("--epochs", type=int, default=None,
              help="With --views epochs: the student's epochs (default: the teacher's).")
@click.option("--top-k", type=int, default=0, show_default=True,
              help="Keep each row's k largest logits and its log-sum-exp instead of the full row (0: full rows).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the views' parameters.")
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="float16", show_default=True,
              help="Storage type of the logits.")
@click.option("--batch-size", type=int, default=512, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--out", required=True, type=click.Path(), help="Cache file to write, e.g. cache/gen0.h5.")
@click.option("--overwrite", is_flag=True, help="Replace an existing cache or unfinished dump with other settings.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def command(checkpoint, dataset, data_dir, views, epochs, top_k, seed, dtype, batch_size, device, out, overwrite,
            as_json) -> None:
    """Cache a teacher's logits on the planned augmented views of every training sample (resumable).

    Run it again after an interruption to finish the file; a complete cache with the same
    settings is left as it is.
    """
    result = dump_logits(
        checkpoint, dataset, out, views=views, data_dir=data_dir, seed=seed, dtype=dtype, top_k=top_k,
        epochs=epochs, batch_size=batch_size, device=device, overwrite=overwrite, log=lambda msg: click.echo(msg, err=True),
    )
    if not is_main():  # under torchrun, rank 0 reports
        return
    if as_json:
        print_json(result)
        return
    title = "cache already complete" if result["already_complete"] else "dumped teacher logits"
    print_mapping(f"{title}: {result['cache']}", {
        "teacher": f"{result['teacher']} (gen {result['teacher_generation']}, {result['teacher_digest']})",
        "dataset": result["dataset"],
        "views": f"{result['views']} ({result['view_plan']}; {result['views_written']} written, "
                 f"{result['views_resumed']} resumed)",
        "stored rows": f"top {result['top_k']} + log-sum-exp" if result["top_k"] else "full",
        "samples x classes": f"{result['samples']} x {result['classes']}",
        "dtype": result["dtype"],
        "file size": human_bytes(result["file_bytes"]),
        "teacher test accuracy": result["teacher_test_accuracy"],
        "seconds": result["seconds"],
        "device": result["device"],
    })
