"""BANE inference throughput: one merged ONNX graph vs. N separate sessions vs. the PyTorch models.

Measured side by side in one process, on the same images, batch size and threads, the ways
round-robin repeat by repeat (so drift in the machine's load hits all alike), and reported
as the median images/s of each and as ratios to the N separate sessions and to PyTorch:

    python benchmarks/ensemble_throughput.py --threads 1                 # 3 resnet-20 on CIFAR-shaped images
    python benchmarks/ensemble_throughput.py --onnx runs/onnx/gen*.onnx --json  # your generations

* merged:       ``save_merged_onnx`` -- one onnxruntime session running every member, the
                softmaxes and the mean (what ``bandistill ensemble --save-onnx`` writes), through
                IO binding: the images are on the session's device before timing, batches are
                bound in place, outputs gathered on the device (``run_bound``);
* merged_graph: the same at a fixed batch as an onnxruntime CUDA graph (CUDA only);
* merged_run:   the merged session through plain ``session.run`` on host NumPy batches (what
                IO binding saves: per-batch host copies);
* separate:     one session per member through IO binding, probabilities averaged on the host
                (what ``bandistill ensemble`` does);
* pytorch:      the members' checkpoints (found through the ``bandistill.checkpoint`` metadata),
                normalise + forward + softmax + mean under ``torch.inference_mode``, channels_last,
                bf16 autocast on CUDA (float32 on the CPU), images on the device before timing.

Without ``--onnx`` the members are freshly initialised networks (throughput does not
depend on the weights), exported exactly like ``bandistill export`` does. On a shared
machine pass ``--threads`` so onnxruntime and PyTorch use the same number of threads.
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

from bandistill.checkpoint import load_checkpoint, model_from_checkpoint, normalization, save_checkpoint
from bandistill.data import ImageDataset, load_dataset
from bandistill.device import autocast, resolve_device
from bandistill.errors import UserError
from bandistill.bane import combine, to_log_probs
from bandistill.models import build_model
from bandistill.onnx.members import load_members
from bandistill.onnx.merge import save_merged_onnx
from bandistill.onnx.runtime import (
    create_session, provider_name, resolve_providers, run_batched, run_bound, session_device, session_provider,
)
from bandistill.data.views import ViewPolicy, normalize


def synthetic32(n_test: int = 1024, classes: int = 10) -> ImageDataset:
    """CIFAR-shaped random images (no download): 3x32x32 uint8."""
    g = torch.Generator().manual_seed(0)
    return ImageDataset(
        name="synthetic32",
        train_images=torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g),
        train_labels=torch.randint(0, classes, (64,), generator=g),
        test_images=torch.randint(0, 256, (n_test, 3, 32, 32), dtype=torch.uint8, generator=g),
        test_labels=torch.randint(0, classes, (n_test,), generator=g),
        classes=[str(i) for i in range(classes)],
        view_policy=ViewPolicy(pad=4, flip=True),
    )


def demo_members(folder: Path, model: str, ds: ImageDataset, members: int) -> list[Path]:
    """``members`` freshly initialised generations of ``model``, exported like ``bandistill export``."""
    from bandistill.onnx.export import export_checkpoint

    mean, std = ds.normalization()
    paths = []
    for k in range(members):
        torch.manual_seed(k)
        net = build_model(model, ds.num_classes, ds.in_channels)
        ckpt = {
            "model": {"name": model, "num_classes": ds.num_classes, "in_channels": ds.in_channels, "options": {}},
            "state_dict": net.state_dict(),
            "dataset": {"name": ds.name, "fingerprint": ds.fingerprint, "num_classes": ds.num_classes,
                        "classes": list(ds.classes), "image_shape": list(ds.image_shape),
                        "view_policy": ds.view_policy.to_json()},
            "normalization": {"mean": mean, "std": std},
            "config": {},
            "generation": k,
            "teacher": None,
            "metrics": {},
        }
        save_checkpoint(ckpt, folder / f"gen{k}" / "model.pt")
        export_checkpoint(folder / f"gen{k}" / "model.pt", folder / f"gen{k}.onnx", dataset=ds)
        paths.append(folder / f"gen{k}.onnx")
    return paths


class TorchEnsemble:
    """The members as PyTorch modules: normalise, forward, softmax, mean (bf16 autocast on CUDA)."""

    def __init__(self, checkpoints: list[Path], device: torch.device) -> None:
        self.device = device
        self.nets, self.norms = [], []
        for path in checkpoints:
            ckpt = load_checkpoint(path)
            net = model_from_checkpoint(ckpt).to(device, memory_format=torch.channels_last).eval()
            self.nets.append(net)
            mean, std = normalization(ckpt)
            self.norms.append((mean.to(device), std.to(device)))

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, batch_size: int) -> np.ndarray:
        out = []
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size].to(self.device, non_blocking=True)
            probs = None
            for net, (mean, std) in zip(self.nets, self.norms):
                with autocast(self.device):
                    logits = net(normalize(x, mean, std).contiguous(memory_format=torch.channels_last))
                p = torch.softmax(logits.float(), dim=1)
                probs = p if probs is None else probs + p
            out.append(probs / len(self.nets))
        return torch.cat(out).cpu().numpy()  # one host copy (and sync) at the end


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--onnx", nargs="+", default=None, help="Member ONNX files (default: fresh demo members).")
    ap.add_argument("--dataset", default=None, help="Dataset of the images (default: the members' / synthetic32).")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--model", default="resnet-20", help="Demo members' architecture.")
    ap.add_argument("--members", type=int, default=3, help="Number of demo members.")
    ap.add_argument("--images", type=int, default=1024, help="Images per measured pass.")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5, help="Measured passes of each way (after one warm-up).")
    ap.add_argument("--provider", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--threads", type=int, default=None, help="Intra-op threads of onnxruntime and PyTorch.")
    ap.add_argument("--json", action="store_true", help="Print one JSON object on stdout.")
    args = ap.parse_args(argv)

    providers = resolve_providers(args.provider)
    device = resolve_device("cuda" if provider_name(providers) == "cuda" else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    work = tempfile.TemporaryDirectory(prefix="bane-bench-")
    folder = Path(work.name)
    t_setup = time.perf_counter()
    if args.onnx:
        members = load_members(args.onnx)
        paths = [m.path for m in members]
        ds = load_dataset(args.dataset or members[0].dataset, args.data_dir)
    else:
        ds = synthetic32(args.images) if (args.dataset or "synthetic32") == "synthetic32" else load_dataset(args.dataset, args.data_dir)
        paths = demo_members(folder, args.model, ds, args.members)
        members = load_members(paths)
    images = ds.test_images
    if images.shape[0] < args.images:  # tile a small test split up to the asked size
        images = images.repeat((args.images + images.shape[0] - 1) // images.shape[0], 1, 1, 1)
    images = images[: args.images].contiguous()
    images_np = images.numpy()

    merged_path = folder / "bane.onnx"
    save_merged_onnx(paths, merged_path, provider=args.provider, check_images=images_np[:128],
                     batch_size=args.batch_size)
    merged = create_session(merged_path, args.provider, threads=args.threads)
    separate = [create_session(p, args.provider, threads=args.threads) for p in paths]
    on_device = images.to(session_device(merged))  # "images go to the device once", before timing
    checkpoints = [m.checkpoint for m in members]
    torch_ens = TorchEnsemble(checkpoints, device) if all(c is not None and c.is_file() for c in checkpoints) else None
    torch_images = images.to(device)

    def run_separate() -> np.ndarray:
        outs = [run_bound(s, on_device, batch_size=args.batch_size) for s in separate]
        return combine([to_log_probs(o, m.output) for o, m in zip(outs, members)])

    ways = {
        "merged": lambda: run_bound(merged, on_device, batch_size=args.batch_size),
        "merged_run": lambda: run_batched(merged, images_np, batch_size=args.batch_size),
        "separate": run_separate,
    }
    notes = []
    if session_provider(merged) == "cuda":
        try:
            graph = create_session(merged_path, args.provider, threads=args.threads, cuda_graph=True)
            ways["merged_graph"] = lambda: run_bound(graph, on_device, batch_size=args.batch_size, static=True)
        except UserError as exc:  # e.g. some nodes stay on the CPU provider: no capture
            notes.append(f"merged_graph skipped: {exc}")
    if torch_ens is not None:
        ways["pytorch"] = lambda: torch_ens(torch_images, args.batch_size)
    outputs = {name: fn() for name, fn in ways.items()}  # warm-up, and the outputs compared below
    setup_s = time.perf_counter() - t_setup
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name, fn in ways.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)

    n = int(images_np.shape[0])
    results = []
    base = statistics.median(times["separate"])
    eager = statistics.median(times["pytorch"]) if "pytorch" in times else None
    for name in ways:
        med = statistics.median(times[name])
        results.append({
            "way": name,
            "calls_per_batch": 1 if name.startswith("merged") else len(paths),
            "images_per_s": n / med,
            "median_s": med,
            "min_s": min(times[name]),
            "ms_per_batch": 1000 * med / max(1, -(-n // args.batch_size)),
            "speed_vs_separate": base / med,
            "speed_vs_pytorch": None if eager is None else eager / med,
            "max_abs_prob_diff_vs_separate": float(np.max(np.abs(outputs[name] - outputs["separate"]))),
        })
    report = {
        "members": [str(p) for p in paths],
        "models": [m.model for m in members],
        "dataset": ds.name,
        "image_shape": list(images.shape[1:]),
        "images": n,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "provider": session_provider(merged),
        "torch_autocast": "bf16" if device.type == "cuda" else "none (float32)",
        "torch_device": str(device),
        "threads": args.threads or "default",
        "setup_s": setup_s,
        "results": results,
    }
    if torch_ens is None:
        notes.append("pytorch skipped: the members' checkpoints (bandistill.checkpoint metadata) are not here")
    if notes:
        report["note"] = "; ".join(notes)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{len(paths)} members ({', '.join(sorted(set(report['models'])))}) on {n} {ds.name} images "
              f"{report['image_shape']}, batch {args.batch_size}, onnxruntime on {report['provider']}, "
              f"torch on {device}, median of {args.repeats}")
        print(f"{'way':<13}{'calls/batch':>12}{'images/s':>12}{'ms/batch':>10}{'x separate':>12}{'x pytorch':>11}"
              f"{'max |Δp|':>11}")
        for r in results:
            vs_torch = "" if r["speed_vs_pytorch"] is None else f"{r['speed_vs_pytorch']:.2f}"
            print(f"{r['way']:<13}{r['calls_per_batch']:>12}{r['images_per_s']:>12.1f}{r['ms_per_batch']:>10.2f}"
                  f"{r['speed_vs_separate']:>12.2f}{vs_torch:>11}{r['max_abs_prob_diff_vs_separate']:>11.1e}")
        if "note" in report:
            print(report["note"])
    work.cleanup()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as exc:  # e.g. --provider cuda where onnxruntime's CUDA provider cannot start: one line why
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
