"""``bandistill ban``: a whole born-again run as resumable stages recorded in a manifest.

For each seed: generation 0 on labels, then for k = 1..N dump generation k-1's logits and
train generation k from that cache, export every generation to ONNX, evaluate every
generation and the ensembles on onnxruntime, and merge them into one ``bane.onnx``. Each
stage calls the same library function as its stage command; the manifest
(:mod:`bandistill.manifest`) lets a re-run skip finished stages and resume an interrupted one.

A re-run never discards finished work unasked. Options it is not given come from the run's
``ban.json``; every option is checked, then the whole run is *planned* (the stages walked
without running them) before anything on disk changes. When the options would redo a
finished stage the run is refused with the list of those stages, unless ``supersede`` is
set: then their outputs are moved under ``<out>/superseded/<time>/`` (never deleted) and
they run again. One process at a time works in a run folder (:mod:`bandistill.lock`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

from bandistill.cache.schema import check_top_k, partial_path
from bandistill.atomic import atomic_write
from bandistill.checkpoint import load_checkpoint
from bandistill.data import ImageDataset, load_dataset
from bandistill.dump import check_dump_options
from bandistill.errors import UserError
from bandistill.launch import run_stage
from bandistill.lock import folder_lock
from bandistill.manifest import CHANGED, DONE, MANIFEST_FILE, NEW, RESUME, Manifest
from bandistill.models import build_model, count_parameters, model_options, validate_model_name
from bandistill.sharded_dump import all_shard_files
from bandistill.train import MODEL_FILE, TrainConfig
from bandistill.data.views import ViewPlan, ViewPolicy, generation0_views_seen

EVALUATION_FILE = "evaluation.json"
OPTIONS_FILE = "ban.json"
#: Where superseded outputs are moved (one folder per re-run that superseded something).
SUPERSEDED_DIR = "superseded"
#: The view plan of every student's cache, chosen from benchmarks/cache_fidelity.py (see the README).
DEFAULT_VIEWS = "epochs"
#: Options that never change a stage's result (where things run, how much memory they may use).
NON_RESULT_KEYS = ("device", "data_dir", "download", "cache_memory_budget_gb", "teacher_logits", "transfer_ends_from")


@dataclass
class BanOptions:
    """Everything that defines a born-again experiment."""

    model: str
    dataset: str
    generations: int = 3
    views: int | str = DEFAULT_VIEWS
    top_k: int = 0
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
    nproc_per_node: int = 1  # >1: train and dump stages run under torchrun (bandistill.launch)

    def validate(self) -> "BanOptions":
        from bandistill.device import resolve_device

        self.model = validate_model_name(self.model)
        self.student_model = validate_model_name(self.student_model) if self.student_model else None
        if self.generations < 1:
            raise UserError(f"--generations must be at least 1, got {self.generations}")
        # "4" (from the command line) and 4 (from Python or an older ban.json) are the same plan
        self.views = int(self.views) if str(self.views).strip().isdigit() else str(self.views).strip().lower()
        try:
            ViewPlan.parse(self.views, ViewPolicy(), epochs=self.epochs)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if self.top_k < 0:
            raise UserError(f"--top-k must be 0 (full rows) or a positive number of classes, got {self.top_k}")
        if self.repeats < 1:
            raise UserError(f"--repeats must be at least 1, got {self.repeats}")
        for seed in (self.seed, self.seed + 1000 * (self.repeats - 1) + self.generations):  # every dump's seed
            check_dump_options(self.views, seed=seed, epochs=self.epochs if self.views == "epochs" else None)
        if self.epochs < 1:
            raise UserError(f"--epochs must be a positive integer, got {self.epochs}")
        if self.nproc_per_node < 1:
            raise UserError(f"--nproc-per-node must be at least 1, got {self.nproc_per_node}")
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
        if self.alpha != 0.5 and self.loss != "kd":
            raise UserError(f"--alpha weighs the soft term of --loss kd only; --loss {self.loss} would ignore it")
        if self.dtype not in DTYPES:
            raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        check_opset(self.opset)
        resolve_device(self.device)  # --device cuda without a GPU: refused here, not after gen0 moved aside
        return self

    def chain_seeds(self) -> list[int]:
        return [self.seed + 1000 * r for r in range(self.repeats)]

    def chain_dir(self, out: Path, seed: int) -> Path:
        """One seed writes straight into ``out``; several write into ``out/seed-<s>/``.

        A folder already laid out by seed (a run with ``--repeats``) keeps that layout.
        """
        seeded = Path(out) / f"seed-{seed}"
        return seeded if self.repeats > 1 or (seeded / MANIFEST_FILE).exists() else Path(out)


def ban_options(out: str | os.PathLike, given: dict[str, Any]) -> BanOptions:
    """The options of a (re-)run: the defaults, then the run's ``ban.json``, then the options ``given``.

    A re-run that leaves an option out keeps the value the run was made with, instead of
    falling back to the default and redoing the stages it shapes.
    """
    names = {f.name for f in fields(BanOptions)}
    unknown = sorted(set(given) - names)
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}")
    saved = read_options(out) or {}
    merged = {**{k: v for k, v in saved.items() if k in names}, **given}
    for required in ("model", "dataset"):
        if not merged.get(required):
            raise UserError(f"--{required} is required (--out {out} holds no {OPTIONS_FILE} to take it from)")
    return BanOptions(**merged)


def read_options(out: str | os.PathLike) -> dict[str, Any] | None:
    """The options recorded in ``out/ban.json``; None when there is none; UserError when it is damaged."""
    path = Path(out) / OPTIONS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = None
    if not isinstance(data, dict):
        raise UserError(f"{path} is damaged (not the options of a run); restore it, or pass every option again "
                        f"after moving it aside")
    return data


class Superseded:
    """``<out>/superseded/<time>/``: where outputs a re-run replaces are moved, never deleted."""

    def __init__(self, out: Path, log: Callable[[str], None]):
        self.out, self.log = Path(out), log
        self.folder: Path | None = None

    def move(self, paths: list[Path], why: str) -> None:
        """Move each existing path to the same place under this re-run's superseded folder."""
        existing = [p for p in paths if p.exists() or p.is_symlink()]
        if not existing:
            return
        if self.folder is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            folder, n = self.out / SUPERSEDED_DIR / stamp, 1
            while folder.exists():
                n += 1
                folder = self.out / SUPERSEDED_DIR / f"{stamp}-{n}"
            folder.mkdir(parents=True)
            self.folder = folder
            # the record of what is being superseded: the options and every chain's manifest
            for record in [self.out / OPTIONS_FILE, self.out / MANIFEST_FILE, *self.out.glob(f"seed-*/{MANIFEST_FILE}")]:
                if record.is_file():
                    dest = folder / record.relative_to(self.out)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(record, dest)
        for p in existing:
            rel = p.relative_to(self.out)
            dest = self.folder / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.exists():  # moved twice in one re-run (a damaged output, then its stage): keep both
                dest = dest.with_name(f"{dest.name}.{time.time_ns()}")
            os.replace(p, dest)
            self.log(f"{why}: moved {rel} to {dest.relative_to(self.out)}")


