"""Dump throughput: ``dump-logits`` vs the same model's pure inference over the same views.

Both run in one process on the same checkpoint, data and device, in interleaved rounds:

* ``inference``: the views made on the device and the teacher's forward pass (eval, no grad,
  bf16 autocast on CUDA) in batches, then the clean test split, logits left on the device --
  the floor a dump can reach;
* ``dump``: :class:`bandistill.dump.LogitDump` writing a complete cache file of the same views
  (parameters, logits copied to host, the finite/float16 checks, HDF5 writes, the test split).

Reported: images/s of each (train views only in the count, median over rounds) and
``dump_over_inference`` (median of per-round ratios); the target is >= 0.9.

    python benchmarks/dump_throughput.py                          # resnet-20 on digits
    python benchmarks/dump_throughput.py --dataset imagefolder --data-dir /path/to/tree --views 4 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bandistill.checkpoint import save_checkpoint
from bandistill.device import autocast
from bandistill.dump import LogitDump
from bandistill.train import TrainConfig, TrainRun
from bandistill.data.views import normalize


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet-20")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    tmp = tempfile.TemporaryDirectory()
    root = Path(tmp.name)
    # an (untrained) checkpoint exactly as `train` writes it: speed does not depend on the weights
    run = TrainRun(TrainConfig(model=args.model, dataset=args.dataset, data_dir=args.data_dir, device=args.device,
                               epochs=1), root / "run", progress=False)
    run._build()
    run.history = [{"epoch": 1, "loss": 0.0, "train_accuracy": 0.0, "test_accuracy": 0.0, "test_loss": 0.0}]
    save_checkpoint(run._checkpoint(1, final=True), root / "model.pt")
    dev, ds, policy = run.device, run.dataset, run.dataset.view_policy
    model = run.model.eval()
    mean, std = (torch.tensor(v, device=dev) for v in ds.normalization())
    images, test = ds.train_images.to(dev), ds.test_images.to(dev)
    params = [policy.params(0, v, np.arange(ds.num_train)).to(dev) for v in range(args.views)]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    @torch.no_grad()
    def inference() -> None:
        for p in params:
            for s in range(0, ds.num_train, args.batch_size):
                x = policy.apply(images[s : s + args.batch_size], p[s : s + args.batch_size])
                x = normalize(x, mean, std).contiguous(memory_format=torch.channels_last)
                with autocast(dev):
                    model(x)
        for s in range(0, test.shape[0], args.batch_size):  # the dump writes the clean test split too
            with autocast(dev):
                model(normalize(test[s : s + args.batch_size], mean, std).contiguous(memory_format=torch.channels_last))

    def dump() -> None:
        LogitDump(root / "model.pt", args.dataset, root / "cache.h5", views=args.views, data_dir=args.data_dir,
                  batch_size=args.batch_size, device=args.device, overwrite=True, progress=False).run()

    kinds = {"inference": inference, "dump": dump}
    for fn in kinds.values():  # warm-up
        fn()
    seconds: dict[str, list[float]] = {k: [] for k in kinds}
    names = list(kinds)
    for r in range(args.rounds):
        for kind in names[r % 2 :] + names[: r % 2]:
            sync()
            t0 = time.perf_counter()
            kinds[kind]()
            sync()
            seconds[kind].append(time.perf_counter() - t0)
    images_done = ds.num_train * args.views
    result = {
        "model": args.model,
        "dataset": ds.name,
        "samples": ds.num_train,
        "views": args.views,
        "batch_size": args.batch_size,
        "device": str(dev),
        "images_per_s": {k: images_done / statistics.median(v) for k, v in seconds.items()},
        "dump_over_inference": statistics.median(i / d for i, d in zip(seconds["inference"], seconds["dump"])),
    }
    tmp.cleanup()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        ips = result["images_per_s"]
        print(f"dump throughput, {args.model} on {ds.name} ({ds.num_train} images x {args.views} views), "
              f"batch {args.batch_size}, {dev}, median of {args.rounds} interleaved rounds")
        print(f"  inference {ips['inference']:10.1f} img/s")
        print(f"  dump      {ips['dump']:10.1f} img/s   {result['dump_over_inference']:.3f} x inference "
              "(target >= 0.9)")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
