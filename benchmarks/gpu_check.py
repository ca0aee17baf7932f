"""Every GPU path in one command: each GPU-only check and benchmark as one row against the README's target.

GPU time comes rarely and briefly, on machines with no network where nothing can be installed.
From a plain checkout (nothing installed; the script arranges the package itself), on the
machine with the GPU:

    python benchmarks/gpu_check.py                              # budget 480 s (8 minutes on one H100)
    python benchmarks/gpu_check.py --budget 300 --out "$OUT/gpu_check.json"
    python benchmarks/gpu_check.py --smoke                      # toy sizes on the CPU (tests/test_gpu_check.py)

It needs only what such a machine has: Python 3.10+, torch with CUDA (2.4 or later, the package's
range; CI pins 2.14.1, and an older one such as 2.11 is fine: whatever a check needs that it lacks
shows in that check's row as "could not run (why)" and the other checks go on), torchvision,
numpy, h5py, onnx, onnxscript, onnxruntime (CPU-only is fine: the CUDA-provider rows then say
why they could not run), click, rich and pytest. The header lists the versions found.

The package is not installed: ``cli/`` and ``cache/`` become ``bandistill.cli`` and
``bandistill.cache`` only through ``pyproject.toml``, so the script builds a temporary folder
holding ``bandistill/`` (symlinks to the checkout's modules, with ``cli`` and ``cache`` inside)
and puts it first on ``PYTHONPATH`` of every check; each check runs from a scratch folder, so the
checkout's own ``bandistill/`` folder (without ``cli``/``cache``) is never imported instead.

Checks (each in its own subprocess with a timeout, so one that fails or hangs is reported and
the others run; each gets at most what is left of ``--budget``):

* ``env``: versions, the GPU, onnxruntime's providers, the package arrangement;
* ``gpu_tests``: the tests marked ``gpu`` (``pytest -m gpu``): the captured step trains as the
  eager one, capture waits for the checkpoint writer, views on the GPU, onnxruntime's CUDA
  sessions -- one row per test;
* ``train_throughput`` for resnet-20, densenet-bc-100-12, wrn-28-10 at batch 128: images/s and
  MFU beside stock eager PyTorch and stock PyTorch with CUDA graphs in the same run;
* ``step_cost`` (cached / plain, every cached kind; live teacher / plain), ``dump_throughput``
  (dump / pure inference);
* ``ban``: a tiny chain end to end on the GPU (train, dump, train, export with its parity check,
  ensemble);
* ``ensemble_throughput``: the merged BANE of ban's generations on onnxruntime's CUDA provider with
  IO binding and as a CUDA graph, vs the same models in PyTorch (or one line why the CUDA provider
  could not start);
* ``stream_ban``: the same on the streaming source (``--image-size``: JPEGs of varying sizes decoded
  per batch), and ``stream_throughput``: that source against a stock torchvision DataLoader.

Output: a table on stdout (what, figure, target, verdict: holds / falls short / could not run
(why) / measured, for rows without a target), the same rows as JSON in ``--out``, and each
check's full output in ``<out stem>_logs/`` (an earlier run's report and logs there are
renamed with their time, never overwritten). The data are random (CIFAR-10's on-disk layout and a
tree of JPEGs, written into the scratch folder): speed does not depend on the pixels, and nothing
is downloaded.
With ``--smoke`` every check runs at toy sizes on the CPU: the verdicts then say nothing about
a GPU; the run only shows that every check still works.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

CHECKOUT = Path(__file__).resolve().parent.parent
BENCHMARKS = CHECKOUT / "benchmarks"

#: The README's targets ("GPU check" section): name -> (what the figure is, comparison, value).
TARGETS = {
    "resnet-20": ("bandistill images/s at batch 128", ">=", 40_000),  # stock PyTorch + CUDA graphs: 44k on an H100
    "densenet-bc-100-12": ("bandistill images/s at batch 128", ">=", 8_000),
    "wrn-28-10": ("bandistill MFU (bf16 matmul peak)", ">=", 0.35),
    "dump": ("dump / pure inference", ">=", 0.9),
    "bane": ("merged BANE / PyTorch", ">=", 1.5),
    "cached_step": ("cached step / plain step", "<=", 1.05),
    "stream": ("streaming source / torchvision DataLoader", ">=", 1.0),  # "at least as fast"
}
#: The models of the throughput rows, and the toy model standing in for each with --smoke.
MODELS = {"resnet-20": "resnet-8", "densenet-bc-100-12": "densenet-bc-10-4", "wrn-28-10": "wrn-10-1"}
DEFAULT_BUDGET_S = 480.0
#: A check is not started with less than this left of the budget (seconds).
MIN_START_S = {"gpu": 20.0, "smoke": 5.0}

HOLDS, SHORT, MEASURED = "holds", "falls short", "measured"


def could_not(why: str) -> str:
    return f"could not run ({why})"


# -- the package, from a plain checkout ----------------------------------------------------------
def package_root(into: Path) -> Path:
    """A folder with ``bandistill/`` laid out as installed: the checkout's package, ``cli`` and ``cache`` inside."""
    pkg = into / "bandistill"
    pkg.mkdir(parents=True)
    entries = [(p, p.name) for p in (CHECKOUT / "bandistill").iterdir() if p.name != "__pycache__"]
    entries += [(CHECKOUT / "cli", "cli"), (CHECKOUT / "cache", "cache")]
    for src, name in entries:
        try:
            (pkg / name).symlink_to(src, target_is_directory=src.is_dir())
        except OSError:  # no symlinks here: copy instead
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, pkg / name)
    return into


