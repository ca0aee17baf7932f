"""Data throughput: bandistill's streaming source against a stock torchvision loader, and their memory.

Both make RandomResizedCrop + horizontal-flip views of the same size from the same tree of
JPEGs, with the same number of workers, as uint8 batches:

* ``stream``: ``load_dataset("imagefolder", tree, image_size=S)`` (paths, labels and header
  sizes in memory), then per batch the policy's boxes (a pure function of seed, view and
  sample) and ``FileImages.render`` on ``--workers`` decode threads;
* ``stock``: ``torchvision.datasets.ImageFolder`` + ``RandomResizedCrop(S)`` +
  ``RandomHorizontalFlip()`` + ``PILToTensor()`` in a ``DataLoader(num_workers=--workers)``.

Each measurement runs in a fresh process (so its memory is its own), the two alternating in
``--rounds`` interleaved rounds, at each tree size in ``--copies``: the train split repeated
that many times with hard links (no extra disk). Reported: images/s (best of the rounds),
``stream_over_stock``, the setup time (scan), and resident memory: the main process's peak
(VmHWM) and, for stock, the sum over its worker processes too (shared pages counted in each).
A decoder comparison (one thread, Pillow's resize of the box vs torchvision.io's
libjpeg-turbo decode + ``resized_crop``) says why Pillow makes the pixels.

    python benchmarks/data_throughput.py --data-dir ../shared/data/imagenette-224 [--image-size 128
        --workers 2 --batch-size 64 --batches 15 --copies 2 10 --rounds 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def rss_mb(pid: int | str = "self", key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def build_tree(src: Path, dst: Path, copies: int) -> Path:
    """``dst/train`` = ``copies`` hard-linked copies of ``src/train``; ``dst/val`` = one of ``src``'s test split."""
    test = next(src / s for s in ("test", "val") if (src / s).is_dir())
    for cls in sorted(p.name for p in (src / "train").iterdir() if p.is_dir()):
        for split, k in (("train", copies), ("val", 1)):
            out = dst / split / cls
            out.mkdir(parents=True, exist_ok=True)
            origin = src / "train" / cls if split == "train" else test / cls
            for f in sorted(origin.iterdir()):
                for c in range(k):
                    os.link(f, out / f"c{c}_{f.name}")
    return dst


def child_stream(tree: str, size: int, workers: int, batch: int, batches: int) -> dict:
    os.environ["BANDISTILL_DECODE_WORKERS"] = str(workers)
    from bandistill.data import load_dataset

    t0 = time.perf_counter()
    ds = load_dataset("imagefolder", tree, image_size=size)
    setup = time.perf_counter() - t0
    perm = np.random.default_rng(0).permutation(ds.num_train)
    policy, images = ds.view_policy, ds.train_images

    def one(b: int):
        idx = perm[b * batch:(b + 1) * batch]
        return images[idx].render(policy.params(0, 0, idx))

    one(0)  # warm-up (the thread pool starts)
    t0 = time.perf_counter()
    for b in range(1, batches + 1):
        x = one(b)
    seconds = time.perf_counter() - t0
    assert x.shape == (batch, 3, size, size)
    return {"images_per_s": batches * batch / seconds, "setup_s": setup, "images": ds.num_train,
            "peak_rss_mb": rss_mb(key="VmHWM"), "rss_mb": rss_mb(), "workers_rss_mb": 0.0}


def child_stock(tree: str, size: int, workers: int, batch: int, batches: int) -> dict:
    import torch
    from torchvision import datasets, transforms

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ds = datasets.ImageFolder(os.path.join(tree, "train"), transform=transforms.Compose([
        transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), transforms.PILToTensor()]))
    setup = time.perf_counter() - t0
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers)
    it = iter(loader)
    next(it)  # warm-up (the workers start)
    t0 = time.perf_counter()
    for _ in range(batches):
        x, _ = next(it)
    seconds = time.perf_counter() - t0
    assert x.shape == (batch, 3, size, size)
    workers_rss = sum(rss_mb(w.pid) for w in getattr(it, "_workers", []))
    return {"images_per_s": batches * batch / seconds, "setup_s": setup, "images": len(ds),
            "peak_rss_mb": rss_mb(key="VmHWM"), "rss_mb": rss_mb(), "workers_rss_mb": workers_rss}


