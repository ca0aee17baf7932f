"""``bandistill ban``: a whole born-again run as resumable stages recorded in a manifest.

For each seed: generation 0 on labels, then for k = 1..N dump generation k-1's logits and
train generation k from that cache, export every generation to ONNX, evaluate every
generation and the ensembles on onnxruntime, and merge them into one ``bane.onnx``. Each
stage calls the same library function as its stage command; the manifest
(:mod:`bandistill.manifest`) lets a re-run skip finished stages, resume an interrupted
one, and re-run from the first stage whose options changed.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable


from bandistill.cache.schema import partial_path
from bandistill.checkpoint import atomic_write, load_checkpoint
from bandistill.data import load_dataset
from bandistill.errors import UserError
from bandistill.manifest import Manifest
from bandistill.models import build_model, count_parameters, validate_model_name
from bandistill.train import MODEL_FILE, TrainConfig, train

EVALUATION_FILE = "evaluation.json"
#: Options that never change a stage's result (where things run, how much memory they may use).
NON_RESULT_KEYS = ("device", "data_dir", "download", "cache_memory_budget_gb", "teacher_logits", "transfer_ends_from")


@dataclass
class BanOptions:
    """Everything that defines a born-again experiment."""

    model: str
    dataset: str
    generations: int = 3
    views: int = 4
    student_model: str | None = None
    transfer_ends: bool = False
    data_dir: str | None = None
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float | None = None
    schedule: str = "step"
    loss: str = "ban+l"
    temperature: float = 1.0
    alpha: float = 0.5
    seed: int = 0
    repeats: int = 1
    dtype: str = "float16"
    device: str = "auto"
    opset: int | None = None

    def validate(self) -> "BanOptions":
        self.model = validate_model_name(self.model)
        self.student_model = validate_model_name(self.student_model) if self.student_model else None
        if self.generations < 1:
            raise UserError(f"--generations must be at least 1, got {self.generations}")
        if self.views < 1:
            raise UserError(f"--views must be at least 1, got {self.views}")
        if self.repeats < 1:
            raise UserError(f"--repeats must be at least 1, got {self.repeats}")
        if self.epochs < 1:
            raise UserError(f"--epochs must be a positive integer, got {self.epochs}")
        if self.transfer_ends and not self.student_model:
            raise UserError("--transfer-ends needs --student-model (it copies the teacher's ends into another architecture)")
        # Every option a later stage checks is checked here, before any stage runs: a re-run with a
        # bad value must not first clear the finished stages that value would have re-run.
        from bandistill.cache.schema import DTYPES
        from bandistill.onnx.meta import check_opset
        from bandistill.losses import make_loss

        for model in {self.model, self.student_model or self.model}:
            TrainConfig(model=model, dataset=self.dataset, epochs=self.epochs, batch_size=self.batch_size,
                        lr=self.lr, weight_decay=self.weight_decay, schedule=self.schedule).validate()
        make_loss(self.loss, temperature=self.temperature, alpha=self.alpha)
        if self.dtype not in DTYPES:
            raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        check_opset(self.opset)
        return self

    def chain_seeds(self) -> list[int]:
        return [self.seed + 1000 * r for r in range(self.repeats)]

    def chain_dir(self, out: Path, seed: int) -> Path:
        """One seed writes straight into ``out``; several write into ``out/seed-<s>/``."""
        return out if self.repeats == 1 else out / f"seed-{seed}"


class Chain:
    """The stages of one seed's chain of generations, in one folder with one manifest."""

    def __init__(self, opts: BanOptions, root: Path, seed: int, log: Callable[[str], None], progress: bool):
        self.opts, self.root, self.seed, self.log, self.progress = opts, root, seed, log, progress
        self.root.mkdir(parents=True, exist_ok=True)
        self.manifest = Manifest(root)
        self.trained: list[str] = []  # stages that did work in this invocation

    def stage(self, name: str, signature: dict[str, Any], outputs: list[Path], action: Callable[[], Any],
              cleanup: list[Path]) -> Any:
        """Skip, resume or (re-)run one stage; ``cleanup`` is removed when its inputs changed."""
        m = self.manifest
        if m.is_done(name, signature):
            self.log(f"{self.root.name}/{name}: up to date, skipped")
            return m.result(name)
        rec, changes = m.record(name), m.changes(name, signature)
        if rec and changes:
            self.log(f"{self.root.name}/{name}: {'; '.join(changes[:3])}: re-running it and every stage after it")
            for path in cleanup:
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        elif rec:
            self.log(f"{self.root.name}/{name}: resuming (interrupted or its output is missing)")
        else:
            self.log(f"{self.root.name}/{name}: running")
        m.start(name, signature)
        result = action()
        m.finish(name, signature, outputs, result)
        self.trained.append(name)
        return result

    # -- the stages ------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from bandistill.dump import dump_logits
        from bandistill.onnx.export import export_checkpoint

        o = self.opts
        self.dataset = load_dataset(o.dataset, o.data_dir)  # once, for signatures, export parity and evaluation
        fingerprint = self.dataset.fingerprint
        checkpoints, onnx_files = [], []
        for k in range(o.generations + 1):
            gen_dir = self.root / f"gen{k}"
            ckpt = gen_dir / MODEL_FILE
            config = TrainConfig(
                model=o.model if k == 0 or not o.student_model else o.student_model,
                dataset=o.dataset, data_dir=o.data_dir, epochs=o.epochs, batch_size=o.batch_size, lr=o.lr,
                weight_decay=o.weight_decay, schedule=o.schedule, seed=self.seed + k, device=o.device,
            )
            inputs: dict[str, Any] = {"dataset_fingerprint": fingerprint}
            if k > 0:
                cache = self.root / "cache" / f"gen{k - 1}.h5"
                teacher_ckpt = checkpoints[-1]
                dump_sig = {"teacher": self.manifest.digest(f"gen{k - 1}.train", teacher_ckpt), "views": o.views,
                            "dtype": o.dtype, "seed": self.seed + k - 1, "dataset_fingerprint": fingerprint}
                self.stage(
                    f"gen{k - 1}.dump", dump_sig, [cache],
                    lambda: _summary(dump_logits(teacher_ckpt, o.dataset, cache, views=o.views, data_dir=o.data_dir,
                                                 seed=self.seed + k - 1, dtype=o.dtype, device=o.device,
                                                 overwrite=False, progress=self.progress, log=self.log)),
                    cleanup=[cache, Path(partial_path(cache))],
                )
                config.teacher_logits = str(cache)
                config.loss, config.temperature, config.alpha = o.loss, o.temperature, o.alpha
                inputs["cache"] = self.manifest.digest(f"gen{k - 1}.dump", cache)
                if o.transfer_ends:
                    config.transfer_ends_from = str(checkpoints[0])
                    inputs["transfer_ends_from"] = self.manifest.digest("gen0.train", checkpoints[0])
            config.validate()
            train_sig = {**{k2: v for k2, v in config.to_dict().items() if k2 not in NON_RESULT_KEYS}, **inputs}
            self.stage(f"gen{k}.train", train_sig, [ckpt],
                       lambda: train(config, gen_dir, resume=True, progress=self.progress), cleanup=[gen_dir])
            checkpoints.append(ckpt)

            onnx_path = self.root / "onnx" / f"gen{k}.onnx"
            export_sig = {"checkpoint": self.manifest.digest(f"gen{k}.train", ckpt), "opset": o.opset}
            self.stage(f"gen{k}.export", export_sig, [onnx_path],
                       lambda: _summary(export_checkpoint(ckpt, onnx_path, opset=o.opset, dataset=self.dataset)), cleanup=[onnx_path])
            onnx_files.append(onnx_path)

        ens_sig = {"members": [self.manifest.digest(f"gen{k}.export", p) for k, p in enumerate(onnx_files)]}
        bane, evaluation = self.root / "bane.onnx", self.root / EVALUATION_FILE
        self.stage("ensemble", ens_sig, [bane, evaluation], lambda: self._ensemble(onnx_files, bane, evaluation),
                   cleanup=[bane, evaluation])
        return json.loads(evaluation.read_text())

    def _ensemble(self, onnx_files: list[Path], bane: Path, evaluation: Path) -> dict[str, Any]:
        from bandistill.onnx.members import member_probabilities
        from bandistill.onnx.merge import save_merged_onnx
        from bandistill.report import generation_metrics

        o, ds = self.opts, self.dataset
        probs = member_probabilities(onnx_files, ds.test_images, provider="auto")
        data = generation_metrics(probs, ds.test_labels.numpy())
        data["network"] = network_label(o)
        data["parameters"] = parameters_of(o, ds.num_classes, ds.in_channels)
        data["seed"] = self.seed
        data["train_reported"] = [load_checkpoint(self.root / f"gen{k}" / MODEL_FILE)["metrics"]["test_accuracy"]
                                  for k in range(len(onnx_files))]
        save_merged_onnx(onnx_files, bane)  # every generation, as `bandistill ensemble --onnx gen*.onnx`
        atomic_write(evaluation, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2)))
        return {"bane": str(bane), "members": len(onnx_files)}