def fake_cifar10(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Random images in torchvision's CIFAR-10 layout (no download; throughput does not depend on pixels)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(n: int) -> dict:
        return {"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                "labels": [int(v) for v in rng.integers(0, 10, size=n)]}

    sizes = [n_train // 5 + (i < n_train % 5) for i in range(5)]
    for i, n in enumerate(sizes, 1):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(n)))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(n_test)))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}))
    return root


# -- running one check ---------------------------------------------------------------------------
@dataclass
class Ran:
    """What a check's subprocess left: exit code (None: killed at its timeout), output, seconds."""

    code: int | None
    stdout: str
    stderr: str
    seconds: float
    timeout: float

    def why(self) -> str:
        """Why the check gave no figures, in one line."""
        if self.code is None:
            return f"timed out after {self.timeout:.0f} s"
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        ours = [line for line in lines if line.startswith("error:")]
        last = ours[-1] if ours else (lines[-1] if lines else "no output")
        return f"exit {self.code}: {last[:300]}"

    def json(self) -> Any:
        """The JSON object the check printed on stdout (after any other lines)."""
        text = self.stdout.strip()
        try:
            return json.loads(text)
        except ValueError:
            start = text.find("\n{")
            return json.loads(text[start + 1 :] if start >= 0 else text[text.index("{"):])


