"""The options of a born-again run: :class:`BanOptions`, checked before anything runs, and ``ban.json``.

A re-run that leaves an option out keeps the value the run was made with (read back from
``<out>/ban.json``) instead of falling back to the default and redoing the stages it shapes.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from bandistill.atomic import atomic_write
from bandistill.dump import check_dump_options
from bandistill.errors import UserError
from bandistill.models import validate_model_name
from bandistill.run.manifest import MANIFEST_FILE
from bandistill.train import TrainConfig
from bandistill.data.resized_crop import RandomResizedCrop
from bandistill.data.views import ViewPlan, ViewPolicy
from bandistill.variants import Variant, parse_variant, parse_variants

OPTIONS_FILE = "ban.json"
#: The view plan of every student's cache, chosen from benchmarks/cache_fidelity.py (see the README).
DEFAULT_VIEWS = "epochs"


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
    image_size: int | None = None  # stream an ImageFolder tree as RandomResizedCrop views of this size
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
    # bring your own teacher: generation 0 imported from these weights (bandistill.import_teacher), not trained;
    # ``model`` then names their architecture (taken from the file when it is a bandistill checkpoint)
    teacher: str | None = None
    class_map: str | None = None
    # generation 1's students, one per variant (bandistill.variants), and the one the chain goes on from
    variants: str | None = None
    chain_from: str | None = None
    bane_teacher: bool = False  # generation k learns from the average of generations 0..k-1's caches
    teacher_average: str = "probs"  # with bane_teacher: average probabilities or logits
    warmup_epochs: int = 0  # students only: linear lr warmup over their first N epochs (0: the paper's recipe)

    def validate(self) -> "BanOptions":
        from bandistill.device import resolve_device

        wrong = mistyped(asdict(self))
        if wrong:
            raise UserError(f"option {wrong[0]}")
        self.model = validate_model_name(self.model)
        self.student_model = validate_model_name(self.student_model) if self.student_model else None
        if self.generations < 1:
            raise UserError(f"--generations must be at least 1, got {self.generations}")
        # "4" (from the command line) and 4 (from Python or an older ban.json) are the same plan
        self.views = int(self.views) if str(self.views).strip().isdigit() else str(self.views).strip().lower()
        try:
            ViewPlan.parse(self.views, RandomResizedCrop(size=self.image_size) if self.image_size else ViewPolicy(),
                           epochs=self.epochs)
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
        if self.class_map and not self.teacher:
            raise UserError("--class-map goes with --teacher FILE (it maps the teacher's outputs to the classes)")
        if self.teacher and not Path(self.teacher).expanduser().is_file():
            raise UserError(f"--teacher {self.teacher} does not exist; pass a .pth, .safetensors or model.pt file")
        if self.transfer_ends and not self.student_model:
            raise UserError("--transfer-ends needs --student-model (it copies the teacher's ends into another architecture)")
        # Every option a later stage checks is checked here, before any stage runs: a re-run with a
        # bad value must not first clear the finished stages that value would have re-run.
        from bandistill.cache.schema import DTYPES
        from bandistill.onnx.meta import check_opset
        from bandistill.losses import check_loss_options

        for model in {self.model, self.student_model or self.model}:
            TrainConfig(model=model, dataset=self.dataset, epochs=self.epochs, batch_size=self.batch_size,
                        lr=self.lr, weight_decay=self.weight_decay, schedule=self.schedule).validate()
        if self.variants:  # the chain goes on with its variant's recipe: that is the run's loss
            lead = self.chain_variant()
            self.loss, self.temperature, self.alpha = lead.loss, lead.temperature, lead.alpha
        elif self.chain_from:
            raise UserError("--chain-from names one of --variants; give --variants too")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise UserError(f"--warmup-epochs must be between 0 and --epochs ({self.epochs}), got {self.warmup_epochs}")
        if self.teacher_average not in ("probs", "logits"):
            raise UserError(f"unknown --teacher-average '{self.teacher_average}': use probs or logits")
        if self.teacher_average != "probs" and not self.bane_teacher:
            raise UserError("--teacher-average applies to --bane-teacher; add it or drop --teacher-average")
        check_loss_options(self.loss, self.temperature, self.alpha)
        if self.dtype not in DTYPES:
            raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        check_opset(self.opset)
        resolve_device(self.device)  # --device cuda without a GPU: refused here, not after gen0 moved aside
        return self

    def student_variants(self) -> list[Variant]:
        """Generation 1's students: the ``--variants`` items, or the one student ``--loss`` etc. describe."""
        if self.variants:
            return parse_variants(self.variants)
        return [Variant(self.loss, self.temperature, self.alpha)]

    def chain_variant(self) -> Variant:
        """The variant whose student is BAN-1 and whose recipe teaches generations 2..N (default: the first)."""
        variants = self.student_variants()
        if not self.chain_from:
            return variants[0]
        wanted = parse_variant(self.chain_from).name
        for v in variants:
            if v.name == wanted:
                return v
        raise UserError(f"--chain-from {self.chain_from} is not one of --variants ({', '.join(v.name for v in variants)})")

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
    wrong = mistyped({k: v for k, v in saved.items() if k not in given})
    if wrong:
        raise UserError(f"{Path(out) / OPTIONS_FILE} is damaged: {wrong[0]}; restore it, or give the option "
                        f"on the command line")
    merged = {**{k: v for k, v in saved.items() if k in names}, **given}
    if not merged.get("model") and merged.get("teacher"):  # a bandistill checkpoint names its architecture
        from bandistill.import_teacher import teacher_architecture

        merged["model"] = teacher_architecture(merged["teacher"])
    for required in ("model", "dataset"):
        if not merged.get(required):
            raise UserError(f"--{required} is required (--out {out} holds no {OPTIONS_FILE} to take it from)")
    return BanOptions(**merged)


_JSON_TYPES = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false", "None": "null"}


def mistyped(values: dict[str, Any]) -> list[str]:
    """One phrase per option whose value has the wrong type (``epochs is '1', not an integer``).

    ``ban.json`` is a file anyone can edit: a value of the wrong type must be one line, not a
    TypeError from deep inside a stage. Types come from :class:`BanOptions`' annotations.
    """
    wrong = []
    for f in fields(BanOptions):
        if f.name not in values:
            continue
        value, allowed = values[f.name], [t.strip() for t in str(f.type).split("|")]
        ok = any(
            value is None if t == "None"
            else isinstance(value, bool) if t == "bool"
            else isinstance(value, int) and not isinstance(value, bool) if t == "int"
            else isinstance(value, (int, float)) and not isinstance(value, bool) if t == "float"
            else isinstance(value, str) if t == "str"
            else True
            for t in allowed
        )
        if not ok:
            wrong.append(f"{f.name} is {value!r}, not {' or '.join(_JSON_TYPES.get(t, t) for t in allowed)}")
    return wrong


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


def record_options(opts: BanOptions, out: Path) -> None:
    """Record the experiment's options (re-runs, the report and `bandistill report` read them back)."""
    path = out / OPTIONS_FILE
    out.mkdir(parents=True, exist_ok=True)
    data = asdict(opts)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2)))
