"""How long a student waits for one epoch of an ImageNet-1k top-5 cache: a synthetic file of that size.

ImageNet-1k: 1,281,167 training images, 1,000 classes. A ``--views epochs`` cache for a
100-epoch student holds 100 views; with ``--top-k 5`` in float16 each row is 22 bytes (five
values, five int16 class indices, one log-sum-exp) and each view's parameters 10 bytes per
sample (RandomResizedCrop: top, left, height, width, flip as int16). This writes a file of
exactly that layout (the cache's ``topk`` and ``view_params`` arrays, contiguous, random
contents) and times what a student streaming its cache reads per epoch -- one view's table
and its parameters -- cold (the file's pages dropped from the page cache with
``posix_fadvise(DONTNEED)`` before each read) and warm. Sizes are also printed on paper
(:func:`cache.schema.storage_bytes`) for full rows and top-5.

    python benchmarks/imagenet_cache_read.py [--views 100 --reads 3 --dir /tmp] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from bandistill.cache import schema

SAMPLES, CLASSES, PARAMS = 1_281_167, 1000, 5


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", type=int, default=100)
    ap.add_argument("--samples", type=int, default=SAMPLES)
    ap.add_argument("--reads", type=int, default=3)
    ap.add_argument("--dir", default=None, help="Where to write the synthetic file (default: the temp dir).")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)

    paper = {f"{form}": {k: v for k, v in schema.storage_bytes(1, SAMPLES, CLASSES, "float16", PARAMS,
                                                                top_k=k5).items() if k != "other"}
             for form, k5 in (("full_rows", 0), ("top5", 5))}
    paper["top5_100_views_total"] = schema.storage_bytes(100, SAMPLES, CLASSES, "float16", PARAMS, top_k=5)["total"]
    paper["full_rows_100_views_total"] = schema.storage_bytes(100, SAMPLES, CLASSES, "float16", PARAMS)["total"]
    record = schema.topk_dtype(5, CLASSES, "float16")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        path = Path(tmp) / "imagenet-top5.h5"
        t0 = time.perf_counter()
        with h5py.File(path, "w") as f:
            topk = f.create_dataset(schema.TOPK, shape=(a.views, a.samples), dtype=record)
            params = f.create_dataset(schema.VIEW_PARAMS, shape=(a.views, a.samples, PARAMS), dtype=np.int16)
            row = np.frombuffer(rng.bytes(a.samples * record.itemsize), dtype=record)
            prow = rng.integers(0, 500, size=(a.samples, PARAMS), dtype=np.int16)
            for v in range(a.views):
                topk[v] = row
                params[v] = prow
        write_s = time.perf_counter() - t0
        size = path.stat().st_size
        cold, warm = [], []
        with h5py.File(path, "r") as f:
            for v in random.Random(0).sample(range(a.views), min(a.reads, a.views)):
                drop_cache(path)
                t0 = time.perf_counter()
                f[schema.TOPK][v]
                f[schema.VIEW_PARAMS][v]
                cold.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                f[schema.TOPK][v]
                f[schema.VIEW_PARAMS][v]
                warm.append(time.perf_counter() - t0)
    per_view = a.samples * (record.itemsize + PARAMS * 2)
    result = {"samples": a.samples, "views": a.views, "file_bytes": size, "write_s": round(write_s, 1),
              "epoch_read_bytes": per_view, "cold_read_s": [round(s, 3) for s in cold],
              "warm_read_s": [round(s, 3) for s in warm], "on_paper": paper}
    if a.json:
        print(json.dumps(result))
    else:
        hb = schema.human_bytes
        print(f"on paper, per view: full rows {hb(paper['full_rows']['logits'])}, top-5 {hb(paper['top5']['logits'])}, "
              f"view params {hb(paper['top5']['view_params'])}; 100 views: top-5 {hb(paper['top5_100_views_total'])}, "
              f"full rows {hb(paper['full_rows_100_views_total'])}")
        print(f"synthetic file: {a.views} views, {hb(size)} (written in {write_s:.1f} s)")
        print(f"one epoch ({hb(per_view)}: one view's top-5 table + its params): cold "
              f"{', '.join(f'{s:.2f}' for s in cold)} s, warm {', '.join(f'{s:.3f}' for s in warm)} s")
    return result


if __name__ == "__main__":
    main()