def run(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: float, log: Path) -> Ran:
    """Run ``cmd`` in its own process group; past ``timeout`` the whole group is killed."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the check and anything it started (torchrun's workers)
        out, err = proc.communicate()
        code = None
    ran = Ran(code, out, err, time.perf_counter() - t0, timeout)
    log.write_text(f"$ {' '.join(cmd)}\n# exit {code} after {ran.seconds:.1f} s\n\n--- stdout\n{out}\n--- stderr\n{err}")
    return ran


def row(check: str, what: str, figure: str, target: str, verdict: str, **extra: Any) -> dict[str, Any]:
    return {"check": check, "what": what, "figure": figure, "target": target, "verdict": verdict, **extra}


def judge(value: float, op: str, bound: float) -> str:
    return HOLDS if (value >= bound if op == ">=" else value <= bound) else SHORT


def target_text(key: str) -> str:
    what, op, bound = TARGETS[key]
    shown = f"{100 * bound:.0f}%" if "MFU" in what else (f"{bound:,}" if bound >= 100 else f"{bound}x")
    return f"{what} {op} {shown}"


@dataclass
class Context:
    smoke: bool
    work: Path
    logs: Path
    env: dict[str, str]
    data: Path = field(default=Path())  # CIFAR-10's layout, random images
    photos: Path = field(default=Path())  # an ImageFolder tree of JPEGs of varying sizes
    env_info: dict[str, Any] = field(default_factory=dict)  # what the env check found

    def python(self, *args: str | Path) -> list[str]:
        return [sys.executable, *map(str, args)]


@dataclass
class Check:
    """One subprocess: ``command(ctx)`` -> argv; ``rows(ctx, ran)`` -> its rows (may raise: then one failure row)."""

    name: str
    what: str
    command: Callable[[Context], list[str]]
    rows: Callable[[Context, Ran], list[dict[str, Any]]]
    timeout: float  # on the GPU; --smoke uses SMOKE_TIMEOUT_S
    needs: Callable[[Context], str | None] = lambda ctx: None  # a reason it cannot run here, or None


SMOKE_TIMEOUT_S = 120.0

ENV_SCRIPT = r"""
import json, platform
from importlib import metadata
out = {"python": platform.python_version()}
for name, dist in (("torch", "torch"), ("torchvision", "torchvision"), ("numpy", "numpy"), ("h5py", "h5py"),
                   ("onnx", "onnx"), ("onnxscript", "onnxscript"), ("onnxruntime", "onnxruntime-gpu"),
                   ("click", "click"), ("rich", "rich"), ("sklearn", "scikit-learn"), ("pytest", "pytest")):
    for d in (dist, "onnxruntime") if name == "onnxruntime" else (dist,):
        try:
            out[name] = metadata.version(d)
            break
        except metadata.PackageNotFoundError:
            out[name] = "missing"
import torch
out["torch"] = torch.__version__
out["cuda"] = torch.cuda.is_available()
out["torch_cuda"] = torch.version.cuda
if out["cuda"]:
    p = torch.cuda.get_device_properties(0)
    out["device"] = f"{p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}"
    out["cudnn"] = torch.backends.cudnn.version()
try:
    import onnxruntime
    out["ort_providers"] = onnxruntime.get_available_providers()
except Exception as exc:
    out["ort_providers"] = "onnxruntime does not import: " + type(exc).__name__