def _summary(result: Any) -> Any:
    """What a stage records in the manifest: its JSON-able summary."""
    return json.loads(json.dumps(result, default=str)) if result is not None else None


def network_label(o: BanOptions) -> str:
    if o.student_model and o.student_model != o.model:
        return f"{o.model} -> {o.student_model}"
    return o.model


def parameters_of(o: BanOptions, num_classes: int, in_channels: int) -> int:
    return count_parameters(build_model(o.student_model or o.model, num_classes, in_channels))


def run_ban(opts: BanOptions, out: str | Path, *, progress: bool = True,
            log: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    """Run (or complete) a born-again experiment in ``out`` and write its report."""
    opts.validate()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a folder")
    _record_options(opts, out)
    worked = []
    for seed in opts.chain_seeds():
        chain = Chain(opts, opts.chain_dir(out, seed), seed, log, progress)
        chain.run()
        worked += chain.trained
    report = build_report(out)
    return {"out": str(out), "stages_run": worked, **report}


def _record_options(opts: BanOptions, out: Path) -> None:
    """Record the experiment's options (the report and `bandistill report` read them back)."""
    path = out / "ban.json"
    out.mkdir(parents=True, exist_ok=True)
    data = asdict(opts)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2)))


def find_evaluations(out: str | Path) -> list[Path]:
    """The evaluation of each seed's chain under ``out`` (one seed: ``out/evaluation.json``)."""
    out = Path(out)
    if (out / EVALUATION_FILE).is_file():
        return [out / EVALUATION_FILE]
    return sorted(out.glob(f"seed-*/{EVALUATION_FILE}"))


