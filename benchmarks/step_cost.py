"""What a student step costs: plain supervised vs. from each kind of cache vs. with a live teacher.

Measured side by side in one process, on the same model, the same batches and the same
device, interleaved step by step (so drift in the machine's load hits every kind alike),
and reported as the median per-step time and as ratios to the plain step (the median over
batches of each batch's ratio):

    python benchmarks/step_cost.py                       # resnet-20 on digits
    python benchmarks/step_cost.py --dataset synthetic32 --model resnet-56 --json

Kinds (every cached one reads a real cache file through
:func:`bandistill.soft_targets.open_soft_targets`, uses the ``ban+l`` loss, and is the
training loop of a student):

* ``plain``: view from pure parameters -> normalise -> forward/backward on labels (generation 0);
* ``cached``: K = 4 fixed views, in memory;         ``cached_stream``: the same, streamed;
* ``epochs``: one view per epoch, in memory;        ``epochs_stream``: streamed;
* ``all``: the view policy's whole space, each sample its own view, in memory;
  ``all_stream``: streamed (each epoch reads every view once into an epoch table);
* ``topk``: an ``epochs`` cache of top-k rows (k = 5, or 1 for 10 classes), in memory;
* ``live``: a teacher of the same architecture run (eval mode, no grad) on every batch.

A step never reads the file; what a cache costs beyond the step is the epoch's preparation
(picking the epoch's view table, or reading it when streaming), timed separately and
reported amortised over an epoch's steps as ``<kind>_with_epoch_over_plain``. The cache
files hold random logits (the cost does not depend on their values). The target is
``cached_over_plain`` <= 1.05 for every cached kind, streaming included: the teacher's cost
was paid once, at dump time.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bandistill.cache import schema
from bandistill.cache.writer import CacheWriter
from bandistill.data import ImageDataset, load_dataset
from bandistill.device import autocast, resolve_device
from bandistill.losses import make_loss
from bandistill.models import build_model
from bandistill.soft_targets import LiveTeacher, open_soft_targets
from bandistill.train import TrainConfig
from bandistill.data.views import ViewPlan, ViewPolicy, normalize


def synthetic32(n: int = 4096, classes: int = 100) -> ImageDataset:
    """CIFAR-shaped random data (no download): 32x32x3 uint8, CIFAR's view policy."""
    g = torch.Generator().manual_seed(0)
    return ImageDataset(
        name="synthetic32",
        train_images=torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
        train_labels=torch.randint(0, classes, (n,), generator=g),
        test_images=torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8, generator=g),
        test_labels=torch.randint(0, classes, (256,), generator=g),
        classes=[str(i) for i in range(classes)],
        view_policy=ViewPolicy(pad=4, flip=True),
    )


def write_cache(ds: ImageDataset, path: Path, plan: ViewPlan, top_k: int = 0) -> Path:
    """A real cache file of ``plan``'s views (parameters as a dump writes them) holding random logits."""
    n, c = ds.num_train, ds.num_classes
    attrs = {
        "dataset": ds.name, "dataset_fingerprint": ds.fingerprint, "split": "train",
        "view_policy": ds.view_policy.to_json(), "seed": plan.seed, "teacher_digest": "benchmark",
        "teacher": schema.teacher_attr("benchmark", "benchmark", 0, "", None), "view_plan": plan.to_json(),
    }
    rng = np.random.default_rng(0)
    w = CacheWriter.create(path, attrs=attrs, num_views=plan.num_views, num_samples=n, num_classes=c,
                           num_params=ds.view_policy.num_params, dtype="float16", top_k=top_k,
                           labels=ds.train_labels.numpy(), test_labels=ds.test_labels.numpy())
    with w:
        w.write_test(rng.standard_normal((len(ds.test_labels), c), dtype=np.float32))
        for v in range(plan.num_views):
            params = plan.params(ds.view_policy, v, np.arange(n))
            w.write_view(v, rng.standard_normal((n, c), dtype=np.float32) * 3, params.numpy())
        w.finish()
    return path


