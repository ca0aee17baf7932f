"""How close is a student trained from the cache to one trained beside a live teacher?

One teacher (generation 0) on real images; then students of the same architecture, each
over several seeds, taught by:

* ``live``    the teacher run on the student's own views every step (online distillation,
              the reference), on the ``epochs`` plan (a fresh view per sample per epoch);
* ``K=4``     a cache of 4 fixed views, cycled (the old default);
* ``epochs``  a cache with one view per student epoch (the same views ``live`` sees);
* ``all``     a cache of the view policy's whole space, each sample drawing any view per epoch;
* ``top-k``   ``epochs`` caches keeping only the k largest logits and each row's
              log-sum-exp (two values of k);
* ``gen0``    no teacher: generation 0 itself over the same seeds, for scale.

Every arm reports test error mean +- std over the seeds, what its cache cost to dump
(seconds, bytes), the student's step cost relative to a plain step (interleaved, on the
arm's real cache: :func:`benchmarks.step_cost.interleaved_step_costs`), and how many views
per sample the student drew and how many distinct images that is. The cache is judged by
one criterion: its difference from ``live``, against the seed noise.

    python benchmarks/cache_fidelity.py --out runs/fidelity            # imagenette-32 subset, resnet-8
    python benchmarks/cache_fidelity.py --data-dir none --out runs/f   # digits

Uses ``../shared/data/imagenette-32`` (an ImageFolder tree) when it exists, a subset of
``--train-per-class`` / ``--test-per-class`` images per class (symlinked into ``--out``),
otherwise ``digits``. Every stage is resumable: run the same command again after an
interruption and finished runs and caches are kept.
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bandistill.cache.reader import open_cache  # noqa: E402
from bandistill.data import IMAGE_SUFFIXES, load_dataset  # noqa: E402
from bandistill.device import resolve_device  # noqa: E402
from bandistill.dump import dump_logits  # noqa: E402
from bandistill.soft_targets import open_soft_targets  # noqa: E402
from bandistill.train import MODEL_FILE, TrainConfig, train  # noqa: E402
from bandistill.data.views import ViewPlan, generation0_views_seen  # noqa: E402
from step_cost import interleaved_step_costs  # noqa: E402


def train_one(name: str, config: dict[str, Any], folder: str, final_only: bool) -> tuple[str, dict[str, Any], float]:
    """One student (or generation-0) run, resumable; in a worker process when --workers > 1.

    ``final_only``: evaluate on the test split after the last epoch only (the figure reported
    is the last epoch's either way; it saves a forward pass over the test split per epoch).
    """
    torch.set_num_threads(1)
    if final_only:
        config = {**config, "eval_every": config["epochs"]}
    t0 = time.perf_counter()
    res = train(TrainConfig.from_dict(config), folder, resume=True, progress=False)
    return name, res, time.perf_counter() - t0

DEFAULT_DATA = ("../shared/data/imagenette-32", "/work/shared/data/imagenette-32")


def find_data(arg: str | None) -> Path | None:
    if arg == "none":
        return None
    for cand in ([arg] if arg else DEFAULT_DATA):
        p = (Path(__file__).resolve().parent.parent / cand) if not Path(cand).is_absolute() else Path(cand)
        if (p / "train").is_dir():
            return p.resolve()
    if arg:
        raise SystemExit(f"{arg} holds no train/ folder")
    return None


def subset_tree(src: Path, dst: Path, train_per_class: int, test_per_class: int) -> Path:
    """Symlink the first N images (sorted by name) of every class of ``src`` into ``dst`` (an ImageFolder)."""
    test_name = "test" if (src / "test").is_dir() else "val"
    for split, per_class in (("train", train_per_class), (test_name, test_per_class)):
        for cls in sorted(p for p in (src / split).iterdir() if p.is_dir()):
            files = sorted(f for f in cls.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            files = files[:per_class] if per_class > 0 else files
            out = dst / split / cls.name
            out.mkdir(parents=True, exist_ok=True)
            for f in files:
                link = out / f.name
                if not link.exists():
                    link.symlink_to(f)
    return dst


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for the teacher, caches, students and results.json")
    ap.add_argument("--data-dir", default=None, help="an ImageFolder tree (default: imagenette-32 if present); "
                                                      "'none' for digits")
    ap.add_argument("--train-per-class", type=int, default=200, help="0: all")
    ap.add_argument("--test-per-class", type=int, default=100, help="0: all")
    ap.add_argument("--model", default="resnet-8")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seeds", type=int, default=3, help="student seeds 1..S (gen0: 0..S-1, seed 0 is the teacher)")
    ap.add_argument("--top-k", type=int, nargs=2, default=(1, 3), help="the two k of the top-k arms")
    ap.add_argument("--arms", default="gen0,live,K=4,epochs,all,top-k", help="comma-separated subset of the arms")
    ap.add_argument("--step-cost-steps", type=int, default=20, help="interleaved steps per arm (0: skip)")
    ap.add_argument("--workers", type=int, default=1, help="student runs trained side by side (one thread each)")
    ap.add_argument("--eval-every-epoch", action="store_true",
                    help="evaluate students after every epoch (default: after the last only)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    src = find_data(args.data_dir)
    if src is not None:
        data_dir = str(subset_tree(src, out / "data", args.train_per_class, args.test_per_class))
        dataset = "imagefolder"
    else:
        data_dir, dataset = None, "digits"
    ds = load_dataset(dataset, data_dir)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    base = dict(model=args.model, dataset=dataset, data_dir=data_dir, epochs=args.epochs, device="cpu")
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    log(f"{dataset} ({src or 'digits'}): {ds.num_train} train / {len(ds.test_labels)} test images, "
        f"{ds.num_classes} classes, {args.model}, {args.epochs} epochs, {args.seeds} seeds")

    def run(name: str, config: TrainConfig) -> dict[str, Any]:
        folder = out / "runs" / name
        t0 = time.perf_counter()
        res = train(config, folder, resume=True, progress=False)
        log(f"  {name}: test error {100 * (1 - res['test_accuracy']):.2f}% ({time.perf_counter() - t0:.0f} s)")
        return res

    teacher = run("gen0-seed0", TrainConfig(**base, seed=0))
    teacher_ckpt = Path(teacher["checkpoint"])

    caches: dict[str, dict[str, Any]] = {}

    def cache(name: str, views: str | int, top_k: int = 0) -> dict[str, Any]:
        if name not in caches:
            path = out / "caches" / f"{name}.h5"
            t0 = time.perf_counter()
            res = dump_logits(teacher_ckpt, dataset, path, views=views, data_dir=data_dir, top_k=top_k,
                              epochs=args.epochs if str(views) == "epochs" else None, device="cpu", progress=False)
            seconds = res["seconds"] if not res["already_complete"] else None
            meta = path.with_suffix(".json")
            if seconds is not None:
                meta.write_text(json.dumps({"seconds": seconds}))
            elif meta.exists():
                seconds = json.loads(meta.read_text())["seconds"]
            caches[name] = {"path": path, "dump_seconds": seconds, "bytes": path.stat().st_size,
                            "views": res["views"]}
            log(f"  cache {name}: {res['views']} views, {path.stat().st_size / 1e6:.2f} MB, "
                f"dumped in {seconds if seconds is None else round(seconds, 1)} s")
        return caches[name]

    student_seeds = list(range(1, args.seeds + 1))
    arm_specs: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []  # (label, config extras, cache)
    for arm in arms:
        if arm == "gen0":
            arm_specs.append(("gen0", {}, None))
        elif arm == "live":
            arm_specs.append(("live", {"teacher_checkpoint": str(teacher_ckpt), "views": "epochs", "view_seed": 0},
                              None))
        elif arm == "K=4":
            arm_specs.append(("K=4", {}, cache("k4", 4)))
        elif arm == "epochs":
            arm_specs.append(("epochs", {}, cache("epochs", "epochs")))
        elif arm == "all":
            arm_specs.append(("all", {}, cache("all", "all")))
        elif arm == "top-k":
            for k in args.top_k:
                arm_specs.append((f"epochs top-{k}", {}, cache(f"epochs-top{k}", "epochs", top_k=k)))
        else:
            raise SystemExit(f"unknown arm {arm!r}")

    jobs = []  # (arm, seed, run name, config)
    for label, extras, c in arm_specs:
        seeds = list(range(args.seeds)) if label == "gen0" else student_seeds
        for seed in seeds:
            if not (label == "gen0" and seed == 0):
                config = TrainConfig(**base, seed=seed, **extras, **({"teacher_cache": str(c["path"])} if c else {}))
                jobs.append((label, seed, f"{label.replace(' ', '-').replace('=', '')}-seed{seed}", config.to_dict()))
    results: dict[tuple[str, int], dict[str, Any]] = {("gen0", 0): teacher}
    final_only = not args.eval_every_epoch
    if args.workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(train_one, name, cfg, str(out / "runs" / name), final_only): (label, seed)
                       for label, seed, name, cfg in jobs}
            for fut in futures:
                name, res, seconds = fut.result()
                results[futures[fut]] = res
                log(f"  {name}: test error {100 * (1 - res['test_accuracy']):.2f}% ({seconds:.0f} s)")
    else:
        for label, seed, name, cfg in jobs:
            name, res, seconds = train_one(name, cfg, str(out / "runs" / name), final_only)
            results[(label, seed)] = res
            log(f"  {name}: test error {100 * (1 - res['test_accuracy']):.2f}% ({seconds:.0f} s)")

    rows = []
    for label, extras, c in arm_specs:
        seeds = list(range(args.seeds)) if label == "gen0" else student_seeds
        errors = [100 * (1 - results[(label, seed)]["test_accuracy"]) for seed in seeds]
        mean, std = mean_std(errors)
        if label == "gen0":
            seen = generation0_views_seen(ds.view_policy, args.epochs)
        elif c is None:
            seen = ViewPlan("epochs", args.epochs).views_seen(ds.view_policy, args.epochs)
        else:
            with open_cache(c["path"]) as cf:
                seen = cf.info.view_plan.views_seen(ds.view_policy, args.epochs)
        rows.append({"arm": label, "seeds": seeds, "errors": errors, "mean": mean, "std": std,
                     "dump_seconds": c["dump_seconds"] if c else None, "cache_bytes": c["bytes"] if c else None,
                     "cache_views": c["views"] if c else None,
                     "views_drawn": seen["draws"], "distinct_views": seen["distinct"]})
        log(f"{label}: {mean:.2f} +- {std:.2f} % error")

    if args.step_cost_steps:
        dev = resolve_device("cpu")
        sources: dict[str, Any] = {"plain": None}
        for label, extras, c in arm_specs:
            if label == "gen0":
                continue
            config = TrainConfig(**base, seed=1, **extras, **({"teacher_cache": str(c["path"])} if c else {}))
            sources[label] = open_soft_targets(config.validate(), ds, dev)
        costs = interleaved_step_costs(ds, args.model, sources, steps=args.step_cost_steps, batch_size=128,
                                       device=dev)
        for row in rows:
            cost = costs.get("plain" if row["arm"] == "gen0" else row["arm"])
            if cost:
                row["step_over_plain"] = cost["over_plain"]
                row["step_with_epoch_over_plain"] = cost["with_epoch_over_plain"]

    live = next((r for r in rows if r["arm"] == "live"), None)
    for row in rows:
        if live is not None and row is not live:
            row["minus_live"] = row["mean"] - live["mean"]
    result = {
        "dataset": dataset, "data": str(src) if src else "digits", "train_images": ds.num_train,
        "test_images": int(len(ds.test_labels)), "classes": ds.num_classes, "model": args.model,
        "epochs": args.epochs, "view_space": ds.view_policy.num_distinct, "threads": torch.get_num_threads(),
        "command": "python benchmarks/cache_fidelity.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "rows": rows,
    }
    (out / "results.json").write_text(json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(markdown(result))
    return result


def markdown(result: dict[str, Any]) -> str:
    """The README table."""
    lines = [f"{result['model']}, {result['epochs']} epochs, {result['train_images']} train / "
             f"{result['test_images']} test images of {result['data']}; test error % over seeds",
             "",
             "| arm | seeds | test error % | − live | views drawn (distinct) per sample | cache views | dump s "
             "| cache MB | step / plain |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        def opt(v, fmt):
            return "" if v is None else format(v, fmt)
        lines.append(
            f"| {r['arm']} | {','.join(map(str, r['seeds']))} | {r['mean']:.2f} ± {r['std']:.2f} | "
            f"{opt(r.get('minus_live'), '+.2f')} | {r['views_drawn']:.0f} ({r['distinct_views']:.1f}) | "
            f"{opt(r['cache_views'], 'd')} | {opt(r['dump_seconds'], '.0f')} | "
            f"{opt(None if r['cache_bytes'] is None else r['cache_bytes'] / 1e6, '.2f')} | "
            f"{opt(r.get('step_over_plain'), '.2f')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