def _read_evaluation(path: Path) -> dict[str, Any]:
    """One chain's evaluation.json, or :class:`UserError` when it is damaged (cut short, edited)."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        data = exc
    keys = ("network", "parameters", "seed", "columns", "cells", "test_samples")
    if not isinstance(data, dict) or any(k not in data for k in keys):
        raise UserError(f"{path} is damaged (not a complete evaluation); delete it and rerun the same "
                        "'bandistill ban' command to evaluate the generations again")
    return data


def build_report(out: str | Path) -> dict[str, Any]:
    """Regenerate report.md, report.json and report.png from the evaluations on disk."""
    from bandistill.report import aggregate, markdown, write_report

    out = Path(out)
    if not out.is_dir():
        raise UserError(f"{out} is not a folder; pass the --out of a 'bandistill ban' run")
    paths = find_evaluations(out)
    if not paths:
        raise UserError(f"{out} holds no finished born-again run (no {EVALUATION_FILE}); run 'bandistill ban --out {out}' first")
    chains = [_read_evaluation(p) for p in paths]
    by_network: dict[str, list[dict[str, Any]]] = {}
    for c in chains:
        by_network.setdefault(c["network"], []).append(c)
    rows = [aggregate(name, group[0]["parameters"], group) for name, group in by_network.items()]
    files = write_report(out, rows, extra={"seeds": [c["seed"] for c in chains]})
    return {"rows": rows, "files": files, "markdown": markdown(rows)}
