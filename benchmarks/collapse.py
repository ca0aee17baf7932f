"""Why does a born-again student sit at the majority-class rate, and does a warmup fix it?

Issue 18's case: a weak generation 0 (3 epochs), its student under the default recipe
(``ban+l``, lr 0.1, batch 128, step schedule) trained for 3 epochs on an imbalanced set
stayed near the majority rate, where the same seed on labels alone learned. Here, on an
imbalanced subset of imagenette-32 (``--counts`` images of the first classes; the largest
about a quarter of the data, as in the issue), with one teacher (seed 0) and its ``epochs``
cache, every arm trains students over ``--seeds`` seeds:

* ``ce``            labels only (generation 0's recipe) at lr 0.1: what the student could do;
* ``ban+l``         the default student;
* ``ban+l warmup``  the same with ``--warmup-epochs`` W (the lr raised linearly over W epochs);
* ``ban+l lr/2``    the same at half the lr;
* ``ce lr x2``      labels only at twice the lr.

Why the last two: ``CE(y, s) + KL(p_t || s) = 2 CE((y + p_t)/2, s) + const``, so ``ban+l`` at
lr 0.1 is cross entropy against the mixed target at an effective lr of 0.2 (weight decay
aside). ``ban+l lr/2`` removes the doubling; ``ce lr x2`` applies it to labels alone.

Per arm: train accuracy per epoch, test accuracy, and how many runs the collapse check
(:mod:`bandistill.collapse`) flagged.

    python benchmarks/collapse.py --out runs/collapse
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bandistill.data import IMAGE_SUFFIXES, load_dataset  # noqa: E402
from bandistill.dump import dump_logits  # noqa: E402
from bandistill.train import TrainConfig  # noqa: E402
from cache_fidelity import find_data, train_one  # noqa: E402


def imbalanced_tree(src: Path, dst: Path, counts: list[int], test_per_class: int) -> Path:
    """Symlink the first ``counts[i]`` training images of class i (sorted) and ``test_per_class`` test images."""
    test_name = "test" if (src / "test").is_dir() else "val"
    classes = sorted(p.name for p in (src / "train").iterdir() if p.is_dir())[: len(counts)]
    for split, per in (("train", counts), (test_name, [test_per_class] * len(counts))):
        for cls, n in zip(classes, per):
            files = sorted(f for f in (src / split / cls).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)[:n]
            out = dst / split / cls
            out.mkdir(parents=True, exist_ok=True)
            for f in files:
                if not (out / f.name).exists():
                    (out / f.name).symlink_to(f)
    return dst


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--counts", default="960,640,560,520,480,440,400", help="training images of the first classes")
    ap.add_argument("--test-per-class", type=int, default=200)
    ap.add_argument("--model", default="resnet-20")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--warmup-epochs", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--arms", default="ce,ban+l,ban+l warmup,ban+l lr/2,ce lr x2")
    ap.add_argument("--diagnostic-seeds", type=int, default=1, help="seeds of the lr/2 and lr x2 arms")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    src = find_data(args.data_dir)
    if src is None:
        raise SystemExit("needs imagenette-32 (or --data-dir with an ImageFolder tree)")
    counts = [int(c) for c in args.counts.split(",")]
    data_dir = str(imbalanced_tree(src, out / "data", counts, args.test_per_class))
    ds = load_dataset("imagefolder", data_dir)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    majority = max(counts) / sum(counts)
    log(f"{ds.num_train} train ({', '.join(map(str, counts))}; majority {100 * majority:.1f}%) / "
        f"{len(ds.test_labels)} test images, {args.model}, {args.epochs} epochs")
    base = dict(model=args.model, dataset="imagefolder", data_dir=data_dir, epochs=args.epochs, device="cpu",
                lr=args.lr)
    t0 = time.perf_counter()
    _, teacher, _ = train_one("teacher", TrainConfig(**base, seed=0).to_dict(), str(out / "runs" / "teacher"), False)
    cache = out / "gen0.h5"
    dump_logits(teacher["checkpoint"], "imagefolder", cache, views="epochs", epochs=args.epochs, data_dir=data_dir,
                device="cpu", progress=False)
    log(f"teacher: test accuracy {100 * teacher['test_accuracy']:.1f}% ({time.perf_counter() - t0:.0f} s with dump)")
    student = dict(teacher_cache=str(cache), loss="ban+l")
    specs = {
        "ce": ({}, args.seeds),
        "ban+l": (student, args.seeds),
        "ban+l warmup": ({**student, "warmup_epochs": args.warmup_epochs}, args.seeds),
        "ban+l lr/2": ({**student, "lr": args.lr / 2}, args.diagnostic_seeds),
        "ce lr x2": ({"lr": args.lr * 2}, args.diagnostic_seeds),
    }
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    jobs = []
    for arm in arms:
        extra, n = specs[arm]
        for seed in range(1, n + 1):
            name = f"{arm.replace(' ', '-').replace('/', 'over').replace('+', 'p')}-seed{seed}"
            jobs.append((arm, seed, name, TrainConfig(**{**base, **extra}, seed=seed).to_dict()))
    results: dict[tuple[str, int], dict[str, Any]] = {}
    if args.workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(train_one, name, cfg, str(out / "runs" / name), False): (arm, seed)
                       for arm, seed, name, cfg in jobs}
            for fut, key in futures.items():
                results[key] = fut.result()[1]
    else:
        for arm, seed, name, cfg in jobs:
            results[(arm, seed)] = train_one(name, cfg, str(out / "runs" / name), False)[1]
    rows = []
    for arm in arms:
        runs = [(seed, res) for (a, seed), res in sorted(results.items()) if a == arm]
        per_epoch = []
        for seed, res in runs:
            lines = (Path(res["checkpoint"]).parent / "metrics.jsonl").read_text().splitlines()
            per_epoch.append([json.loads(line)["train_accuracy"] for line in lines])
        tests = [100 * res["test_accuracy"] for _, res in runs]
        row = {"arm": arm, "seeds": [s for s, _ in runs], "train_accuracy_per_epoch": per_epoch,
               "test_accuracy": tests, "test_mean": statistics.fmean(tests),
               "test_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
               "collapsed": sum(bool(res["collapse"]["collapsed"]) for _, res in runs),
               "teacher_train_accuracy": [json.loads(line).get("teacher_train_accuracy") for line in
                                          (Path(runs[0][1]["checkpoint"]).parent / "metrics.jsonl").read_text()
                                          .splitlines()]}
        rows.append(row)
        log(f"{arm}: test {row['test_mean']:.1f} ± {row['test_std']:.1f}%, collapsed {row['collapsed']}/{len(runs)}, "
            f"train per epoch {[[round(100 * a, 1) for a in e] for e in per_epoch]}")
    result = {"train_images": ds.num_train, "counts": counts, "majority_rate": majority,
              "test_images": int(len(ds.test_labels)), "model": args.model, "epochs": args.epochs, "lr": args.lr,
              "warmup_epochs": args.warmup_epochs, "teacher_test_accuracy": teacher["test_accuracy"],
              "teacher_history": [(h["train_accuracy"], h.get("test_accuracy")) for h in
                                  [json.loads(x) for x in (Path(teacher["checkpoint"]).parent / "metrics.jsonl")
                                   .read_text().splitlines()]],
              "rows": rows,
              "command": "python benchmarks/collapse.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
