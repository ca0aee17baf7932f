"""The training run, for generation 0 (labels) and for students (labels + cached soft targets).

``TrainRun`` is the bookkeeping around the hot step of :mod:`bandistill.step`: config,
resume, checkpoints and metrics. The whole training split lives on the device as one
uint8 tensor. Each epoch draws a permutation and one view per sample from pure functions
of (seed, epoch), so a resumed run replays exactly what an uninterrupted one would have
done. Each step cuts a batch, makes its views with batched integer gathers
(:mod:`bandistill.data.views`) and normalises; there is no per-sample Python and there are no
loader workers.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from bandistill import distributed
from bandistill.checkpoint import load_checkpoint, save_checkpoint
from bandistill.collapse import majority_rate, prediction_spread
from bandistill.collapse import verdict as collapse_verdict
from bandistill.data import ImageDataset, load_dataset
from bandistill.device import resolve_device
from bandistill.errors import DiskFullError, NonFiniteError, UserError, is_disk_full
from bandistill.inference import accuracy_and_nll, predict_logits
from bandistill.lock import folder_lock
from bandistill.losses import check_loss_options
from bandistill.models import build_model, count_parameters, default_weight_decay, model_options, validate_model_name
from bandistill.progress import make_progress
from bandistill.background import BackgroundWriter
from bandistill.step import StepData, TrainStep, make_sgd, resolve_compile
from bandistill.data.views import ViewPolicy, view_hash

if TYPE_CHECKING:
    from bandistill.soft_targets import SoftTargets

MODEL_FILE = "model.pt"
LAST_FILE = "last.pt"
METRICS_FILE = "metrics.jsonl"

#: Step schedule of Wide-ResNet (used by the BAN paper): lr x0.2 at 30%, 60% and 80% of training.
STEP_MILESTONES = (0.3, 0.6, 0.8)
STEP_GAMMA = 0.2

#: Config keys that may change on --resume without invalidating the run (the result does not depend
#: on the cache memory budget (see bandistill.soft_targets), on how the step is run, or on how often it is evaluated).
RESUME_FREE_KEYS = ("device", "data_dir", "download", "device_cache_gb", "compile", "eval_every")

#: Fields renamed since runs were recorded: old name -> new (a recorded config, a launch spec, old callers).
#: ``teacher_cache`` holds the cache's path(s), ``device_cache_gb`` budgets the training device's memory.
RENAMED = {"teacher_logits": "teacher_cache", "cache_memory_budget_gb": "device_cache_gb"}

#: TrainConfig fields newer than the first recorded runs, with the default they are left out at.
ADDED_LATER = {"sync_bn": False, "compile": "auto", "eval_every": 1, "teacher_checkpoint": None, "views": None,
               "view_seed": None, "image_size": None, "init_weights": None, "class_map": None, "fresh_head": False,
               "teacher_average": "probs", "warmup_epochs": 0}


@dataclass
class TrainConfig:
    """Everything that defines a training run (recorded in every checkpoint)."""

    model: str
    dataset: str
    data_dir: str | None = None
    download: bool = False
    # an ImageFolder tree streamed from disk as RandomResizedCrop views of this size (bandistill.data.stream)
    image_size: int | None = None
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float | None = None  # None: the architecture's paper default
    schedule: str = "step"
    seed: int = 0
    device: str = "auto"
    val_split: float = 0.0
    memory_efficient: bool = False
    dropout: float = 0.0
    compile: str = "auto"  # how the step runs: see bandistill.step (auto: a captured CUDA graph on GPU, eager on CPU)
    eval_every: int = 1  # evaluate every N epochs; the last epoch always
    # students only: a cache (the normal path) or a live teacher (online distillation, the reference)
    teacher_cache: str | list[str] | None = None  # several caches: the BANE as teacher (their average)
    teacher_average: str = "probs"  # how several caches combine: probs or logits (see soft_targets)
    teacher_checkpoint: str | None = None
    views: str | None = None  # live teacher: the view plan (K, "epochs", "all"; default epochs)
    view_seed: int | None = None  # live teacher: seed of the views' parameters (dump-logits --seed; default 0)
    loss: str = "ban+l"
    warmup_epochs: int = 0  # linear lr warmup over the first N epochs (0: the paper's recipe, none)
    temperature: float = 1.0
    alpha: float = 0.5
    device_cache_gb: float = 4.0
    # cross-architecture students: copy (and freeze) the teacher's stem and classifier from its checkpoint
    transfer_ends_from: str | None = None
    # under torchrun: BatchNorm statistics over the whole global batch instead of each rank's slice
    sync_bn: bool = False
    # pretrained initialisation: a state dict or checkpoint (bandistill.import_teacher.FittedWeights), its
    # classes mapped (class_map) or its classifier left fresh (fresh_head); the run then normalises its
    # inputs the way the weights expect
    init_weights: str | None = None
    class_map: str | None = None
    fresh_head: bool = False

    def validate(self) -> "TrainConfig":
        """Normalise and check the values; raise :class:`UserError` on bad ones."""
        self.model = validate_model_name(self.model)
        if self.epochs <= 0:
            raise UserError(f"--epochs must be a positive integer, got {self.epochs}")
        if self.batch_size <= 0:
            raise UserError(f"--batch-size must be a positive integer, got {self.batch_size}")
        if not 0 < self.lr < math.inf:
            raise UserError(f"--lr must be a positive finite number, got {self.lr}")
        if self.schedule not in ("step", "cosine"):
            raise UserError(f"unknown --schedule '{self.schedule}': use step or cosine")
        if self.weight_decay is None:
            self.weight_decay = default_weight_decay(self.model)
        if not 0 <= self.weight_decay < math.inf:
            raise UserError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if (self.class_map or self.fresh_head) and not self.init_weights:
            raise UserError("--class-map and --fresh-head go with --init-weights FILE")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise UserError(f"--warmup-epochs must be between 0 and --epochs ({self.epochs}), got {self.warmup_epochs}")
        if self.image_size is not None and self.image_size <= 0:
            raise UserError(f"--image-size must be a positive number of pixels, got {self.image_size}")
        if self.eval_every <= 0:
            raise UserError(f"--eval-every must be a positive integer, got {self.eval_every}")
        if not self.device_cache_gb >= 0:
            raise UserError(f"--device-cache-gb must be >= 0 (0 streams the cache), got {self.device_cache_gb}")
        if isinstance(self.teacher_cache, (list, tuple)):  # one cache is its path; several, the BANE teacher
            paths = [str(p) for p in self.teacher_cache]
            self.teacher_cache = None if not paths else paths[0] if len(paths) == 1 else paths
        if self.teacher_average not in ("probs", "logits"):
            raise UserError(f"unknown --teacher-average '{self.teacher_average}': use probs or logits")
        if self.teacher_average != "probs" and not isinstance(self.teacher_cache, list):
            raise UserError("--teacher-average combines several --teacher-logits caches (the BANE as teacher); "
                            "give more than one, or drop it")
        if self.teacher_cache and self.teacher_checkpoint:
            raise UserError("pass --teacher-logits (a cache) or --teacher-checkpoint (a live teacher), not both")
        if self.teacher_checkpoint:
            self.views = str(self.views if self.views is not None else "epochs")
            self.view_seed = int(self.view_seed or 0)
        elif self.views is not None or self.view_seed is not None:
            raise UserError("--views and --view-seed go with --teacher-checkpoint; a cache brings its own views")
        if self.teacher_cache is None and self.teacher_checkpoint is None:
            if self.loss not in ("ce", "ban+l"):  # ban+l is the default, also for generation 0
                raise UserError(f"--loss {self.loss} applies to a student: add --teacher-logits CACHE, or drop --loss")
            self.loss = "ce"
        else:
            check_loss_options(self.loss, self.temperature, self.alpha)
        ranks = distributed.world().size
        if self.batch_size < ranks:
            raise UserError(f"--batch-size {self.batch_size} is the global batch, smaller than the {ranks} processes "
                            f"under torchrun: every rank needs a sample of each batch; use --batch-size {ranks} or more")
        return self

    def to_dict(self) -> dict[str, Any]:
        # Fields added after runs were recorded are left out at their default, so a checkpoint's or a
        # manifest's config from before still compares equal (resume, ban's re-run rules).
        return {k: v for k, v in asdict(self).items() if not (k in ADDED_LATER and v == ADDED_LATER[k])}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in _renamed(data).items() if k in names})

    @classmethod
    def recorded(cls, data: dict[str, Any]) -> dict[str, Any]:
        """A recorded config (a checkpoint's, as :meth:`to_dict` wrote it) as a whole: every field, those
        it leaves out (an older run, a value at its default) at their defaults; keys no field has are dropped."""
        data = _renamed(data)
        return {f.name: data.get(f.name, None if f.default is MISSING else f.default) for f in fields(cls)}


def _renamed(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the old names of :data:`RENAMED` fields under their new ones."""
    return {RENAMED.get(k, k): v for k, v in data.items() if not (k in RENAMED and RENAMED[k] in data)}


def _accept_old_names(cls: type) -> type:
    """Let Python callers keep the old names of :data:`RENAMED` fields (keywords and attributes)."""
    init = cls.__init__

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **_renamed(kwargs))

    cls.__init__ = __init__
    for old, new in RENAMED.items():
        setattr(cls, old, property(lambda self, n=new: getattr(self, n),
                                   lambda self, value, n=new: setattr(self, n, value)))
    return cls