class Chain:
    """The stages of one seed's chain of generations, in one folder with one manifest.

    With ``planning=True`` :meth:`run` walks the stages without running any and records
    each one's state in ``plan`` (stage -> done/changed/resume/new) and, for the changed
    ones, why (``changed``) and what re-running them would replace (``replaces``).
    """

    def __init__(self, opts: BanOptions, root: Path, seed: int, log: Callable[[str], None], progress: bool, *,
                 dataset: ImageDataset | None = None, planning: bool = False, supersede: bool = False,
                 aside: Superseded | None = None):
        self.opts, self.root, self.seed, self.log, self.progress = opts, root, seed, log, progress
        self.planning, self.supersede = planning, supersede
        self.aside = aside or Superseded(root, log)
        self.dataset = dataset
        if not planning:
            self.root.mkdir(parents=True, exist_ok=True)
        self.manifest = Manifest(root)
        self.trained: list[str] = []  # stages that did work in this invocation
        self.plan: dict[str, str] = {}
        self.changed: dict[str, list[str]] = {}
        self.replaces: dict[str, list[Path]] = {}

    def stage(self, name: str, signature: dict[str, Any], outputs: list[Path], action: Callable[[], Any],
              cleanup: list[Path]) -> Any:
        """Skip, resume or run one stage. A changed one is refused unless superseding (``cleanup`` moved aside)."""
        m = self.manifest
        state = m.status(name, signature)
        where = f"{self.root.name}/{name}"
        if self.planning:
            self.plan[name] = state
            if state == CHANGED:
                self.changed[name] = m.changes(name, signature)
                self.replaces[name] = cleanup
            return None
        if state == DONE:
            self.log(f"{where}: up to date, skipped")
            return m.result(name)
        if state == CHANGED:
            # Planned runs move changed stages aside up front; reaching this means an input was rebuilt
            # with other content than the one this stage was made from.
            changes = m.changes(name, signature)
            if not self.supersede:
                raise UserError(refusal({self.root: {name: changes}}, self.root))
            self.aside.move(cleanup, f"{where} superseded")
            m.forget([name])
            self.log(f"{where}: running again ({'; '.join(changes[:3])})")
        elif state == RESUME:
            damaged = [self.root / rel for rel in m.damaged_outputs(name) if (self.root / rel).exists()]
            if damaged:  # truncated or replaced: keep it, out of the way of the rebuilt one
                self.aside.move(damaged, f"{where}: output damaged or replaced")
            self.log(f"{where}: resuming (interrupted, or its output is missing or damaged)")
        else:
            self.log(f"{where}: running")
        m.start(name, signature)
        result = action()
        m.finish(name, signature, outputs, result)
        self.trained.append(name)
        return result

    def digest(self, stage: str, output: Path) -> str:
        """The content digest a downstream signature records for ``output`` of ``stage``.

        While planning, a stage that will run anew has no digest yet: a placeholder stands in,
        so every recorded stage downstream of it shows as changed.
        """
        if self.planning and (self.plan.get(stage) in (CHANGED, NEW) or
                              (self.manifest.record(stage) or {}).get("status") != "done"):
            return f"<output of {stage}>"
        return self.manifest.digest(stage, output)

    # -- the stages ------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from bandistill.onnx.export import export_checkpoint

        o = self.opts
        if self.dataset is None:  # once, for signatures, export parity and evaluation
            self.dataset = load_dataset(o.dataset, o.data_dir)
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
                dump_sig = {"teacher": self.digest(f"gen{k - 1}.train", teacher_ckpt), "views": o.views,
                            "dtype": o.dtype, "seed": self.seed + k - 1, "dataset_fingerprint": fingerprint,
                            "top_k": o.top_k or None, "epochs": o.epochs if str(o.views) == "epochs" else None}
                dump_args = dict(checkpoint=str(teacher_ckpt), dataset=o.dataset, out=str(cache), views=o.views,
                                 top_k=o.top_k, epochs=dump_sig["epochs"], data_dir=o.data_dir, seed=self.seed + k - 1,
                                 dtype=o.dtype, device=o.device, overwrite=False)
                self.stage(
                    f"gen{k - 1}.dump", dump_sig, [cache],
                    lambda: _summary(run_stage("dump", dump_args, o.nproc_per_node, progress=self.progress,
                                               log=self.log)),
                    cleanup=[cache, Path(partial_path(cache)), *all_shard_files(cache)],
                )
                config.teacher_logits = str(cache)
                config.loss, config.temperature, config.alpha = o.loss, o.temperature, o.alpha
                inputs["cache"] = self.digest(f"gen{k - 1}.dump", cache)
                if o.transfer_ends:
                    config.transfer_ends_from = str(checkpoints[0])
                    inputs["transfer_ends_from"] = self.digest("gen0.train", checkpoints[0])
            config.validate()
            train_sig = {**{k2: v for k2, v in config.to_dict().items() if k2 not in NON_RESULT_KEYS}, **inputs}
            self.stage(f"gen{k}.train", train_sig, [ckpt],
                       lambda: run_stage("train", {"config": config.to_dict(), "out": str(gen_dir), "resume": True},
                                         o.nproc_per_node, progress=self.progress), cleanup=[gen_dir])
            checkpoints.append(ckpt)

            onnx_path = self.root / "onnx" / f"gen{k}.onnx"
            export_sig = {"checkpoint": self.digest(f"gen{k}.train", ckpt), "opset": o.opset}
            self.stage(f"gen{k}.export", export_sig, [onnx_path],
                       lambda: _summary(export_checkpoint(ckpt, onnx_path, opset=o.opset, dataset=self.dataset)), cleanup=[onnx_path])
            onnx_files.append(onnx_path)

        ens_sig = {"members": [self.digest(f"gen{k}.export", p) for k, p in enumerate(onnx_files)]}
        bane, evaluation = self.root / "bane.onnx", self.root / EVALUATION_FILE
        self.stage("ensemble", ens_sig, [bane, evaluation], lambda: self._ensemble(onnx_files, bane, evaluation),
                   cleanup=[bane, evaluation])
        return {} if self.planning else json.loads(evaluation.read_text())

    def _ensemble(self, onnx_files: list[Path], bane: Path, evaluation: Path) -> dict[str, Any]:
        from bandistill.onnx.members import member_probabilities
        from bandistill.onnx.merge import save_merged_onnx
        from bandistill.report import generation_metrics

        o, ds = self.opts, self.dataset
        probs = member_probabilities(onnx_files, ds.test_images, provider="auto")
        data = generation_metrics(probs, ds.test_labels.numpy())
        data["network"] = network_label(o)
        data["parameters"] = parameters_of(o, ds.num_classes, ds.in_channels, ds.image_shape)
        data["seed"] = self.seed
        data["views_seen"] = views_seen(o, ds.view_policy)
        data["train_reported"] = [load_checkpoint(self.root / f"gen{k}" / MODEL_FILE)["metrics"]["test_accuracy"]
                                  for k in range(len(onnx_files))]
        save_merged_onnx(onnx_files, bane)  # every generation, as `bandistill ensemble --onnx gen*.onnx`
        atomic_write(evaluation, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2)))
        return {"bane": str(bane), "members": len(onnx_files)}