import bandistill, bandistill.cli, bandistill.cache
out["bandistill"] = bandistill.__file__
print(json.dumps(out))
"""


def env_rows(ctx: Context, ran: Ran) -> list[dict[str, Any]]:
    info = ran.json()
    ctx.env_info = info
    arranged = str(ctx.work) in info["bandistill"]
    device = info.get("device", "no CUDA device")
    figure = (f"torch {info['torch']} (CUDA {info['torch_cuda']}), {device}; onnxruntime {info['onnxruntime']} "
              f"{info.get('ort_providers', [])}; bandistill from {'the checkout (arranged)' if arranged else info['bandistill']}")
    ok = arranged and (ctx.smoke or info["cuda"])
    return [row("env", "environment", figure, "a CUDA GPU; bandistill from this checkout",
                HOLDS if ok else SHORT, info=info)]


def gpu_test_files() -> list[Path]:
    """The test files that hold tests marked ``gpu`` (collecting only them keeps the check quick)."""
    return sorted(p for p in (CHECKOUT / "tests").glob("test_*.py") if "pytest.mark.gpu" in p.read_text())


def gpu_tests_command(ctx: Context) -> list[str]:
    return ctx.python("-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "--continue-on-collection-errors",
                      "-o", "addopts=", f"--junitxml={ctx.work / 'gpu_tests.xml'}", *gpu_test_files())


def gpu_tests_rows(ctx: Context, ran: Ran) -> list[dict[str, Any]]:
    xml = ctx.work / "gpu_tests.xml"
    if not xml.exists():
        raise RuntimeError(ran.why())
    rows = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = f"{Path(case.get('file') or case.get('classname', '').replace('.', '/')).stem}::{case.get('name')}"
        seconds = float(case.get("time") or 0)
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        if bad is not None:
            message = (bad.get("message") or bad.text or "").strip().splitlines()
            rows.append(row("gpu_tests", name, "failed", "passes", SHORT, detail=message[0][:300] if message else ""))
        elif skipped is not None:
            rows.append(row("gpu_tests", name, "skipped", "passes", could_not(skipped.get("message", "skipped")[:200])))
        else:
            rows.append(row("gpu_tests", name, f"passed in {seconds:.1f} s", "passes", HOLDS))
    if not rows:
        raise RuntimeError(f"no test marked gpu was collected ({ran.why()})")
    return rows


def throughput_check(model: str) -> Check:
    def command(ctx: Context) -> list[str]:
        script = BENCHMARKS / "train_throughput.py"
        if ctx.smoke:
            return ctx.python(script, "--models", MODELS[model], "--batch-size", "4", "--steps", "1", "--rounds", "1",
                              "--warmup", "1", "--peak-seconds", "0.1", "--device", "cpu", "--json")
        return ctx.python(script, "--models", model, "--batch-size", "128", "--json")

    def rows(ctx: Context, ran: Ran) -> list[dict[str, Any]]:
        result = ran.json()
        (r,) = result["models"]
        ips, mfu = r["images_per_s"], r["mfu"]
        others = [f"stock eager {ips['stock']:,.0f} ({100 * mfu['stock']:.1f}%)"]
        if "stock_graph" in ips:
            others.append(f"stock CUDA graph {ips['stock_graph']:,.0f} ({100 * mfu['stock_graph']:.1f}%), "
                          f"{r['bandistill_over_stock_graph']:.2f}x it")
        else:
            others.append("stock CUDA graph: CUDA only")
        figure = (f"{ips['bandistill']:,.0f} img/s, MFU {100 * mfu['bandistill']:.1f}% "
                  f"({r['compile']}); {'; '.join(others)}")
        _, op, bound = TARGETS[model]
        value = mfu["bandistill"] if model == "wrn-28-10" else ips["bandistill"]
        return [row("train_throughput", f"train {r['model']}, batch {result['batch_size']}", figure,
                    target_text(model), judge(value, op, bound), result=r, device=result["device"])]

    return Check(f"train_throughput:{model}", f"train {model}", command, rows, timeout=150)


def step_cost_command(ctx: Context) -> list[str]:
    script = BENCHMARKS / "step_cost.py"
    if ctx.smoke:
        return ctx.python(script, "--dataset", "digits", "--model", "resnet-8", "--batch-size", "32", "--views", "2",
                          "--epochs", "2", "--steps", "2", "--device", "cpu", "--json")
    return ctx.python(script, "--dataset", "synthetic32", "--model", "resnet-20", "--batch-size", "128",
                      "--steps", "60", "--json")


def step_cost_rows(ctx: Context, ran: Ran) -> list[dict[str, Any]]:
    r = ran.json()
    cached = {k[: -len("_over_plain")]: v for k, v in r.items()
              if k.endswith("_over_plain") and not k.endswith("_with_epoch_over_plain") and k != "live_over_plain"}
    worst = max(cached, key=cached.get)
    figure = f"{cached[worst]:.3f}x (worst: {worst}; " + ", ".join(f"{k} {v:.2f}" for k, v in cached.items()) + ")"
    what = f"step cost, {r['model']} on {r['dataset']}, batch {r['batch_size']}, {r['device']}"
    _, op, bound = TARGETS["cached_step"]
    return [row("step_cost", f"{what}: cached / plain", figure, target_text("cached_step"),
                judge(cached[worst], op, bound), result=r),
            row("step_cost", f"{what}: live teacher / plain", f"{r['live_over_plain']:.3f}x", "(no target)", MEASURED)]


def dump_command(ctx: Context) -> list[str]:
    script = BENCHMARKS / "dump_throughput.py"
    common = ["--dataset", "cifar10", "--data-dir", str(ctx.data), "--json"]
    if ctx.smoke:
        return ctx.python(script, "--model", "resnet-8", "--views", "1", "--rounds", "1", "--batch-size", "32",
                          "--device", "cpu", *common)
    return ctx.python(script, "--model", "resnet-20", "--views", "8", "--rounds", "3", "--batch-size", "512", *common)


def dump_rows(ctx: Context, ran: Ran) -> list[dict[str, Any]]:
    r = ran.json()
    ips = r["images_per_s"]
    figure = (f"{r['dump_over_inference']:.3f}x (dump {ips['dump']:,.0f} img/s, inference {ips['inference']:,.0f}; "
              f"{r['samples']} images x {r['views']} views)")
    _, op, bound = TARGETS["dump"]
    return [row("dump_throughput", f"dump-logits {r['model']}, batch {r['batch_size']}, {r['device']}", figure,
                target_text("dump"), judge(r["dump_over_inference"], op, bound), result=r)]


def ensemble_command(ctx: Context) -> list[str]:
    """The ban check's generations as members when it finished (no second export), else fresh demo members."""
    script = BENCHMARKS / "ensemble_throughput.py"
    gens = sorted((ctx.work / "ban" / "onnx").glob("gen*.onnx"))
    members = ["--onnx", *map(str, gens), "--data-dir", str(ctx.data)] if len(gens) > 1 else \
        ["--members", "2" if ctx.smoke else "3", "--model", "resnet-8" if ctx.smoke else "resnet-20"]
    if ctx.smoke:
        return ctx.python(script, "--provider", "cpu", *members, "--images", "64", "--batch-size", "32",
                          "--repeats", "1", "--threads", "1", "--json")
    return ctx.python(script, "--provider", "cuda", *members, "--images", "4096", "--batch-size", "256",
                      "--repeats", "5", "--json")