_accept_old_names(TrainConfig)


def _epoch_seed(seed: int, epoch: int, stream: int) -> int:
    return int(view_hash(seed, stream, np.array([epoch]))[0] & np.uint64(0x7FFFFFFFFFFFFFFF))


def learning_rate(config: TrainConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    """The lr at a given step: a pure function, so resuming needs no scheduler state.

    ``warmup_epochs`` W > 0 scales it linearly from 1/(W x steps) to 1 over the first W
    epochs (Goyal et al. 2017), against a student collapsing in its first steps (see
    :mod:`bandistill.collapse`); the schedule after the warmup is unchanged.
    """
    if config.schedule == "cosine":
        t = (epoch * steps_per_epoch + step) / (config.epochs * steps_per_epoch)
        lr = 0.5 * config.lr * (1.0 + math.cos(math.pi * t))
    else:
        drops = sum(epoch >= round(m * config.epochs) for m in STEP_MILESTONES if round(m * config.epochs) > 0)
        lr = config.lr * STEP_GAMMA**drops
    warmup = (config.warmup_epochs or 0) * steps_per_epoch
    done = epoch * steps_per_epoch + step
    return lr * (done + 1) / warmup if done < warmup else lr


def trains_batch(size: int, batch_size: int, ranks: int, *, first: bool) -> bool:
    """Whether a step trains on a batch of ``size`` samples (the epoch's last batch may be short).

    Only a short final batch is ever dropped, and only when it cannot train: one sample
    (BatchNorm's batch statistics need two), or under torchrun fewer samples than ranks (a
    rank would get none). So a run on 2 ranks drops exactly what one process drops, and
    ``--batch-size 1`` trains every sample. An epoch's only batch always trains.
    """
    return first or size >= min(batch_size, max(2, ranks))


class TrainRun:
    """One training run writing into ``out``; :func:`train` is the usual way in."""

    def __init__(self, config: TrainConfig, out: str | Path, *, resume: bool = False, progress: bool = True):
        self.config = config.validate()
        if not str(out).strip():
            raise UserError("--out is empty; name the run folder, e.g. --out runs/gen0")
        self.out = Path(out)
        self.resume = resume
        self.show_progress = progress
        self._check_out_dir()
        self.device = resolve_device(config.device)
        self.compile = resolve_compile(config.compile, self.device)
        if self.compile == "graph" and distributed.is_distributed():  # DDP's all-reduce is not captured (yet)
            if config.compile != "auto":
                raise UserError("--compile graph does not run under torchrun yet; use --compile none (or auto)")
            self.compile = "none"
        self.dataset: ImageDataset = load_dataset(
            config.dataset, config.data_dir, download=config.download, val_split=config.val_split,
            image_size=config.image_size,
        )
        if config.image_size and self.compile == "graph":  # a batch is decoded on the host: nothing to capture
            if config.compile != "auto":
                raise UserError("--compile graph captures steps on data already on the GPU; --image-size streams "
                                "photos from disk: use --compile none (or auto)")
            self.compile = "none"
        self.policy: ViewPolicy = self.dataset.view_policy
        self.mean_list, self.std_list = self.dataset.normalization()
        self.targets: SoftTargets | None = None
        self._eval_images: list[torch.Tensor | None] | None = None
        self.loss_fn: Callable[..., torch.Tensor] = lambda logits, labels, teacher: F.cross_entropy(logits, labels)
        if config.teacher_cache or config.teacher_checkpoint:
            from bandistill.losses import make_loss
            from bandistill.soft_targets import open_soft_targets

            self.loss_fn = make_loss(config.loss, temperature=config.temperature, alpha=config.alpha)
            self.targets = open_soft_targets(config, self.dataset, self.device)

    def _check_out_dir(self) -> None:
        if self.out.exists() and not self.out.is_dir():
            raise UserError(f"--out {self.out} is a file, not a folder; choose another --out")
        has_run = (self.out / LAST_FILE).exists() or (self.out / MODEL_FILE).exists()
        if has_run and not self.resume:
            raise UserError(f"--out {self.out} already holds a run; pass --resume to continue it or choose another --out")

    # -- state -----------------------------------------------------------------------
    def _build(self) -> None:
        c = self.config
        options = {}
        if c.memory_efficient:
            options["memory_efficient"] = True
        if c.dropout:
            options["dropout"] = c.dropout
        options.update(model_options(c.model, self.dataset.image_shape))  # ViT-like networks: the input size
        self.model_spec = {
            "name": c.model,
            "num_classes": self.dataset.num_classes,
            "in_channels": self.dataset.in_channels,
            "options": options,
        }
        torch.manual_seed(_epoch_seed(c.seed, 0, 7))
        self.model = build_model(c.model, self.dataset.num_classes, self.dataset.in_channels, **options)
        self.init_record: dict[str, Any] | None = None
        if c.init_weights:
            self._init_from_weights()
        self.transferred: list[str] = []
        if c.transfer_ends_from:
            from bandistill.transfer import transfer_ends

            self.transferred = transfer_ends(self.model, c.transfer_ends_from)
        self.model = self.model.to(self.device, memory_format=torch.channels_last)
        if c.sync_bn:
            from bandistill.sync_batchnorm import convert_sync_batchnorm

            self.model = convert_sync_batchnorm(self.model, self.device)
        self.optimizer = make_sgd(self.model, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay,
                                  device=self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: autotune the convolutions once
        self.start_epoch = 0
        self.history: list[dict[str, Any]] = []

    def _init_from_weights(self) -> None:
        """Start from ``--init-weights`` (classes mapped, or a fresh classifier) and normalise as they expect."""
        from bandistill.import_teacher import FittedWeights

        c = self.config
        fitted = FittedWeights(c.init_weights, self.dataset, model=c.model, class_map=c.class_map,
                               fresh_head=c.fresh_head, training=True,
                               fallback_normalization=(self.mean_list, self.std_list,
                                                       "the training split's statistics (the weights name none)"))
        self.model = fitted.model.train()
        self.mean_list, self.std_list = fitted.normalization["mean"], fitted.normalization["std"]
        self.init_record = {**fitted.record(), "normalization_source": fitted.normalization_source}

    def _restore(self) -> None:
        """Continue from the run's saved state when resuming (and refuse one made with other settings)."""
        if not self.resume:
            return
        found = self._resume_state()
        if found is None:
            return
        path, state = found
        saved, mine = TrainConfig.recorded(state.get("config") or {}), asdict(self.config)
        sources = ("teacher_cache", "teacher_checkpoint")
        # the whole configs, both ways: a key one side lacks (an older run, a flag left at its default)
        # compares as its default, never as "absent"
        diff = [k for k in saved if k not in (*RESUME_FREE_KEYS, *sources) and saved.get(k) != mine.get(k)]
        # the teacher (a cache, or a live teacher's checkpoint) is compared by content, whatever its path
        # (./c.h5, a moved run folder); another teacher under the same name must not finish a run the
        # first one started
        source = "teacher_checkpoint" if mine.get("teacher_checkpoint") or saved.get("teacher_checkpoint") \
            else "teacher_cache"
        link = state.get("teacher") or {}
        taught_by = link.get("teacher_checkpoint_digest" if source == "teacher_checkpoint" else "cache_digest")
        if self.targets is not None or any(saved.get(k) for k in sources):
            if (self.targets is None or not self.targets.same_content(taught_by)
                    or any(bool(saved.get(k)) != bool(mine.get(k)) for k in sources)):
                diff.insert(0, source)
        if diff:
            k = diff[0]
            if k == "teacher_cache" and self.targets is not None and saved.get("teacher_cache"):
                raise UserError(
                    f"cannot resume {self.out}: it was started from another cache (content {taught_by}) than "
                    f"{self.config.teacher_cache} (content {self.targets.digest}); pass the cache it started "
                    "from, or another --out"
                )
            raise UserError(
                f"cannot resume {self.out}: it was started with {k}={saved.get(k)!r}, not {mine.get(k)!r}; "
                "use the same options or another --out"
            )
        if state["dataset"]["fingerprint"] != self.dataset.fingerprint:
            raise UserError(f"cannot resume {self.out}: it was trained on other data (fingerprint differs)")
        epoch, history = state.get("epoch"), state.get("history")
        if not (isinstance(epoch, int) and isinstance(history, list) and 0 <= epoch <= self.config.epochs
                and len(history) == epoch):
            raise UserError(f"cannot resume {self.out}: {path} claims {epoch} of {self.config.epochs} epochs done "
                            f"({len(history) if isinstance(history, list) else 'no'} recorded), so it is damaged "
                            f"or from another run; move {self.out} aside and train again")
        finished = epoch == self.config.epochs
        if "optimizer" not in state and not finished:
            raise UserError(f"cannot resume {self.out}: {path} holds no optimizer state (a final model.pt copied "
                            f"over it?) and only {epoch} of {self.config.epochs} epochs; move {self.out} aside "
                            "and train again")
        self.model.load_state_dict(state["state_dict"])
        if not finished:  # a finished run trains nothing: a model.pt (no optimizer) describes it fully
            own = [{k: g[k] for k in ("lr", "fused", "foreach")} for g in self.optimizer.param_groups]
            self.optimizer.load_state_dict(state["optimizer"])
            for group, settings in zip(self.optimizer.param_groups, own):
                group.update(settings)  # this device's lr tensor and kernels, whatever device wrote the file
        self.start_epoch = epoch
        self.history = [dict(h) for h in history]

    def _resume_state(self) -> tuple[Path, dict[str, Any]] | None:
        """The state to resume from: ``last.pt``; else a finished ``model.pt`` (None: start afresh).

        ``last.pt`` missing or unreadable next to a readable ``model.pt`` (it was deleted, damaged,
        or replaced by a copy of ``model.pt``) still resumes: the final file holds everything a
        finished run needs. Without either there is nothing to continue.
        """
        last, final = self.out / LAST_FILE, self.out / MODEL_FILE
        problem = None
        if last.exists():
            try:
                return last, load_checkpoint(last)
            except UserError as exc:
                problem = exc
        if final.exists():
            try:
                state = load_checkpoint(final)
            except UserError:
                state = None
            epochs = ((state or {}).get("config") or {}).get("epochs")
            if state is not None and isinstance(epochs, int) and 0 < epochs == state.get("epoch"):
                return final, state
            if problem is None:
                raise UserError(f"cannot resume {self.out}: its {final.name} is not a finished training run "
                                f"(damaged, or imported) and there is no {LAST_FILE}; choose another --out")
        if problem is not None:
            raise UserError(f"cannot resume {self.out}: {last} is damaged and no finished {MODEL_FILE} is there "
                            f"({problem}); move {self.out} aside and train again") from None
        return None

    def _checkpoint(self, epoch: int, final: bool, on_host: bool = True) -> dict[str, Any]:
        """The checkpoint dict; ``on_host=False`` leaves the weights on the device for
        :class:`BackgroundWriter`, whose snapshot is then their one copy to the host."""
        ckpt = {
            "model": self.model_spec,
            "state_dict": {k: v.detach().cpu() if on_host else v.detach() for k, v in self.model.state_dict().items()},
            "dataset": {
                "name": self.dataset.name,
                "fingerprint": self.dataset.fingerprint,
                "num_classes": self.dataset.num_classes,
                "classes": list(self.dataset.classes),
                "image_shape": list(self.dataset.image_shape),
                "view_policy": self.policy.to_json(),
            },
            "normalization": {"mean": self.mean_list, "std": self.std_list},
            "config": self.config.to_dict(),
            "generation": self.targets.generation + 1 if self.targets else 0,
            "teacher": self.targets.lineage() if self.targets else None,
            "epoch": epoch,
            "transferred": self.transferred,
            **({"init_weights": self.init_record, "normalization_source": self.init_record["normalization_source"]}
               if self.init_record else {}),
            "history": self.history,
            "metrics": self.history[-1] if self.history else {},
        }
        if final:
            ckpt["collapse"] = self.collapse()
        if not final:
            ckpt["optimizer"] = self.optimizer.state_dict()
            for group in ckpt["optimizer"]["param_groups"]:
                group["lr"] = self._lr  # a float, not this device's lr tensor (which the next step changes)
        return ckpt

    # -- the loop --------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train the epochs still to do, write ``model.pt``, return the summary.

        A finished run (resumed) trains nothing and keeps its ``model.pt``, unless that file
        can no longer be read: then it is rewritten from the complete resume state.
        """
        self._build()
        self._restore()
        main = distributed.is_main()  # under torchrun, rank 0 alone writes
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
        trained = self.start_epoch < self.config.epochs
        if trained:
            self._train_epochs()
        elif main:
            self._rewrite_metrics()  # a finished run resumed: metrics.jsonl as its checkpoint records it
        if main and (trained or not _readable(self.out / MODEL_FILE)):
            save_checkpoint(self._checkpoint(self.config.epochs, final=True), self.out / MODEL_FILE)
        return self.result()

    def _train_epochs(self) -> None:
        c, dev = self.config, self.device
        main, ranks = distributed.is_main(), distributed.world().size
        if main:
            self._rewrite_metrics()
        mean = torch.tensor(self.mean_list, device=dev)
        std = torch.tensor(self.std_list, device=dev)
        data = StepData(images=self.dataset.train_images.to(dev), labels=self.dataset.train_labels.to(dev),
                        params=torch.empty(0), mean=mean, std=std, policy=self.policy)
        net = distributed.wrap_for_training(self.model, dev)  # DDP under torchrun: gradients averaged over ranks
        writer = BackgroundWriter()
        step = TrainStep(net, self.optimizer, self.loss_fn, data, capture=self.compile == "graph",
                         batch_size=c.batch_size,
                         teacher_classes=self.dataset.num_classes if self.targets is not None else None,
                         before_capture=writer.wait)  # no checkpoint write may overlap the capture
        self._lr = c.lr
        n = data.images.shape[0]
        steps = max(1, math.ceil(n / c.batch_size))
        prefetch = getattr(data.images, "prefetch", None)  # the streaming source (bandistill.data.stream)
        with make_progress(self.show_progress) as progress:
            task = progress.add_task(f"train {c.model}", total=c.epochs, completed=self.start_epoch, info="")
            try:
                for epoch in range(self.start_epoch, c.epochs):
                    t0 = time.perf_counter()
                    torch.manual_seed(_epoch_seed(c.seed, epoch, 1))  # dropout and anything else stochastic
                    gen = torch.Generator().manual_seed(_epoch_seed(c.seed, epoch, 2))
                    perm = torch.randperm(n, generator=gen).to(dev)
                    if self.targets is not None:
                        step.begin_epoch(self.targets.epoch_params(epoch))
                    else:
                        step.begin_epoch(self.policy.params(c.seed, 1_000_000 + epoch, np.arange(n)).to(dev))
                    for s in range(steps):
                        idx = perm[s * c.batch_size : (s + 1) * c.batch_size]
                        if not trains_batch(idx.numel(), c.batch_size, ranks, first=s == 0):
                            continue
                        idx, loss_scale = distributed.local_batch(idx)  # this rank's slice of the global batch
                        if prefetch is not None and s + 1 < steps:  # photos: batch s+1 decoded during step s
                            upcoming = distributed.rank_slice(perm[(s + 1) * c.batch_size : (s + 2) * c.batch_size])
                            prefetch(upcoming, step.data.params[upcoming])
                        step.set_lr(learning_rate(c, epoch, s, steps))
                        step.step(idx, self._teacher(epoch, idx), loss_scale=loss_scale)
                    self._lr = step.lr
                    loss, accuracy, seen = step.end_epoch()
                    train_seconds = time.perf_counter() - t0
                    record = {
                        "epoch": epoch + 1,
                        "lr": learning_rate(c, epoch, 0, steps),
                        "loss": loss,
                        "train_accuracy": accuracy,
                    }
                    # every rank holds this epoch's training loss: all of them stop together, before last.pt
                    _refuse_non_finite(record, c.epochs, self.out)
                    if main and hasattr(self.targets, "epoch_accuracy"):  # what the student could have learned
                        record["teacher_train_accuracy"] = self.targets.epoch_accuracy(epoch, data.labels)
                    if main:  # rank 0 evaluates and writes; the others wait for its record
                        if (epoch + 1) % c.eval_every == 0 or epoch + 1 == c.epochs:
                            record.update(self._evaluate(mean, std))
                            if not distributed.is_distributed():  # (a rank-0-only stop would strand the others)
                                _refuse_non_finite(record, c.epochs, self.out)
                        record["seconds"] = time.perf_counter() - t0
                        record["images_per_s"] = seen / train_seconds if train_seconds > 0 else 0.0
                        self.history.append(record)
                        # copied to host memory now, written to disk while the next epoch trains
                        writer.submit(save_checkpoint, self._checkpoint(epoch + 1, final=False, on_host=False),
                                      self.out / LAST_FILE)
                        with open(self.out / METRICS_FILE, "a") as f:
                            f.write(json.dumps(record) + "\n")
                    else:
                        self.history.append(record)
                    self.history[-1] = record = distributed.from_rank0(record)
                    info = f"loss {record['loss']:.3f}"
                    if "test_accuracy" in record:
                        info += f" test acc {record['test_accuracy']:.3f}"
                    progress.update(task, advance=1, info=info)
                writer.wait()
            except BaseException:
                with contextlib.suppress(BaseException):
                    writer.wait()  # finish the last good checkpoint; the first error is the one to report
                raise

    def _teacher(self, epoch: int, idx: torch.Tensor):
        """A step's soft targets: None (labels only), a cache's tensor, or a live teacher to run on the step's input."""
        if self.targets is None:
            return None
        if self.targets.mode == "live":
            return lambda x: self.targets.batch_targets(epoch, idx, x)
        return self.targets.batch_targets(epoch, idx)

    def _evaluate(self, mean: torch.Tensor, std: torch.Tensor) -> dict[str, float]:
        ds, dev = self.dataset, self.device
        if self._eval_images is None:  # moved to the device once per run, not once per evaluation
            self._eval_images = [ds.test_images.to(dev), None if ds.val_images is None else ds.val_images.to(dev)]
        test, val = self._eval_images
        logits = predict_logits(self.model, test, mean, std, device=dev, batch_size=1024)
        acc, nll = accuracy_and_nll(logits, ds.test_labels)
        out = {"test_accuracy": acc, "test_loss": nll, **prediction_spread(logits, ds.test_labels, ds.num_classes)}
        if val is not None:
            vlogits = predict_logits(self.model, val, mean, std, device=dev, batch_size=1024)
            out["val_accuracy"], out["val_loss"] = accuracy_and_nll(vlogits, ds.val_labels)
        return out

    def _rewrite_metrics(self) -> None:
        """metrics.jsonl holds exactly the epochs in the checkpoint (a crash may have left more, an edit garbage)."""
        text = "".join(json.dumps(record) + "\n" for record in self.history)
        path = self.out / METRICS_FILE
        if not path.is_file() or path.read_text(errors="replace") != text:
            path.write_text(text)

    def collapse(self) -> dict[str, Any]:
        """Whether this run learned little beyond one class (:mod:`bandistill.collapse`)."""
        ds = self.dataset
        return collapse_verdict(self.history, majority_rate(ds.train_labels, ds.num_classes), list(ds.classes))

    def result(self) -> dict[str, Any]:
        last = self.history[-1]
        res = {
            "model": self.config.model,
            "dataset": self.dataset.name,
            "epochs": self.config.epochs,
            "test_accuracy": last["test_accuracy"],
            "test_loss": last["test_loss"],
            "train_accuracy": last["train_accuracy"],
            "checkpoint": str(self.out / MODEL_FILE),
            "parameters": count_parameters(self.model),
            "generation": self.targets.generation + 1 if self.targets else 0,
            "device": str(self.device),
            "processes": distributed.world().size,
            "compile": self.compile,
            "seconds": sum(h["seconds"] for h in self.history),
            "collapse": self.collapse(),
        }
        if "val_accuracy" in last:
            res["val_accuracy"] = last["val_accuracy"]
        if self.transferred:
            res["transferred"] = self.transferred
        if self.targets is not None:
            res["teacher"] = self.targets.lineage()
        return res


def train(config: TrainConfig, out: str | Path, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train one generation into ``out`` and return its summary (see README for the files).

    With ``resume``, an interrupted run continues from ``last.pt`` and a finished one is
    reported without retraining. Under torchrun every rank trains its slice of each global
    batch with DDP and rank 0 writes (see :mod:`bandistill.distributed`); the global batch,
    the views and their order are those of a single-process run, at any world size.
    """
    w = distributed.start(config.device)
    with contextlib.ExitStack() as held:
        with distributed.agreement():  # under torchrun: a user error on any rank stops every rank
            run = TrainRun(config, out, resume=resume, progress=progress and w.is_main)
            if w.is_main:  # one process per run folder (a second one is refused, naming the first)
                held.enter_context(folder_lock(run.out))
            run._check_out_dir()  # again, under the lock: another process may have finished a run here meanwhile
        try:
            return run.run()
        except (DiskFullError, OSError) as exc:
            if resume or not (isinstance(exc, DiskFullError) or is_disk_full(exc)):
                raise
            # the usual line says "run the same command again", but a plain train refuses a folder
            # holding a run: this one names --resume
            where = exc.where if isinstance(exc, DiskFullError) else exc.filename or run.out
            raise DiskFullError(f"no space left writing {where} (disk or file size limit full); free space and run "
                                "the same command with --resume: it continues from the last saved epoch", where) from None


def _refuse_non_finite(record: dict[str, Any], epochs: int, out: Path) -> None:
    """Stop a run whose loss became NaN or inf (one host check per epoch, on values already read)."""
    bad = [k for k in ("loss", "test_loss", "val_loss") if k in record and not math.isfinite(record[k])]
    if bad:
        epoch = record["epoch"]
        kept = f"{out / LAST_FILE} keeps epoch {epoch - 1}" if epoch > 1 else "no epoch was saved"
        raise NonFiniteError(f"training diverged: the {bad[0].replace('_', ' ')} is {record[bad[0]]} in epoch "
                             f"{epoch} of {epochs} ({kept}); lower --lr or check the data and teacher cache, "
                             "and train again in another --out")


def _readable(path: Path) -> bool:
    try:
        load_checkpoint(path)
        return True
    except UserError:
        return False
