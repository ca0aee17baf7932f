"""One teacher, many students: the BAN paper's variants from one cache, and the BANE as teacher.

One generation-0 teacher (seed 0) on real images, its logits dumped **once** (``--views
epochs``), then students of the same architecture, each over several seeds, all from that
one cache:

* ``baseline``   generation 0 itself over seeds 0..S-1 (seed 0 is the teacher);
* ``ban``, ``ban+l``, ``cwtm``, ``dkpp``, ``kd:T=4`` (or ``--variants``): students 1..S;
* ``BANE teacher``  generation 2 taught by the average of generation 0's and generation 1's
  cached targets (``train --teacher-logits gen0.h5 --teacher-logits gen1.h5``), where
  generation 1 is the ``ban+l`` student of the same seed, dumped on the same views;
* ``BAN-2`` (the control for it): generation 2 taught by generation 1's cache alone.

Every row: test error % mean ± std over seeds, NLL, ECE (15 bins), and whether any run
collapsed. The dump's wall time is reported against the students' training time.

    python benchmarks/variants_table.py --out runs/variants           # imagenette-32 subset, resnet-8
    python benchmarks/variants_table.py --data-dir none --out runs/v  # digits

Every run and cache is resumable: the same command again keeps what is finished.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bandistill.checkpoint import load_checkpoint, model_from_checkpoint, normalization  # noqa: E402
from bandistill.data import load_dataset  # noqa: E402
from bandistill.dump import dump_logits  # noqa: E402
from bandistill.inference import predict_logits  # noqa: E402
from bandistill.metrics import classification_metrics  # noqa: E402
from bandistill.train import TrainConfig  # noqa: E402
from bandistill.variants import parse_variants  # noqa: E402
from cache_fidelity import find_data, mean_std, subset_tree, train_one  # noqa: E402


def evaluate(checkpoint: Path, ds) -> dict[str, float]:
    """Test error %, NLL and ECE of a checkpoint on the clean test split."""
    ckpt = load_checkpoint(checkpoint)
    mean, std = normalization(ckpt)
    logits = predict_logits(model_from_checkpoint(ckpt), ds.test_images, mean, std, device="cpu")
    m = classification_metrics(torch.softmax(logits.double(), 1).numpy(), ds.test_labels.numpy())
    collapse = ckpt.get("collapse") or {}
    return {"error": 100 * m["error"], "nll": m["nll"], "ece": m["ece"], "collapsed": bool(collapse.get("collapsed"))}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--data-dir", default=None, help="an ImageFolder tree (default: imagenette-32); 'none': digits")
    ap.add_argument("--train-per-class", type=int, default=150, help="0: all")
    ap.add_argument("--test-per-class", type=int, default=100, help="0: all")
    ap.add_argument("--model", default="resnet-8")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--variants", default="ban,ban+l,cwtm,dkpp,kd:T=4")
    ap.add_argument("--no-bane", action="store_true", help="skip the BANE-teacher and BAN-2 rows")
    ap.add_argument("--warmup-epochs", type=int, default=0, help="for every run (0: the paper's recipe)")
    ap.add_argument("--workers", type=int, default=1, help="runs trained side by side (one thread each)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    src = find_data(args.data_dir)
    if src is not None:
        data_dir, dataset = str(subset_tree(src, out / "data", args.train_per_class, args.test_per_class)), "imagefolder"
    else:
        data_dir, dataset = None, "digits"
    ds = load_dataset(dataset, data_dir)
    variants = parse_variants(args.variants)
    base = dict(model=args.model, dataset=dataset, data_dir=data_dir, epochs=args.epochs, device="cpu",
                warmup_epochs=args.warmup_epochs)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    log(f"{dataset} ({src or 'digits'}): {ds.num_train} train / {len(ds.test_labels)} test images, "
        f"{ds.num_classes} classes, {args.model}, {args.epochs} epochs, {args.seeds} seeds")
    seeds = list(range(1, args.seeds + 1))
    results: dict[str, dict[str, Any]] = {}  # run name -> train() result + wall seconds

    def run_all(jobs: list[tuple[str, dict[str, Any]]]) -> None:
        todo = [(name, cfg) for name, cfg in jobs if name not in results]
        if args.workers > 1 and len(todo) > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(min(args.workers, len(todo)),
                                     mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = [pool.submit(train_one, name, cfg, str(out / "runs" / name), True) for name, cfg in todo]
                done = [f.result() for f in futures]
        else:
            done = [train_one(name, cfg, str(out / "runs" / name), True) for name, cfg in todo]
        for name, res, seconds in done:
            results[name] = {**res, "wall": seconds}
            flag = " COLLAPSED" if res["collapse"]["collapsed"] else ""
            log(f"  {name}: test error {100 * (1 - res['test_accuracy']):.2f}% (train {res['seconds']:.0f} s){flag}")

    dumps: dict[str, float | None] = {}

    def dump(name: str, checkpoint: Path) -> Path:
        path = out / "caches" / f"{name}.h5"
        meta = path.with_suffix(".json")
        t0 = time.perf_counter()
        res = dump_logits(checkpoint, dataset, path, views="epochs", epochs=args.epochs, data_dir=data_dir,
                          seed=0, device="cpu", progress=False)  # one seed for every dump: the same views
        if not res["already_complete"]:
            meta.write_text(json.dumps({"seconds": time.perf_counter() - t0}))
        dumps[name] = json.loads(meta.read_text())["seconds"] if meta.exists() else None
        log(f"  dump {name}: {dumps[name]} s")
        return path

    gen0 = [(f"gen0-seed{s}", TrainConfig(**base, seed=s).to_dict()) for s in range(args.seeds)]
    run_all(gen0[:1])
    teacher_cache = dump("gen0", Path(results["gen0-seed0"]["checkpoint"]))
    jobs = gen0[1:]
    for v in variants:
        extra = {"teacher_cache": str(teacher_cache), "loss": v.loss, "temperature": v.temperature, "alpha": v.alpha}
        if v.model:
            extra["model"] = v.model
        jobs += [(f"{v.folder}-seed{s}", TrainConfig(**{**base, **extra}, seed=s).to_dict()) for s in seeds]
    run_all(jobs)
    rows: list[tuple[str, list[str]]] = [("baseline (gen0)", [n for n, _ in gen0])]
    rows += [(v.name, [f"{v.folder}-seed{s}" for s in seeds]) for v in variants]
    if not args.no_bane:
        gen1 = next((v for v in variants if v.name == "ban+l"), variants[0])
        members = {s: dump(f"gen1-{gen1.folder}-seed{s}", Path(results[f"{gen1.folder}-seed{s}"]["checkpoint"]))
                   for s in seeds}
        jobs = []
        for s in seeds:
            teach = dict(loss="ban+l", seed=s + 100)
            jobs.append((f"bane-teacher-seed{s}",
                         TrainConfig(**base, **teach, teacher_cache=[str(teacher_cache), str(members[s])]).to_dict()))
            jobs.append((f"ban2-seed{s}", TrainConfig(**base, **teach, teacher_cache=str(members[s])).to_dict()))
        run_all(jobs)
        rows.append((f"BANE teacher (avg of gen0, gen1={gen1.name}; probs)", [f"bane-teacher-seed{s}" for s in seeds]))
        rows.append((f"BAN-2 (gen1={gen1.name} alone)", [f"ban2-seed{s}" for s in seeds]))

    table = []
    for label, names in rows:
        figs = [evaluate(Path(results[n]["checkpoint"]), ds) for n in names]
        row = {"row": label, "runs": names, "errors": [f["error"] for f in figs],
               "collapsed": sum(f["collapsed"] for f in figs),
               "train_seconds": sum(results[n]["seconds"] for n in names)}
        for key in ("error", "nll", "ece"):
            row[key], row[f"{key}_std"] = mean_std([f[key] for f in figs])
        table.append(row)
        log(f"{label}: {row['error']:.2f} ± {row['error_std']:.2f} % error")
    students = [n for label, names in rows[1:] for n in names]
    result = {
        "dataset": dataset, "data": str(src) if src else "digits", "train_images": ds.num_train,
        "test_images": int(len(ds.test_labels)), "classes": ds.num_classes, "model": args.model,
        "epochs": args.epochs, "warmup_epochs": args.warmup_epochs, "threads": torch.get_num_threads(),
        "workers": args.workers, "rows": table,
        "gen0_dump_seconds": dumps.get("gen0"),
        "variant_students_train_seconds": sum(results[n]["seconds"] for label, names in rows[1:1 + len(variants)]
                                              for n in names),
        "all_students_train_seconds": sum(results[n]["seconds"] for n in students),
        "gen1_dump_seconds": {k: v for k, v in dumps.items() if k != "gen0"},
        "command": "python benchmarks/variants_table.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2) if args.json else markdown(result))
    return result


def markdown(result: dict[str, Any]) -> str:
    one = 100 / result["test_images"]
    lines = [f"{result['model']}, {result['epochs']} epochs, {result['train_images']} train / {result['test_images']} "
             f"test images of {result['data']} (one test image = {one:.2f} points); mean ± std over seeds",
             "", "| row | test error % (per seed) | mean ± std | NLL | ECE | collapsed | students' train s |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        per = " / ".join(f"{e:.1f}" for e in r["errors"])
        lines.append(f"| {r['row']} | {per} | {r['error']:.2f} ± {r['error_std']:.2f} | {r['nll']:.3f} ± "
                     f"{r['nll_std']:.3f} | {r['ece']:.4f} ± {r['ece_std']:.4f} | {r['collapsed']} | "
                     f"{r['train_seconds']:.0f} |")
    lines += ["", f"gen0 dump (once, {result['epochs']} views): {result['gen0_dump_seconds']:.0f} s; the "
                  f"{len(result['rows']) - 1} student rows trained for {result['all_students_train_seconds']:.0f} s "
                  f"(the 5 variants alone {result['variant_students_train_seconds']:.0f} s)"]
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
