"""Training throughput: bandistill's step vs stock PyTorch (eager, and CUDA graphs), with model FLOPs utilisation.

For each model, on CIFAR-shaped random data, three loops (four on CUDA) take turns in one process
(rounds of a few steps each, the order rotated per round, so drift in the machine's load
hits all alike):

* ``bandistill``: :class:`bandistill.step.TrainStep` exactly as ``bandistill train`` builds
  it (views from pure parameters, normalise, forward/backward, SGD; on CUDA the step
  captured as one CUDA graph, fused SGD with a device lr, cuDNN autotuning);
* ``stock``: the loop a PyTorch user writes first -- float batches already on the device,
  ``model(x)``, cross entropy, ``zero_grad``/``backward``/``step`` with the default SGD, eager
  (bf16 autocast and channels_last on CUDA, like bandistill);
* ``stock_graph`` (CUDA only): the same stock step captured whole as one CUDA graph, the recipe
  of PyTorch's CUDA-graphs documentation (static input and label buffers, warm-up on a side
  stream, ``torch.cuda.graph`` around forward, backward and ``optimizer.step``), each batch
  copied into the static buffers and replayed: what a PyTorch user gets from CUDA graphs alone;
* ``pre_split``: the body of bandistill's loop before issue 10 (commit 047ce3e, transcribed
  below): the reference for "nothing got slower".

Reported per model: images/s of each (median over rounds), ``bandistill_over_stock``,
``bandistill_over_stock_graph`` (CUDA) and ``bandistill_over_pre_split`` (median over rounds of
the per-round ratio), and MFU: the
model's training FLOPs per image (``torch.utils.flop_counter``, forward + backward) times
images/s over a matrix-product peak measured in the same run (bf16 on CUDA, fp32 on CPU).

    python benchmarks/train_throughput.py                     # GPU: batch 128; CPU: batch 32, few steps
    python benchmarks/train_throughput.py --models resnet-20 --steps 4 --rounds 3 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bandistill.device import autocast, resolve_device
from bandistill.models import build_model, default_weight_decay
from bandistill.step import StepData, TrainStep, make_sgd, resolve_compile
from bandistill.data.views import ViewPolicy, normalize

MODELS = ("resnet-20", "densenet-bc-100-12", "wrn-28-10")


def matmul_peak(device: torch.device, seconds: float = 1.0) -> float:
    """FLOP/s of a large matrix product on ``device``: bf16 on CUDA, fp32 on the CPU."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        for _ in range(10):
            a @ b
        sync()
        best = max(best, 10 * 2 * n**3 / (time.perf_counter() - t0))
    return best


def train_flops_per_image(name: str, classes: int) -> float:
    """Forward + backward FLOPs of one training image (counted on a batch of 2, on the CPU in fp32)."""
    model = build_model(name, classes, 3)
    x = torch.randn(2, 3, 32, 32)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), torch.zeros(2, dtype=torch.long)).backward()
    return counter.get_total_flops() / 2


