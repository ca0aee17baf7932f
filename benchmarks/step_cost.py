"""What a student step costs: plain supervised vs. from the cache vs. with a live teacher.

Measured side by side in one process, on the same model, the same batches and the same
device, interleaved step by step (so drift in the machine's load hits all three alike),
and reported as the median per-step time and as ratios to the plain step (the median over
batches of each batch's ratio):

    python benchmarks/step_cost.py                       # resnet-20 on digits
    python benchmarks/step_cost.py --dataset synthetic32 --model resnet-56 --json

* plain:  view from pure parameters -> normalise -> student forward/backward on labels
          (the training loop of generation 0);
* cached: the same, with the view parameters and teacher logits read from a real cache
          file through :func:`bandistill.distill.open_soft_targets` (in memory) and the
          ``ban+l`` loss (the training loop of a student);
* live:   the same, with a teacher of the same architecture run (eval mode, no grad) on
          every batch instead of the cache.

The target is ``cached_over_plain`` <= 1.05: the teacher's cost was paid once, at dump time.
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
import torch.nn.functional as F

from bandistill.cache import schema
from bandistill.cache.writer import CacheWriter
from bandistill.data import ImageDataset, load_dataset
from bandistill.device import autocast, resolve_device
from bandistill.distill import open_soft_targets
from bandistill.inference import predict_logits
from bandistill.losses import make_loss
from bandistill.models import build_model
from bandistill.train import TrainConfig
from bandistill.views import ViewPolicy, normalize


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


def write_cache(ds: ImageDataset, teacher: torch.nn.Module, path: Path, views: int, device) -> None:
    """A real cache file of ``teacher``'s logits (what dump-logits writes, minus the checkpoint)."""
    mean, std = (torch.tensor(v) for v in ds.normalization())
    n = ds.num_train
    attrs = {
        "dataset": ds.name, "dataset_fingerprint": ds.fingerprint, "split": "train",
        "view_policy": ds.view_policy.to_json(), "seed": 0, "teacher_digest": "benchmark",
        "teacher": schema.teacher_attr("benchmark", "benchmark", 0, "", None),
    }
    w = CacheWriter.create(path, attrs=attrs, num_views=views, num_samples=n, num_classes=ds.num_classes,
                           num_params=ds.view_policy.num_params, dtype="float16",
                           labels=ds.train_labels.numpy(), test_labels=ds.test_labels.numpy())
    with w:
        w.write_test(predict_logits(teacher, ds.test_images, mean, std, device=device).numpy())
        for v in range(views):
            params = ds.view_policy.params(0, v, np.arange(n))
            logits = predict_logits(teacher, ds.train_images, mean, std, policy=ds.view_policy, params=params,
                                    device=device)
            w.write_view(v, logits.numpy(), params.numpy())
        w.finish()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet-20")
    ap.add_argument("--dataset", default="digits", help="digits (bundled) or synthetic32 (CIFAR-shaped random)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--steps", type=int, default=120, help="timed steps per kind")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--stream", action="store_true", help="stream the cache one view at a time (budget 0)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    ds = synthetic32() if args.dataset == "synthetic32" else load_dataset(args.dataset)
    torch.manual_seed(0)
    student = build_model(args.model, ds.num_classes, ds.in_channels).to(dev, memory_format=torch.channels_last)
    teacher = build_model(args.model, ds.num_classes, ds.in_channels).to(dev, memory_format=torch.channels_last)
    teacher.eval()
    opt = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)

    tmp = tempfile.TemporaryDirectory()
    cache_path = Path(tmp.name) / "bench.h5"
    write_cache(ds, teacher, cache_path, args.views, dev)
    config = TrainConfig(model=args.model, dataset=ds.name, teacher_logits=str(cache_path),
                         cache_memory_budget_gb=0.0 if args.stream else 4.0)
    targets = open_soft_targets(config, ds, dev)
    loss_fn = make_loss("ban+l")

    train_x, train_y = ds.train_images.to(dev), ds.train_labels.to(dev)
    mean, std = (torch.tensor(v, device=dev) for v in ds.normalization())
    n, b = ds.num_train, args.batch_size
    plain_params = ds.view_policy.params(0, 1_000_000, np.arange(n)).to(dev)
    epoch = 0
    cached_params = targets.epoch_params(epoch)

    def update(loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def plain(idx: torch.Tensor) -> None:
        x = normalize(ds.view_policy.apply(train_x[idx], plain_params[idx]), mean, std)
        with autocast(dev):
            logits = student(x)
        update(F.cross_entropy(logits.float(), train_y[idx]))

    def cached(idx: torch.Tensor) -> None:
        x = normalize(ds.view_policy.apply(train_x[idx], cached_params[idx]), mean, std)
        t = targets.batch_logits(epoch, idx)
        with autocast(dev):
            logits = student(x)
        update(loss_fn(logits.float(), train_y[idx], t))

    def live(idx: torch.Tensor) -> None:
        x = normalize(ds.view_policy.apply(train_x[idx], cached_params[idx]), mean, std)
        with torch.no_grad(), autocast(dev):
            t = teacher(x)
        with autocast(dev):
            logits = student(x)
        update(loss_fn(logits.float(), train_y[idx], t.float()))

    kinds = {"plain": plain, "cached": cached, "live": live}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(0)
    student.train()

    def batches(count: int) -> list[torch.Tensor]:
        perm = torch.randperm(n, generator=gen).to(dev)
        reps = perm.repeat((count * b) // n + 1)
        return [reps[i * b:(i + 1) * b] for i in range(count)]

    for fn in kinds.values():  # warm-up: allocator, kernels, caches
        for idx in batches(3):
            fn(idx)
    sync()
    # Each batch is run by the three kinds back to back (in an order rotated per batch), each
    # step timed on its own; the ratio to plain is taken per batch -- the three ran within ~0.1 s
    # of each other, under the same machine load -- and the median over batches is reported.
    per_step: dict[str, list[float]] = {k: [] for k in kinds}
    names = list(kinds)
    for i, idx in enumerate(batches(args.steps)):
        for name in names[i % 3:] + names[:i % 3]:
            sync()
            t0 = time.perf_counter()
            kinds[name](idx)
            sync()
            per_step[name].append(time.perf_counter() - t0)
    ms = {k: 1000 * statistics.median(v) for k, v in per_step.items()}
    ratio = {k: statistics.median(a / p for a, p in zip(per_step[k], per_step["plain"])) for k in kinds}
    result = {
        "model": args.model,
        "dataset": ds.name,
        "batch_size": b,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "cache_mode": targets.mode,
        "steps": args.steps,
        "plain_ms": ms["plain"],
        "cached_ms": ms["cached"],
        "live_ms": ms["live"],
        "cached_over_plain": ratio["cached"],
        "live_over_plain": ratio["live"],
    }
    tmp.cleanup()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"step cost, {args.model} on {ds.name}, batch {b}, {dev} ({torch.get_num_threads()} threads), "
              f"cache in {targets.mode}, "
              f"median of {args.steps} interleaved steps each")
        for name in kinds:
            print(f"  {name:<7} {ms[name]:8.2f} ms/step   {ratio[name]:.3f} x plain")
        print(f"cached_over_plain = {result['cached_over_plain']:.3f} (target <= 1.05), "
              f"live_over_plain = {result['live_over_plain']:.3f}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