def decoder_comparison(tree: Path, size: int, count: int = 200) -> dict:
    """ms per image, one thread: Pillow (decode, resize of the box) vs torchvision.io (decode_jpeg, resized_crop)."""
    import warnings

    import torch
    from PIL import Image

    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders (for TorchCodec): one more reason
        warnings.simplefilter("ignore")
        from torchvision.io import ImageReadMode, decode_jpeg, read_file
    from torchvision.transforms.v2 import functional as TF

    torch.set_num_threads(1)
    files = sorted((tree / "train").rglob("*.JPEG"))[:: max(1, len(list((tree / "train").rglob("*.JPEG"))) // count)]
    files = files[:count]

    def pillow(p):
        with Image.open(p) as img:
            w, h = img.size
            return img.convert("RGB").resize((size, size), Image.BILINEAR, box=(w // 8, h // 8, w - w // 8, h - h // 8))

    def tvio(p):
        x = decode_jpeg(read_file(str(p)), mode=ImageReadMode.RGB)
        h, w = x.shape[-2:]
        return TF.resized_crop(x, h // 8, w // 8, h - 2 * (h // 8), w - 2 * (w // 8), [size, size], antialias=True)

    out = {}
    for name, fn in (("pillow", pillow), ("torchvision_io", tvio)) * 2:  # interleaved, the second pass counts
        t0 = time.perf_counter()
        for p in files:
            fn(p)
        out[name] = (time.perf_counter() - t0) / len(files) * 1000.0
    return {"ms_per_image": out, "images": len(files)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--batches", type=int, default=15)
    ap.add_argument("--copies", type=int, nargs="+", default=[2, 10])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", choices=["stream", "stock"], help=argparse.SUPPRESS)
    ap.add_argument("--tree", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        fn = child_stream if a.child == "stream" else child_stock
        print(json.dumps(fn(a.tree, a.image_size, a.workers, a.batch_size, a.batches)))
        return {}

    src = Path(a.data_dir).expanduser()
    result = {"image_size": a.image_size, "workers": a.workers, "batch_size": a.batch_size,
              "batches": a.batches, "rounds": a.rounds, "trees": []}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        for copies in a.copies:
            tree = build_tree(src, Path(tmp) / f"x{copies}", copies)
            runs: dict[str, list[dict]] = {"stream": [], "stock": []}
            for r in range(a.rounds):
                for kind in (("stream", "stock") if r % 2 == 0 else ("stock", "stream")):
                    cmd = [sys.executable, __file__, "--data-dir", str(src), "--child", kind, "--tree", str(tree),
                           "--image-size", str(a.image_size), "--workers", str(a.workers),
                           "--batch-size", str(a.batch_size), "--batches", str(a.batches)]
                    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                    runs[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
            best = {k: max(v, key=lambda d: d["images_per_s"]) for k, v in runs.items()}
            row = {"copies": copies, "train_images": best["stream"]["images"], **{
                k: {"images_per_s": round(b["images_per_s"], 1), "setup_s": round(b["setup_s"], 2),
                    "peak_rss_mb": round(max(d["peak_rss_mb"] for d in runs[k]), 1),
                    "workers_rss_mb": round(max(d["workers_rss_mb"] for d in runs[k]), 1)} for k, b in best.items()},
                "stream_over_stock": round(best["stream"]["images_per_s"] / best["stock"]["images_per_s"], 3)}
            result["trees"].append(row)
            if not a.json:
                s, k = row["stream"], row["stock"]
                print(f"{copies:>3}x train ({row['train_images']} images): stream {s['images_per_s']:.0f} img/s "
                      f"(scan {s['setup_s']:.1f} s, peak RSS {s['peak_rss_mb']:.0f} MB) | stock {k['images_per_s']:.0f} "
                      f"img/s (setup {k['setup_s']:.1f} s, peak RSS {k['peak_rss_mb']:.0f} MB + workers "
                      f"{k['workers_rss_mb']:.0f} MB) | stream/stock {row['stream_over_stock']:.2f}")
            if copies == a.copies[0]:
                result["decoder"] = decoder_comparison(tree, a.image_size)
                if not a.json:
                    ms = result["decoder"]["ms_per_image"]
                    print(f"decode + crop + resize, one thread: Pillow {ms['pillow']:.2f} ms/image, torchvision.io "
                          f"{ms['torchvision_io']:.2f} ms/image")
    if a.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