def loops(name: str, batch: int, n: int, device: torch.device, compile_mode: str, classes: int = 100):
    """The three loops on one shared dataset: ``{kind: step(idx)}`` and a device sync."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g).to(device)
    labels = torch.randint(0, classes, (n,), generator=g).to(device)
    policy = ViewPolicy(pad=4, flip=True)
    params = policy.params(0, 0, np.arange(n)).to(device)
    mean = torch.tensor([0.5071, 0.4865, 0.4409], device=device)
    std = torch.tensor([0.2673, 0.2564, 0.2762], device=device)
    wd = default_weight_decay(name)

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_model(name, classes, 3).to(device, memory_format=torch.channels_last)

    # bandistill: what TrainRun builds
    m1 = model()
    ours = TrainStep(m1, make_sgd(m1, lr=0.1, momentum=0.9, weight_decay=wd, device=device),
                     lambda s, y, t: F.cross_entropy(s, y),
                     StepData(images, labels, params, mean, std, policy),
                     capture=compile_mode == "graph", batch_size=batch)
    ours.begin_epoch(params)
    ours.set_lr(0.1)

    # stock eager PyTorch
    m2 = model()
    opt2 = torch.optim.SGD(m2.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=wd)
    floats = normalize(images, mean, std).contiguous(memory_format=torch.channels_last)

    def stock(idx: torch.Tensor) -> None:
        with autocast(device):
            out = m2(floats[idx])
        loss = F.cross_entropy(out.float(), labels[idx])
        opt2.zero_grad(set_to_none=True)
        loss.backward()
        opt2.step()

    # stock PyTorch with the whole step captured as one CUDA graph (PyTorch's documented recipe)
    stock_graph = None
    if device.type == "cuda":
        m4 = model()
        opt4 = torch.optim.SGD(m4.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=wd)
        static_x = torch.zeros((batch, *floats.shape[1:]), device=device).contiguous(memory_format=torch.channels_last)
        static_y = torch.zeros(batch, dtype=torch.long, device=device)
        graph: list[torch.cuda.CUDAGraph] = []

        def stock_body() -> None:
            with autocast(device):
                out = m4(static_x)
            loss = F.cross_entropy(out.float(), static_y)
            loss.backward()
            opt4.step()

        def stock_graph(idx: torch.Tensor) -> None:
            static_x.copy_(floats[idx])
            static_y.copy_(labels[idx])
            if not graph:  # first call: three warm-up steps on a side stream, then the capture
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(3):
                        opt4.zero_grad(set_to_none=True)
                        stock_body()
                torch.cuda.current_stream().wait_stream(side)
                opt4.zero_grad(set_to_none=True)
                graph.append(torch.cuda.CUDAGraph())
                with torch.cuda.graph(graph[0]):  # backward's gradients land in the graph's own .grad buffers
                    stock_body()
            graph[0].replay()

    # the loop body before issue 10 (047ce3e), transcribed
    m3 = model()
    decay = [p for p in m3.parameters() if p.ndim > 1]
    no_decay = [p for p in m3.parameters() if p.ndim <= 1]
    opt3 = torch.optim.SGD([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
                           lr=0.1, momentum=0.9, nesterov=True)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)

    def pre_split(idx: torch.Tensor) -> None:
        nonlocal loss_sum, correct
        for group in opt3.param_groups:
            group["lr"] = 0.1
        x = normalize(policy.apply(images[idx], params[idx]), mean, std)
        y = labels[idx]
        with autocast(device):
            logits = m3(x)
        loss = F.cross_entropy(logits.float(), y)
        opt3.zero_grad(set_to_none=True)
        loss.backward()
        opt3.step()
        loss_sum += loss.detach() * idx.numel()
        correct += (logits.detach().argmax(1) == y).sum()

    for m in (m1, m2, m3):
        m.train()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    kinds = {"bandistill": ours.step, "stock": stock, "pre_split": pre_split}
    if stock_graph is not None:
        m4.train()
        kinds["stock_graph"] = stock_graph
    return kinds, sync


def measure(name: str, args, device: torch.device, peak: float) -> dict:
    batch, n = args.batch_size, max(args.batch_size * args.steps, 2 * args.batch_size)
    compile_mode = resolve_compile(args.compile, device)
    kinds, sync = loops(name, batch, n, device, compile_mode)
    gen = torch.Generator().manual_seed(1)

    def batches(count: int) -> list[torch.Tensor]:
        perm = torch.randperm(n, generator=gen).to(device)
        return [perm[(i * batch) % (n - batch + 1):][:batch] for i in range(count)]

    for fn in kinds.values():  # warm-up: allocator, cuDNN autotuning, the capture of bandistill's graph
        for idx in batches(args.warmup):
            fn(idx)
    sync()
    names = list(kinds)
    seconds: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for kind in names[r % len(names):] + names[: r % len(names)]:
            todo = batches(args.steps)
            sync()
            t0 = time.perf_counter()
            for idx in todo:
                kinds[kind](idx)
            sync()
            seconds[kind].append(time.perf_counter() - t0)
    images = batch * args.steps
    ips = {k: images / statistics.median(v) for k, v in seconds.items()}
    flops = train_flops_per_image(name, 100)

    def ratio(a: str, b: str) -> float:
        return statistics.median(sb / sa for sa, sb in zip(seconds[a], seconds[b]))

    return {
        "model": name,
        "compile": compile_mode,
        "images_per_s": ips,
        "bandistill_over_stock": ratio("bandistill", "stock"),
        **({"bandistill_over_stock_graph": ratio("bandistill", "stock_graph")} if "stock_graph" in kinds else {}),
        "bandistill_over_pre_split": ratio("bandistill", "pre_split"),
        "train_gflops_per_image": flops / 1e9,
        "mfu": {k: v * flops / peak for k, v in ips.items()},
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated model names")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=0, help="default: 128 on CUDA, 32 on the CPU")
    ap.add_argument("--steps", type=int, default=0, help="steps per loop per round (default: 20 CUDA, 2 CPU)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the loops, interleaved")
    ap.add_argument("--warmup", type=int, default=0, help="untimed steps per loop (default: 10 CUDA, 1 CPU)")
    ap.add_argument("--compile", default="auto", help="bandistill's --compile (auto: graph on CUDA, none on CPU)")
    ap.add_argument("--peak-seconds", type=float, default=1.0, help="time spent measuring the matmul peak, twice")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    dev = resolve_device(args.device)
    gpu = dev.type == "cuda"
    args.batch_size = args.batch_size or (128 if gpu else 32)
    args.steps = args.steps or (20 if gpu else 2)
    args.warmup = args.warmup or (10 if gpu else 1)
    if gpu:
        torch.backends.cudnn.benchmark = True
    # the peak is measured before and after the models (the best of both): a busy machine lowers it
    peak = matmul_peak(dev, args.peak_seconds)
    rows = [measure(name.strip(), args, dev, peak) for name in args.models.split(",") if name.strip()]
    after = matmul_peak(dev, args.peak_seconds)
    if after > peak:
        for r in rows:
            r["mfu"] = {k: v * peak / after for k, v in r["mfu"].items()}
        peak = after
    result = {
        "device": torch.cuda.get_device_name(dev) if gpu else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "batch_size": args.batch_size,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "peak_tflops": peak / 1e12,
        "peak_dtype": "bf16" if gpu else "fp32",
        "models": rows,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"train throughput on {result['device']}, batch {args.batch_size}, {args.rounds} interleaved rounds "
              f"of {args.steps} steps; measured {result['peak_dtype']} matmul peak "
              f"{result['peak_tflops']:.3f} TFLOP/s")
        graphs = gpu  # the stock CUDA-graph loop runs on CUDA only
        print("| model | bandistill img/s | stock eager img/s |" + (" stock graph img/s |" if graphs else "")
              + " pre-split img/s | bandistill / stock |" + (" bandistill / stock graph |" if graphs else "")
              + " bandistill / pre-split | MFU bandistill | MFU stock |")
        print("|---" * (10 if graphs else 8) + "|")
        for r in rows:
            ips, mfu = r["images_per_s"], r["mfu"]
            print(f"| {r['model']} ({r['compile']}) | {ips['bandistill']:.1f} | {ips['stock']:.1f} | "
                  + (f"{ips['stock_graph']:.1f} | " if graphs else "")
                  + f"{ips['pre_split']:.1f} | {r['bandistill_over_stock']:.3f} | "
                  + (f"{r['bandistill_over_stock_graph']:.3f} | " if graphs else "")
                  + f"{r['bandistill_over_pre_split']:.3f} | {100 * mfu['bandistill']:.1f}% | "
                  f"{100 * mfu['stock']:.1f}% |")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