def ensemble_rows(ctx: Context, ran: Ran) -> list[dict[str, Any]]:
    if ran.code == 2:  # e.g. onnxruntime's CUDA provider cannot start: its one line says why
        return [row("ensemble_throughput", "merged BANE on onnxruntime CUDA (IO binding, CUDA graph)", "",
                    target_text("bane"), could_not(ran.why()))]
    r = ran.json()
    ways = {w["way"]: w for w in r["results"]}
    _, op, bound = TARGETS["bane"]
    out = []
    for way, label in (("merged", "IO binding"), ("merged_graph", "CUDA graph")):
        what = f"merged BANE of {len(r['members'])} {'+'.join(sorted(set(r['models'])))}, {label}, onnxruntime {r['provider']}"
        w = ways.get(way)
        if w is None or w["speed_vs_pytorch"] is None:
            why = r.get("note") or ("onnxruntime CUDA graphs need the CUDA provider" if way == "merged_graph"
                                    else "no PyTorch reference")
            out.append(row("ensemble_throughput", what, "", target_text("bane"), could_not(why)))
            continue
        figure = (f"{w['speed_vs_pytorch']:.2f}x PyTorch ({w['images_per_s']:,.0f} img/s; "
                  f"{w['speed_vs_separate']:.2f}x separate sessions)")
        out.append(row("ensemble_throughput", what, figure, target_text("bane"),
                       judge(w["speed_vs_pytorch"], op, bound), result=w))
    return out


def ban_command(ctx: Context) -> list[str]:
    args = ["-m", "bandistill", "ban", "--dataset", "cifar10", "--data-dir", str(ctx.data),
            "--out", str(ctx.work / "ban"), "--json"]
    if ctx.smoke:
        return ctx.python(*args, "--model", "resnet-8", "--generations", "1", "--epochs", "1", "--batch-size", "32",
                          "--device", "cpu")
    return ctx.python(*args, "--model", "resnet-20", "--generations", "2", "--epochs", "2", "--batch-size", "128",
                      "--device", "cuda")


