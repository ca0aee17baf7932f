"""What a ``ban`` re-run pays to check its finished outputs: remembered digests against hashing again.

A re-run plans before it runs: every recorded output is checked to still hold the content
it was recorded with (:meth:`bandistill.run.manifest.Manifest.status`). Before issue 20 that
meant hashing every output, a cache's every byte, on every re-run; now each output is
recorded with the (size, mtime, ctime, inode) it was hashed at, and an untouched file is
not read again.

Writes one HDF5 file of ``--gb`` gigabytes (float16 logits, as a cache holds them), records
it as a stage's output (one hash), then times ``Manifest(root).status(...)`` in fresh
processes (a process also remembers digests in memory, which a re-run does not have),
interleaved, best of ``--repeats``:

* ``remembered``: the manifest as this version writes it (stat recorded);
* ``rehash``: the same manifest without the recorded stat (what every re-run did before).

Reads are warm (the file was just written and sits in the page cache): ``rehash`` is the
least a re-run paid. Prints seconds and the ratio ``rehash_over_remembered``.

    python benchmarks/rerun_planning.py [--gb 1.0] [--dir /tmp] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from bandistill.run.manifest import MANIFEST_FILE, Manifest

_CHECK = """
import sys, time
from bandistill.run.manifest import Manifest
t0 = time.perf_counter()
state = Manifest(sys.argv[1]).status("gen0.dump", {"bench": 1})
print(state, time.perf_counter() - t0)
"""


def _write_cache(path: Path, gb: float) -> int:
    classes = 100
    rows = max(1, int(gb * 1e9) // (classes * 2))
    chunk = np.random.default_rng(0).standard_normal((min(rows, 1 << 18), classes)).astype(np.float16)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("logits", shape=(rows, classes), dtype=np.float16)
        for start in range(0, rows, chunk.shape[0]):
            n = min(chunk.shape[0], rows - start)
            ds[start:start + n] = chunk[:n]
    return path.stat().st_size


def _time_status(root: Path) -> float:
    out = subprocess.run([sys.executable, "-c", _CHECK, str(root)], capture_output=True, text=True, check=True)
    state, seconds = out.stdout.split()
    if state != "done":
        raise RuntimeError(f"the output should be done, the manifest says {state}")
    return float(seconds)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        remembered, rehash = Path(tmp) / "remembered", Path(tmp) / "rehash"
        (remembered / "cache").mkdir(parents=True)
        size = _write_cache(remembered / "cache" / "gen0.h5", args.gb)
        # the same file under another folder (a hard link, made first: linking changes the inode's ctime)
        (rehash / "cache").mkdir(parents=True)
        (rehash / "cache" / "gen0.h5").hardlink_to(remembered / "cache" / "gen0.h5")
        t0 = time.perf_counter()
        Manifest(remembered).finish("gen0.dump", {"bench": 1}, [remembered / "cache" / "gen0.h5"])
        first_hash = time.perf_counter() - t0
        # ... recorded there without the stat, as before issue 20
        data = json.loads((remembered / MANIFEST_FILE).read_text())
        for rec in data["stages"].values():
            for meta in rec["outputs"].values():
                meta.pop("stat")
        (rehash / MANIFEST_FILE).write_text(json.dumps(data))
        times: dict[str, list[float]] = {"remembered": [], "rehash": []}
        for _ in range(args.repeats):
            times["remembered"].append(_time_status(remembered))
            times["rehash"].append(_time_status(rehash))
    best = {k: min(v) for k, v in times.items()}
    result = {"bytes": size, "first_hash_s": first_hash, "seconds": best,
              "rehash_over_remembered": best["rehash"] / max(best["remembered"], 1e-9)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"cache {size / 1e9:.2f} GB; recording it hashed it once in {first_hash:.2f} s")
        print(f"re-run check, remembered digest: {best['remembered'] * 1e3:.2f} ms")
        print(f"re-run check, hashing again:     {best['rehash'] * 1e3:.1f} ms")
        print(f"rehash_over_remembered: {result['rehash_over_remembered']:.0f}x")
    return result


if __name__ == "__main__":
    main()
