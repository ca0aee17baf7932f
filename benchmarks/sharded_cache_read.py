"""How a student reads a sharded dump: one merged contiguous file vs an HDF5 file of virtual datasets.

A student reads its cache the way training does: the whole ``logits`` array into memory
once (or one whole view per epoch when streaming). This builds both layouts from the same
shards, side by side in one run, and prints the time of each read and the ratio
``virtual_over_merged`` (above 1: the virtual file is slower). Reads are warm (the files are
in the page cache after the first pass), which is what a training run sees after its first
epoch; the best of ``--repeats`` is reported.

    python benchmarks/sharded_cache_read.py [--samples 50000 --views 8 --classes 100 --shards 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np


def build(folder: Path, samples: int, views: int, classes: int, shards: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((views, samples, classes)).astype(np.float16)
    bounds = np.linspace(0, samples, shards + 1).astype(int)
    parts = []
    for r in range(shards):
        p = folder / f"c.h5.shard-{r}-of-{shards}"
        with h5py.File(p, "w") as f:
            f.create_dataset("logits", data=logits[:, bounds[r]:bounds[r + 1]])
        parts.append(p)
    merged = folder / "merged.h5"
    with h5py.File(merged, "w") as f:  # contiguous, like the writer's
        ds = f.create_dataset("logits", shape=logits.shape, dtype=logits.dtype)
        for v in range(views):
            ds[v] = np.concatenate([h5py.File(p, "r")["logits"][v] for p in parts])
    virtual = folder / "virtual.h5"
    layout = h5py.VirtualLayout(shape=logits.shape, dtype=logits.dtype)
    for r, p in enumerate(parts):
        layout[:, bounds[r]:bounds[r + 1]] = h5py.VirtualSource(p, "logits", shape=(views, bounds[r + 1] - bounds[r], classes))
    with h5py.File(virtual, "w") as f:
        f.create_virtual_dataset("logits", layout)
    with h5py.File(merged, "r") as a, h5py.File(virtual, "r") as b:
        assert np.array_equal(a["logits"][()], b["logits"][()])
    return merged, virtual


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=50_000)
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        merged, virtual = build(Path(tmp), args.samples, args.views, args.classes, args.shards)
        result = {"samples": args.samples, "views": args.views, "classes": args.classes, "shards": args.shards}
        for name, path in (("merged", merged), ("virtual", virtual)):
            with h5py.File(path, "r") as f:
                ds = f["logits"]
                result[f"{name}_all_s"] = best_time(lambda: ds[()], args.repeats)
                result[f"{name}_view_s"] = best_time(lambda: ds[args.views // 2], args.repeats)
            result[f"{name}_open_and_read_all_s"] = best_time(lambda: h5py.File(path, "r")["logits"][()], args.repeats)
        for key in ("all_s", "view_s", "open_and_read_all_s"):
            result[f"virtual_over_merged_{key[:-2]}"] = result[f"virtual_{key}"] / result[f"merged_{key}"]
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:32s} {value:.4g}" if isinstance(value, float) else f"{key:32s} {value}")


if __name__ == "__main__":
    main()