def _summary(result: Any) -> Any:
    """What a stage records in the manifest: its JSON-able summary."""
    return json.loads(json.dumps(result, default=str)) if result is not None else None


def views_seen(o: BanOptions, policy: ViewPolicy) -> dict[str, Any]:
    """Views per training image over a generation: generation 0's fresh draws against the students' cache."""
    plan = ViewPlan.parse(o.views, policy, epochs=o.epochs)
    return {"space": policy.num_distinct, "views": plan.label, "gen0": generation0_views_seen(policy, o.epochs),
            "students": plan.views_seen(policy, o.epochs)}


def views_note(seen: dict[str, Any]) -> str:
    """One sentence: how many views per image the students saw against generation 0."""
    g, s = seen["gen0"], seen["students"]
    return (f"Views per training image over a generation: generation 0 drew {g['draws']:.0f} "
            f"(about {g['distinct']:.1f} distinct of the {seen['space']} the view policy makes); the students, "
            f"from caches of --views {seen['views']}, {s['draws']:.0f} (about {s['distinct']:.1f} distinct).")


def network_label(o: BanOptions) -> str:
    if o.student_model and o.student_model != o.model:
        return f"{o.model} -> {o.student_model}"
    return o.model


def parameters_of(o: BanOptions, num_classes: int, in_channels: int, image_shape=None) -> int:
    name = o.student_model or o.model
    options = model_options(name, image_shape) if image_shape else {}
    return count_parameters(build_model(name, num_classes, in_channels, **options))


