"""What content identity and the value check cost on a large cache, next to simply reading it.

Builds a real format-1 cache with :class:`bandistill.cache.writer.CacheWriter` (default: 50,000
samples x 162 views x 100 classes, float16, i.e. CIFAR-100 with every pad-crop-flip view:
1.6 GB), then times, side by side in one run:

* ``read``: every dataset read once, a slab at a time (what any full pass costs);
* ``digest``: :func:`bandistill.identity.cache_digest` (what the manifest pays per cache output,
  and a student once at start-up);
* ``check``: :func:`bandistill.cache.reader.check_values` (NaN/inf and view-parameter range scan
  a student runs when it opens a cache);
* ``start_three``: what a student's start-up did before issue 20, three passes: ``check``, ``digest``,
  then loading every view into memory (``read_stored_all`` + ``read_view_params_all``);
* ``start_one``: what it does now, one pass doing all three
  (:meth:`bandistill.cache.reader.SoftTargetCache.load`, ``keep_targets=True``); ``stream_two`` /
  ``stream_one``: the same for a streaming student (check + digest, no load).

It prints wall and CPU seconds, GB/s and the ratios ``digest_over_read``, ``check_over_read``,
``one_over_three`` (start_one / start_three) and ``stream_one_over_two``. Reads are
warm (the file was just written and sits in the page cache); the best of ``--repeats`` is
reported. The file is written under ``--dir`` (default: a temporary folder) and deleted.

    python benchmarks/identity_cost.py [--samples 50000 --views 162 --classes 100] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from bandistill import identity
from bandistill.cache.reader import check_values, open_cache
from bandistill.cache.writer import CacheWriter
from bandistill.data.views import ViewPolicy


def build(path: Path, samples: int, views: int, classes: int) -> None:
    rng = np.random.default_rng(0)
    policy = ViewPolicy(pad=4, flip=True)
    attrs = {"dataset": "synthetic", "dataset_fingerprint": "0" * 16, "split": "train", "view_policy": policy.to_json(),
             "seed": 0, "teacher": json.dumps({"model": "x", "checkpoint_digest": "0" * 16, "generation": 0}),
             "teacher_digest": "0" * 16}
    w = CacheWriter.create(path, attrs=attrs, num_views=views, num_samples=samples, num_classes=classes, num_params=3,
                           dtype="float16", labels=rng.integers(0, classes, samples),
                           test_labels=rng.integers(0, classes, 1000))
    with w:
        w.write_test(rng.standard_normal((1000, classes)).astype(np.float16))
        block = rng.standard_normal((samples, classes)).astype(np.float16)
        for v in range(views):
            w.write_view(v, np.roll(block, v, axis=1), policy.params(0, v, np.arange(samples)).numpy())
        w.finish()


def read_all(path: Path) -> None:
    with h5py.File(path, "r", locking=False) as f:
        for name in f:
            ds = f[name]
            step = max(1, (64 << 20) // max(1, ds.size // max(1, ds.shape[0]) * ds.dtype.itemsize))
            for start in range(0, ds.shape[0], step):
                ds[start:start + step]


def best_of(repeats: int, fn) -> tuple[float, float]:
    """Best wall time and best CPU time (the CPU time is what a busy shared machine does not inflate)."""
    wall, cpu = [], []
    for _ in range(repeats):
        identity._memo.clear()  # a fresh process: nothing remembered
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(wall), min(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=50_000)
    ap.add_argument("--views", type=int, default=162)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="Folder for the temporary cache (default: the system's temp).")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        path = Path(tmp) / "big.h5"
        build(path, a.samples, a.views, a.classes)
        size = path.stat().st_size
        read_all(path)  # warm the page cache
        (t_read, c_read) = best_of(a.repeats, lambda: read_all(path))
        (t_digest, c_digest) = best_of(a.repeats, lambda: identity.cache_digest(path))

        def check() -> None:
            with open_cache(path) as cache:
                check_values(cache)

        (t_check, c_check) = best_of(a.repeats, check)

        def start_three(load: bool) -> None:
            with open_cache(path) as cache:
                check_values(cache)
                identity.cache_digest(path)
                if load:
                    cache.read_stored_all(), cache.read_view_params_all()

        def start_one(load: bool) -> None:
            with open_cache(path) as cache:
                cache.load(keep_targets=load)

        # interleaved, so a change in the machine's load hits both alike
        timings: dict[str, list[tuple[float, float]]] = {k: [] for k in ("three", "one", "stream_two", "stream_one")}
        for _ in range(a.repeats):
            timings["three"].append(best_of(1, lambda: start_three(True)))
            timings["one"].append(best_of(1, lambda: start_one(True)))
            timings["stream_two"].append(best_of(1, lambda: start_three(False)))
            timings["stream_one"].append(best_of(1, lambda: start_one(False)))
        best = {k: (min(w for w, _ in v), min(c for _, c in v)) for k, v in timings.items()}
    result = {
        "file_bytes": size,
        "read_s": t_read, "digest_s": t_digest, "check_s": t_check,
        "read_cpu_s": c_read, "digest_cpu_s": c_digest, "check_cpu_s": c_check,
        "read_gb_per_s": size / t_read / 1e9, "digest_gb_per_s": size / t_digest / 1e9,
        "check_gb_per_s": size / t_check / 1e9,
        "digest_over_read": t_digest / t_read, "check_over_read": t_check / t_read,
        "start_three_s": best["three"][0], "start_one_s": best["one"][0],
        "start_three_cpu_s": best["three"][1], "start_one_cpu_s": best["one"][1],
        "stream_two_s": best["stream_two"][0], "stream_one_s": best["stream_one"][0],
        "one_over_three": best["one"][0] / best["three"][0],
        "stream_one_over_two": best["stream_one"][0] / best["stream_two"][0],
    }
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"cache {size / 1e9:.2f} GB ({a.samples} samples x {a.views} views x {a.classes} classes, float16), warm")
        for key in ("read", "digest", "check"):
            print(f"  {key:6s} {result[key + '_s']:7.2f} s wall ({result[key + '_cpu_s']:.2f} s CPU)  "
                  f"{result[key + '_gb_per_s']:5.2f} GB/s")
        print(f"  digest_over_read {result['digest_over_read']:.2f}  check_over_read {result['check_over_read']:.2f}")
        print(f"  student start in memory: three passes {result['start_three_s']:.2f} s "
              f"({result['start_three_cpu_s']:.2f} s CPU), one pass {result['start_one_s']:.2f} s "
              f"({result['start_one_cpu_s']:.2f} s CPU): one_over_three {result['one_over_three']:.2f}")
        print(f"  streaming student start: two passes {result['stream_two_s']:.2f} s, one pass "
              f"{result['stream_one_s']:.2f} s: stream_one_over_two {result['stream_one_over_two']:.2f}")


if __name__ == "__main__":
    main()