def ban_rows(ctx: Context, ran: Ran, folder: str = "ban", label: str = "ban end to end") -> list[dict[str, Any]]:
    if ran.code != 0:
        raise RuntimeError(ran.why())
    stages = json.loads((ctx.work / folder / "manifest.json").read_text())["stages"]
    want = "cpu" if ctx.smoke else "cuda"
    trained = {k: v["result"] for k, v in stages.items() if k.endswith(".train")}
    parity = {k: v["result"]["parity"] for k, v in stages.items() if k.endswith(".export")}
    on_device = all(str(t.get("device", "")).startswith(want) for t in trained.values())
    within = all(p["max_abs_logit_diff"] <= p["tolerance"] for p in parity.values())
    worst = max(parity.values(), key=lambda p: p["max_abs_logit_diff"] / p["tolerance"])
    figure = (f"{len(stages)} stages in {ran.seconds:.0f} s; trained on "
              f"{', '.join(sorted({str(t.get('device')) + ' (' + str(t.get('compile')) + ')' for t in trained.values()}))}; "
              f"export parity max |logit diff| {worst['max_abs_logit_diff']:.1e} (tolerance {worst['tolerance']:.1e}, "
              f"argmax agreement {worst['argmax_agreement']:.3f})")
    born = len(trained) - 1
    return [row("ban", f"{label} ({trained['gen0.train']['model']}, {born} born-again generation{'s' * (born != 1)})",
                figure, f"finishes on {want}; export parity within tolerance", HOLDS if on_device and within else SHORT)]


# -- the streaming source (photos on disk, --image-size) -----------------------------------------
def jpeg_tree(root: Path, classes: int, per_class: int, sizes: tuple[int, int], seed: int = 0) -> Path:
    """train/ and val/ JPEGs of ``classes`` classes, each its own size (``sizes`` px a side), one in three greyscale."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", max(2, per_class // 5))):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = (int(v) for v in rng.integers(*sizes, size=2))
                arr = rng.integers(0, 80, size=(h, w, 3), dtype=np.uint8)
                arr[..., c % 3] += 150
                img = Image.fromarray(arr)
                (img.convert("L") if i % 3 == 1 else img).save(d / f"{i}.JPEG", quality=90)
    return root


STREAM_IMAGE_SIZE = {"gpu": 64, "smoke": 16}


def stream_ban_command(ctx: Context) -> list[str]:
    size = STREAM_IMAGE_SIZE["smoke" if ctx.smoke else "gpu"]
    args = ["-m", "bandistill", "ban", "--dataset", "imagefolder", "--data-dir", str(ctx.photos), "--image-size",
            str(size), "--model", "resnet-8", "--generations", "1", "--epochs", "1", "--out",
            str(ctx.work / "ban_stream"), "--json"]
    return ctx.python(*args, "--batch-size", "16" if ctx.smoke else "64", "--device", "cpu" if ctx.smoke else "cuda")


def stream_throughput_command(ctx: Context) -> list[str]:
    script = BENCHMARKS / "data_throughput.py"
    size = STREAM_IMAGE_SIZE["smoke" if ctx.smoke else "gpu"]
    sizes = ["--workers", "1", "--batch-size", "8", "--batches", "2", "--rounds", "1"] if ctx.smoke else \
        ["--workers", "8", "--batch-size", "64", "--batches", "10", "--rounds", "2"]
    return ctx.python(script, "--data-dir", ctx.photos, "--image-size", str(size), "--copies", "1", *sizes, "--json")


def stream_throughput_rows(ctx: Context, ran: Ran) -> list[dict[str, Any]]:
    r = ran.json()
    (tree,) = r["trees"]
    figure = (f"{tree['stream_over_stock']:.2f}x (stream {tree['stream']['images_per_s']:,.0f} img/s, torchvision "
              f"DataLoader {tree['stock']['images_per_s']:,.0f}; {r['workers']} workers, {r['image_size']} px)")
    _, op, bound = TARGETS["stream"]
    return [row("stream", "streaming source vs torchvision ImageFolder + RandomResizedCrop DataLoader", figure,
                target_text("stream"), judge(tree["stream_over_stock"], op, bound), result=r)]


CHECKS = [
    Check("env", "environment", lambda ctx: ctx.python("-c", ENV_SCRIPT), env_rows, timeout=90),
    Check("gpu_tests", "tests marked gpu", gpu_tests_command, gpu_tests_rows, timeout=240),
    *(throughput_check(m) for m in MODELS),
    Check("step_cost", "step cost", step_cost_command, step_cost_rows, timeout=150),
    Check("dump_throughput", "dump throughput", dump_command, dump_rows, timeout=120),
    Check("ban", "ban end to end", ban_command, ban_rows, timeout=180),
    Check("ensemble_throughput", "BANE throughput", ensemble_command, ensemble_rows, timeout=150),
    Check("stream_ban", "ban end to end on the streaming source", stream_ban_command,
          lambda ctx, ran: ban_rows(ctx, ran, "ban_stream", "ban end to end, photos streamed (--image-size)"),
          timeout=150),
    Check("stream_throughput", "streaming source throughput", stream_throughput_command, stream_throughput_rows,
          timeout=120),
]


# -- the whole run -------------------------------------------------------------------------------
def run_one(ctx: Context, check: Check, left: float) -> list[dict[str, Any]]:
    """One check's rows: run it with what is left of the budget; a failure or hang becomes its row."""
    reason = check.needs(ctx)
    if reason is None and left < MIN_START_S["smoke" if ctx.smoke else "gpu"]:
        reason = f"budget spent: {max(left, 0):.0f} s left"
    if reason is not None:
        print(f"  {check.name}: {could_not(reason)}", file=sys.stderr, flush=True)
        return [row(check.name, check.what, "", "", could_not(reason))]
    timeout = min(SMOKE_TIMEOUT_S if ctx.smoke else check.timeout, left)
    print(f"  {check.name} (timeout {timeout:.0f} s) ...", file=sys.stderr, flush=True)
    ran = run(check.command(ctx), cwd=ctx.work, env=ctx.env, timeout=timeout,
              log=ctx.logs / f"{check.name.replace(':', '_')}.log")
    try:
        if ran.code is None:
            raise RuntimeError(ran.why())
        got = check.rows(ctx, ran)
    except Exception as exc:  # a check that failed: its row says why; the others go on
        why = str(exc) if isinstance(exc, RuntimeError) else (ran.why() if ran.code else f"{type(exc).__name__}: {exc}")
        got = [row(check.name, check.what, "", "", could_not(why))]
    for r in got:
        r["check"], r["seconds"] = check.name, round(ran.seconds, 1)
    return got