def interleaved_step_costs(ds: ImageDataset, model_name: str, sources: dict[str, Any], *, steps: int,
                           batch_size: int, device: torch.device) -> dict[str, dict[str, float]]:
    """Median ms per step of each source (None: plain, on labels) and its median ratio to plain, interleaved.

    Also the time of preparing a fresh epoch (``epoch_ms``) and the step cost with that
    amortised over an epoch's steps (``with_epoch_over_plain``).
    """
    torch.manual_seed(0)
    student = build_model(model_name, ds.num_classes, ds.in_channels).to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    loss_fn = make_loss("ban+l")
    train_x, train_y = ds.train_images.to(device), ds.train_labels.to(device)
    mean, std = (torch.tensor(v, device=device) for v in ds.normalization())
    n, b = ds.num_train, batch_size
    policy = ds.view_policy
    plain_params = policy.params(0, 1_000_000, np.arange(n)).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def update(loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def kind(source):
        if source is None:
            def plain(idx: torch.Tensor) -> None:
                x = normalize(policy.apply(train_x[idx], plain_params[idx]), mean, std)
                with autocast(device):
                    logits = student(x)
                update(F.cross_entropy(logits.float(), train_y[idx]))
            return plain
        params = source.epoch_params(0)

        def distilled(idx: torch.Tensor) -> None:
            x = normalize(policy.apply(train_x[idx], params[idx]), mean, std)
            t = source.batch_targets(0, idx, x)
            with autocast(device):
                logits = student(x)
            update(loss_fn(logits.float(), train_y[idx], t))
        return distilled

    kinds = {name: kind(src) for name, src in sources.items()}
    gen = torch.Generator().manual_seed(0)
    student.train()

    def batches(count: int) -> list[torch.Tensor]:
        perm = torch.randperm(n, generator=gen).to(device)
        reps = perm.repeat((count * b) // n + 1)
        return [reps[i * b:(i + 1) * b] for i in range(count)]

    for fn in kinds.values():  # warm-up: allocator, kernels, caches
        for idx in batches(2):
            fn(idx)
    sync()
    # Each batch is run by every kind back to back (in an order rotated per batch), each step
    # timed on its own; the ratio to plain is taken per batch -- the kinds ran within a second of
    # each other, under the same machine load -- and the median over batches is reported.
    per_step: dict[str, list[float]] = {k: [] for k in kinds}
    names = list(kinds)
    for i, idx in enumerate(batches(steps)):
        r = i % len(names)
        for name in names[r:] + names[:r]:
            sync()
            t0 = time.perf_counter()
            kinds[name](idx)
            sync()
            per_step[name].append(time.perf_counter() - t0)
    steps_per_epoch = math.ceil(n / b)
    out = {}
    for name, src in sources.items():
        epoch_s = 0.0
        if src is not None:  # a fresh epoch: another view (fixed, epochs) or another draw (all)
            t0 = time.perf_counter()
            src.epoch_params(1)
            sync()
            epoch_s = time.perf_counter() - t0
        ms = 1000 * statistics.median(per_step[name])
        ratio = statistics.median(a / p for a, p in zip(per_step[name], per_step[names[0]]))
        plain_ms = 1000 * statistics.median(per_step[names[0]])
        out[name] = {"ms": ms, "over_plain": ratio, "epoch_ms": 1000 * epoch_s,
                     "with_epoch_over_plain": (ms * steps_per_epoch + 1000 * epoch_s) / (plain_ms * steps_per_epoch)}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet-20")
    ap.add_argument("--dataset", default="digits", help="digits (bundled) or synthetic32 (CIFAR-shaped random)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--views", type=int, default=4, help="K of the fixed-view caches")
    ap.add_argument("--epochs", type=int, default=30, help="views of the epochs caches")
    ap.add_argument("--steps", type=int, default=60, help="timed steps per kind")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    ds = synthetic32() if args.dataset == "synthetic32" else load_dataset(args.dataset)
    policy = ds.view_policy
    top_k = 5 if ds.num_classes > 10 else 1
    tmp = tempfile.TemporaryDirectory()
    root = Path(tmp.name)
    caches = {
        "cached": (write_cache(ds, root / "k.h5", ViewPlan("fixed", args.views, 0)), 4.0),
        "cached_stream": (root / "k.h5", 0.0),
        "epochs": (write_cache(ds, root / "e.h5", ViewPlan("epochs", args.epochs, 0)), 4.0),
        "epochs_stream": (root / "e.h5", 0.0),
        "all": (write_cache(ds, root / "a.h5", ViewPlan("all", policy.num_distinct, 0)), 4.0),
        "all_stream": (root / "a.h5", 0.0),
        "topk": (write_cache(ds, root / "t.h5", ViewPlan("epochs", args.epochs, 0), top_k=top_k), 4.0),
    }
    sources: dict[str, Any] = {"plain": None}
    for name, (path, budget) in caches.items():
        config = TrainConfig(model=args.model, dataset=ds.name, teacher_cache=str(path), epochs=2,
                             device_cache_gb=budget)
        sources[name] = open_soft_targets(config, ds, dev)
    sources["live"] = live_teacher(ds, args.model, dev, root)
    costs = interleaved_step_costs(ds, args.model, sources, steps=args.steps, batch_size=args.batch_size, device=dev)
    tmp.cleanup()
    result = {
        "model": args.model, "dataset": ds.name, "batch_size": args.batch_size, "device": str(dev),
        "threads": torch.get_num_threads(), "steps": args.steps, "top_k": top_k,
        "all_views": policy.num_distinct, "modes": {k: getattr(s, "mode", "plain") if s else "plain"
                                                    for k, s in sources.items()},
        **{f"{k}_ms": v["ms"] for k, v in costs.items()},
        **{f"{k}_over_plain": v["over_plain"] for k, v in costs.items() if k != "plain"},
        **{f"{k}_epoch_ms": v["epoch_ms"] for k, v in costs.items() if k != "plain"},
        **{f"{k}_with_epoch_over_plain": v["with_epoch_over_plain"] for k, v in costs.items() if k != "plain"},
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"step cost, {args.model} on {ds.name}, batch {args.batch_size}, {dev} ({torch.get_num_threads()} "
              f"threads), median of {args.steps} interleaved steps each; top-k k={top_k}, 'all' = "
              f"{policy.num_distinct} views")
        for name, c in costs.items():
            extra = "" if name == "plain" else (f"   epoch prep {c['epoch_ms']:8.2f} ms -> "
                                                f"{c['with_epoch_over_plain']:.3f} x plain per epoch")
            print(f"  {name:<14} {c['ms']:8.2f} ms/step   {c['over_plain']:.3f} x plain{extra}")
        print(f"cached_over_plain = {result['cached_over_plain']:.3f} (target <= 1.05), "
              f"live_over_plain = {result['live_over_plain']:.3f}")
    return result


def live_teacher(ds: ImageDataset, model_name: str, device: torch.device, root: Path) -> LiveTeacher:
    """A teacher of the same architecture, saved as a checkpoint and run live on an ``epochs`` plan."""
    from bandistill.checkpoint import save_checkpoint

    torch.manual_seed(1)
    teacher = build_model(model_name, ds.num_classes, ds.in_channels)
    mean, std = ds.normalization()
    path = root / "teacher.pt"
    save_checkpoint({
        "model": {"name": model_name, "num_classes": ds.num_classes, "in_channels": ds.in_channels, "options": {}},
        "state_dict": teacher.state_dict(),
        "dataset": {"name": ds.name, "fingerprint": ds.fingerprint, "num_classes": ds.num_classes,
                    "view_policy": ds.view_policy.to_json()},
        "normalization": {"mean": mean, "std": std}, "generation": 0,
    }, path)
    return LiveTeacher(path, ds, device, plan=ViewPlan("epochs", 2, 0), seed=0)


if __name__ == "__main__":
    main(sys.argv[1:])