def run_ban(opts: BanOptions, out: str | Path, *, supersede: bool = False, progress: bool = True,
            log: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    """Run (or complete) a born-again experiment in ``out`` and write its report.

    Refuses (:class:`UserError`, nothing changed on disk) options that would redo finished
    stages, unless ``supersede``: then their outputs are moved under ``out/superseded/``.
    """
    if not str(out).strip():
        raise UserError("--out is empty; name the experiment folder, e.g. --out runs/demo")
    opts.validate()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; choose a folder")
    dataset = load_dataset(opts.dataset, opts.data_dir)
    check_top_k(opts.top_k, dataset.num_classes)  # needs the class count; before anything is written or moved
    if opts.transfer_ends:
        from bandistill.transfer import check_transferable

        check_transferable(opts.model, opts.student_model, dataset.num_classes, dataset.in_channels,
                           dataset.image_shape)
    with folder_lock(out):
        seeds = opts.chain_seeds()
        moves = _single_seed_moves(opts, out)
        plans = []
        for seed in seeds:
            chain = Chain(opts, moves.get(seed, opts.chain_dir(out, seed)), seed, log, progress, dataset=dataset,
                          planning=True)
            chain.run()
            plans.append(chain)
        changed = {c.root: c.changed for c in plans if c.changed}
        if changed and not supersede:
            raise UserError(refusal(changed, out))
        aside = Superseded(out, log)
        for seed, root in moves.items():  # the single-seed chain becomes seed-<s>/ of a --repeats run
            _move_chain(root, opts.chain_dir(out, seed), log)
        for chain in plans:
            if chain.changed:
                root = opts.chain_dir(out, chain.seed)
                for stage, why in chain.changed.items():
                    aside.move([root / p.relative_to(chain.root) for p in chain.replaces[stage]],
                               f"{stage} superseded ({'; '.join(why[:2])})")
                Manifest(root).forget(list(chain.changed))
        _record_options(opts, out)
        worked = []
        for seed in seeds:
            chain = Chain(opts, opts.chain_dir(out, seed), seed, log, progress, dataset=dataset, supersede=supersede,
                          aside=aside)
            chain.run()
            worked += chain.trained
        report = build_report(out)
    return {"out": str(out), "stages_run": worked, **report}


def refusal(changed: dict[Path, dict[str, list[str]]], out: Path) -> str:
    """One line: which finished stages these options would redo, why, and the way out."""
    stages = [f"{root.name}/{s}" if root != out else s for root, names in changed.items() for s in names]
    reasons = next(iter(next(iter(changed.values())).values()))
    listed = ", ".join(stages[:12]) + (f" and {len(stages) - 12} more" if len(stages) > 12 else "")
    return (f"these options would redo finished stages of {out} ({'; '.join(reasons[:2])}): {listed}; "
            f"rerun with the run's own options (leave them out to keep {OPTIONS_FILE}'s), or pass --supersede "
            f"to redo them (their outputs are moved to {out / SUPERSEDED_DIR}/, nothing is deleted)")


#: Files and folders of one seed's chain (moved together when a single-seed run gains --repeats).
def _chain_entries(root: Path) -> list[Path]:
    names = [MANIFEST_FILE, EVALUATION_FILE, "bane.onnx", "cache", "onnx"]
    return [root / n for n in names if (root / n).exists()] + sorted(p for p in root.glob("gen*") if p.is_dir())


def _single_seed_moves(opts: BanOptions, out: Path) -> dict[int, Path]:
    """A single-seed chain at ``out`` that is the first seed of these --repeats: seed -> where it is now."""
    if opts.repeats == 1 or not (out / MANIFEST_FILE).is_file():
        return {}
    rec = Manifest(out).record("gen0.train") or {}
    if rec.get("signature", {}).get("seed") != opts.seed or (out / f"seed-{opts.seed}").exists():
        return {}
    return {opts.seed: out}


def _move_chain(src: Path, dest: Path, log: Callable[[str], None]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for p in _chain_entries(src):
        os.replace(p, dest / p.name)
    log(f"the single-seed chain in {src} is seed {dest.name} of --repeats: moved it to {dest}")


def _record_options(opts: BanOptions, out: Path) -> None:
    """Record the experiment's options (re-runs, the report and `bandistill report` read them back)."""
    path = out / OPTIONS_FILE
    out.mkdir(parents=True, exist_ok=True)
    data = asdict(opts)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2)))


def find_evaluations(out: str | Path) -> list[Path]:
    """The evaluation of each seed's chain under ``out`` (one seed: ``out/evaluation.json``).

    With a ``ban.json``, exactly the chains of its seeds; chains left from other options are not reported.
    """
    out = Path(out)
    saved = read_options(out)
    if saved is not None:
        try:
            opts = BanOptions(**{k: v for k, v in saved.items() if k in {f.name for f in fields(BanOptions)}})
            paths = [opts.chain_dir(out, s) / EVALUATION_FILE for s in opts.chain_seeds()]
        except TypeError:
            raise UserError(f"{out / OPTIONS_FILE} is damaged (not the options of a run); restore it") from None
        return [p for p in paths if p.is_file()]
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
    seen = chains[0].get("views_seen")
    notes = [views_note(seen)] if seen else []
    files = write_report(out, rows, extra={"seeds": [c["seed"] for c in chains], "views_seen": seen}, notes=notes)
    return {"rows": rows, "files": files, "markdown": markdown(rows, notes=notes), "notes": notes}