def run_checks(ctx: Context, budget: float, only: set[str] | None = None) -> list[dict[str, Any]]:
    """Every check's rows, in :data:`CHECKS` order.

    On the GPU one check at a time (timings must not overlap), stopping after ``env`` if torch
    sees no CUDA device. With ``--smoke`` two at a time (only that they run matters), ``ban``
    before ``ensemble_throughput``, which takes ban's generations as its members.
    """
    start = time.perf_counter()
    chosen = [c for c in CHECKS if not only or c.name == "env" or c.name in only or c.name.split(":")[0] in only]

    def chain(checks: list[Check]) -> list[list[dict[str, Any]]]:
        return [run_one(ctx, c, budget - (time.perf_counter() - start)) for c in checks]

    if not ctx.smoke:
        rows = chain(chosen[:1])
        if not ctx.env_info.get("cuda"):
            print("error: " + ("torch sees no CUDA device here; run with --smoke for the CPU toy run" if ctx.env_info
                               else f"the environment check failed ({rows[0][0]['verdict']})"), file=sys.stderr)
            return rows[0]
        rows += chain(chosen[1:])
        return [r for got in rows for r in got]
    from concurrent.futures import ThreadPoolExecutor

    chains: list[list[Check]] = []
    for c in chosen:
        if c.name == "ensemble_throughput" and chains and chains[-1][-1].name == "ban":
            chains[-1].append(c)
        else:
            chains.append([c])
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = list(pool.map(chain, chains))
    return [r for got in done for rows in got for r in rows]


def set_aside(out: Path, logs: Path) -> list[Path]:
    """Move an earlier run's report and logs to ``<stem>.<its time><suffix>`` and ``<logs>.<its time>``:
    GPU time is rare, so a second run with the same ``--out`` must not overwrite the first one's
    figures, nor leave its logs mixed with the new ones. Returns where they went."""
    def aside(tag: str) -> dict[Path, Path]:
        return {out: out.with_name(f"{out.stem}.{tag}{out.suffix}"), logs: logs.with_name(f"{logs.name}.{tag}")}

    earlier = [p for p in (out, logs) if p.exists()]
    if not earlier:
        return []
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(max(p.stat().st_mtime for p in earlier)))
    tag, n = stamp, 1
    while any(d.exists() for d in aside(tag).values()):
        n += 1
        tag = f"{stamp}-{n}"
    dests = aside(tag)
    for p in earlier:
        os.replace(p, dests[p])
        print(f"moved the earlier {p.name} to {dests[p].name}", file=sys.stderr)
    return [dests[p] for p in earlier]


def print_table(header: list[str], rows: list[dict[str, Any]]) -> None:
    for line in header:
        print(line)
    print()
    print("| what | figure | target | verdict |")
    print("|---|---|---|---|")
    for r in rows:
        cells = (r["what"], r["figure"], r["target"], r["verdict"])
        print("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=None,
                    help=f"seconds for all checks together (default {DEFAULT_BUDGET_S:.0f}; --smoke: 600)")
    ap.add_argument("--smoke", action="store_true", help="every check at toy sizes on the CPU")
    ap.add_argument("--out", default="gpu_check.json",
                    help="the JSON report (logs go to <stem>_logs/ beside it; an earlier report "
                    "and its logs there are moved aside, never overwritten)")
    ap.add_argument("--only", default="", help="comma-separated check names (e.g. train_throughput,ban); env always runs")
    args = ap.parse_args(argv)
    budget = args.budget if args.budget is not None else (600.0 if args.smoke else DEFAULT_BUDGET_S)
    out = Path(args.out).resolve()
    logs = out.parent / f"{out.stem}_logs"
    set_aside(out, logs)
    logs.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        root = package_root(work / "pkg")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])]),
               "PYTHONDONTWRITEBYTECODE": "1", "BANDISTILL_CACHE_DIR": str(work / "decoded")}
        if args.smoke:
            env.setdefault("OMP_NUM_THREADS", "1")
        ctx = Context(smoke=args.smoke, work=work, logs=logs, env=env)
        ctx.data = fake_cifar10(work / "data", *((64, 16) if args.smoke else (10_000, 1_000)))
        ctx.photos = jpeg_tree(work / "photos", *((3, 8, (20, 60)) if args.smoke else (10, 200, (48, 320))))
        only = {s.strip() for s in args.only.split(",") if s.strip()} or None
        rows = run_checks(ctx, budget, only)
    env_info = next((r.get("info", {}) for r in rows if r["check"] == "env"), {})
    header = [
        f"bandistill GPU check{' --smoke (toy sizes on the CPU: the verdicts say nothing about a GPU)' if args.smoke else ''}: "
        f"{len(rows)} rows in {time.perf_counter() - t0:.0f} s of a {budget:.0f} s budget",
        f"torch {env_info.get('torch', '?')} (CUDA {env_info.get('torch_cuda')}; the package takes torch >= 2.4, "
        f"CI pins 2.14.1: what an older torch lacks shows as 'could not run'), "
        f"device: {env_info.get('device', 'CPU only')}, onnxruntime {env_info.get('onnxruntime', '?')}",
    ]
    print_table(header, rows)
    report = {"smoke": args.smoke, "budget_s": budget, "seconds": time.perf_counter() - t0, "header": header,
              "checkout": str(CHECKOUT), "logs": str(logs), "rows": rows}
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {out} (each check's output in {logs})")
    return 0 if env_info.get("cuda") or args.smoke else 2


if __name__ == "__main__":
    sys.exit(main())
