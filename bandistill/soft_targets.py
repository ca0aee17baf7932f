"""Where a student's soft targets come from: a teacher's cache (full rows or top-k), or a live teacher.

Both sources follow one :class:`~bandistill.data.views.ViewPlan`, so in every epoch they show
each sample the same view, rebuilt from the same parameters; they differ only in where the
teacher's output comes from. The training loop asks two things per epoch and per step:

* ``epoch_params(epoch)`` -- view parameters ``(N, P)`` on the device: the view every
  sample is shown this epoch (the loop makes the images from them, as for generation 0);
* ``batch_targets(epoch, idx, x)`` -- float32 ``(B, C)`` teacher targets for samples ``idx``
  in those views (``x`` is the student's normalised input; only a live teacher reads it).

**What the loss receives.** Every loss (:mod:`bandistill.losses`) applies a softmax to the
teacher's row, so any row equal to the logits up to a per-row constant teaches the same.
Full rows are served as the stored logits. A top-k row is served as the log-probabilities
of its reconstruction (FKD's "marginal smoothing", Shen & Xing, ECCV 2022): the k stored
classes get ``exp(value - logsumexp)``, exactly the teacher's probabilities, and the mass
left over is spread evenly over the other C - k classes. What top-k makes exact is those
probabilities, not the logits: at temperature 1 (BAN's setting) the top-k probabilities a
loss sees are the teacher's; at T != 1 the loss softens the reconstruction, whose tail is
the flat one, not the teacher's. ``verify-cache`` states how far the reconstruction is
from the full distribution.

**Cache in memory or streamed, the same targets.** When the cache fits the memory budget
it is read once (one sequential read) onto the device and an epoch is one index. Else it
streams: at the start of an epoch the views that epoch needs are read, one sequential read
each, into an ``(N, ...)`` epoch table (``fixed`` and ``epochs`` plans need one view; an
``all`` epoch reads every view once, which is the price of drawing any view per sample).
No HDF5 read ever happens inside a step.

**A live teacher** (``train --teacher-checkpoint``) runs the teacher (eval mode, no grad)
on the student's own input every step. That is online distillation: the yardstick the
cache is measured against (``benchmarks/cache_fidelity.py``), not the normal path.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from bandistill.cache import schema
from bandistill.cache.reader import SoftTargetCache, open_cache, read_stored_view
from bandistill.checkpoint import load_checkpoint, model_from_checkpoint, normalization
from bandistill.data import ImageDataset
from bandistill.device import autocast
from bandistill.errors import UserError
from bandistill.identity import checkpoint_identity
from bandistill.data.views import ViewPlan, ViewPolicy

GiB = 1 << 30


class SoftTargets(Protocol):
    """What the training loop reads instead of labels alone (see the module docstring)."""

    generation: int
    plan: ViewPlan

    def epoch_params(self, epoch: int) -> torch.Tensor:
        """View parameters ``(N, P)`` (on the device) of the view each sample is shown this epoch."""

    def batch_targets(self, epoch: int, idx: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 teacher targets ``(B, C)`` for this epoch's views of samples ``idx``: rows whose softmax is
        the teacher's distribution -- logits (full-row caches, a live teacher) or log-probabilities (top-k
        caches), which every loss treats alike (hence the name: not ``batch_logits``)."""

    def lineage(self) -> dict[str, Any]:
        """What taught the student (cache or checkpoint, digests, loss); stored in its checkpoint."""


def topk_log_probs(values: torch.Tensor, indices: torch.Tensor, logsumexp: torch.Tensor,
                   num_classes: int) -> torch.Tensor:
    """Log-probabilities ``(B, C)`` float32 of top-k rows, the rest of the mass spread evenly.

    ``values`` and ``indices`` ``(B, k)``: the k largest logits and their classes;
    ``logsumexp`` ``(B,)``: of the full row. The top-k probabilities are
    ``exp(values - logsumexp)``; rounding can make them sum past 1, in which case they are
    scaled down to sum to 1 and the other classes get (nearly) nothing.
    """
    log_top = values.float() - logsumexp.float()[:, None]
    top_mass = log_top.exp().sum(dim=1)
    log_top = log_top - top_mass.clamp_min(1.0).log()[:, None]
    b, k = values.shape
    rest = num_classes - k
    out = torch.empty((b, num_classes), dtype=torch.float32, device=values.device)
    if rest:
        tail = (1.0 - top_mass).clamp_min(torch.finfo(torch.float32).tiny) / rest
        out.copy_(tail.log()[:, None].expand(b, num_classes))
    out.scatter_(1, indices.long(), log_top)
    return out


class _Table:
    """Stored soft targets as torch tensors: full logits ``(..., C)``, or top-k values/indices/logsumexp."""

    def __init__(self, stored: np.ndarray, top_k: int, device: torch.device):
        self.top_k = top_k
        if top_k:
            self.parts = tuple(torch.from_numpy(np.ascontiguousarray(stored[name])).to(device)
                               for name in ("values", "indices", "logsumexp"))
        else:
            self.parts = (torch.from_numpy(np.ascontiguousarray(stored)).to(device),)

    @classmethod
    def of(cls, parts: tuple[torch.Tensor, ...], top_k: int) -> "_Table":
        table = cls.__new__(cls)
        table.top_k, table.parts = top_k, parts
        return table

    def take(self, *index) -> "_Table":
        """Index every part alike (a view, a sample batch, or per-sample views)."""
        return _Table.of(tuple(p[index] for p in self.parts), self.top_k)

    def rows(self, idx: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Float32 ``(B, C)`` targets of rows ``idx``: logits, or top-k log-probabilities."""
        if self.top_k:
            values, indices, lse = (p[idx] for p in self.parts)
            return topk_log_probs(values, indices, lse, num_classes)
        return self.parts[0][idx].float()


class CachedSoftTargets:
    """A teacher's cache, served one epoch table at a time; the teacher is never loaded."""

    def __init__(
        self,
        cache: SoftTargetCache,
        device: torch.device | str,
        *,
        seed: int,
        memory_budget_bytes: float,
        loss: str = "ban+l",
        temperature: float = 1.0,
        alpha: float = 0.5,
    ):
        info = cache.info
        self.path = Path(cache.path)
        self.info = info
        self.plan: ViewPlan = info.view_plan
        self.device = torch.device(device)
        self.seed = int(seed)
        self.num_views = info.num_views
        self.num_samples, self.num_classes, self.top_k = info.num_samples, info.num_classes, info.top_k
        self.generation = info.teacher_generation
        self.loss, self.temperature, self.alpha = loss, float(temperature), float(alpha)
        params_bytes = info.num_views * info.num_samples * 3 * 2
        self.in_memory = cache.logits_nbytes + params_bytes <= memory_budget_bytes
        # One read of the whole file checks its values, gives its content digest and (in memory) loads it.
        content = cache.load(keep_targets=self.in_memory)
        self.digest = content.digest  # content, not bytes: the same cache dumped again matches
        self._test = (content.arrays[schema.TEST_LOGITS], content.arrays[schema.TEST_LABELS])
        self._all: _Table | None = None  # (K, N, ...) in memory
        self._all_params: torch.Tensor | None = None
        # Streaming keeps this very file open: the content the digest names is what every epoch reads,
        # even if a dump --overwrite replaces the path mid-run (a replaced file lives on while open).
        self._file: SoftTargetCache | None = None
        if self.in_memory:
            self._all = _Table(content.arrays[info.targets_name], self.top_k, self.device)
            self._all_params = torch.from_numpy(content.arrays[schema.VIEW_PARAMS]).to(self.device)
        else:
            self._file = cache
        self._key: Any = None  # what the current epoch table holds: a view number, or ("epoch", e) for 'all'
        self._epoch = -1
        self._table: _Table | None = None
        self._params: torch.Tensor | None = None

    def close(self) -> None:
        """Close the cache file a streaming student holds open (a no-op in memory)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    @property
    def mode(self) -> str:
        return "memory" if self.in_memory else "stream"

    def same_content(self, digest: str | None) -> bool:
        """Whether ``digest`` (from a checkpoint's lineage) names this cache's content.

        Runs started before content identity recorded the file's bytes digest; that is accepted too.
        """
        if digest is None:
            return False
        if digest == self.digest:
            return True
        from bandistill.identity import file_digest

        return digest == file_digest(self.path)

    def epoch_views(self, epoch: int) -> np.ndarray:
        """The cached view ``(N,)`` each sample is shown in ``epoch``."""
        return self.plan.epoch_views(self.seed, epoch, self.num_samples)

    def view_for_epoch(self, epoch: int) -> int:
        """``fixed`` and ``epochs`` plans: the one view all samples are shown in ``epoch``."""
        if self.plan.kind == "all":
            raise ValueError("an 'all' plan shows each sample its own view; use epoch_views")
        return int(self.epoch_views(epoch)[0])

    def _prepare(self, epoch: int) -> None:
        """Make ``epoch``'s table and parameters resident (a no-op when the last epoch's are the same)."""
        if epoch == self._epoch:
            return
        self._epoch = epoch
        views = self.epoch_views(epoch)
        one = self.plan.kind != "all"
        key = int(views[0]) if one else ("epoch", epoch)
        if key == self._key:
            return
        self._table = self._params = None  # free the old epoch before building the new one
        if self.in_memory:
            if one:
                self._table, self._params = self._all.take(key), self._all_params[key]
            else:
                v = torch.from_numpy(views).to(self.device)
                i = torch.arange(self.num_samples, device=self.device)
                self._table, self._params = self._all.take(v, i), self._all_params[v, i]
        else:
            self._table, self._params = self._stream(views)
        self._key = key

    def _stream(self, views: np.ndarray) -> tuple[_Table, torch.Tensor]:
        """Assemble an epoch table from the open cache file: one sequential read per view the epoch needs."""
        cache = self._file
        if cache is None:
            raise ValueError(f"the cache {self.path} was closed")
        needed = np.unique(views)
        if len(needed) == 1:
            v = int(needed[0])
            stored, params = cache.read_stored_view(v), cache.read_view_params(v)
        else:
            stored = params = None
            for v in needed:
                rows = np.flatnonzero(views == v)
                block = read_stored_view(cache.f, self.top_k, int(v))
                pblock = cache.read_view_params(int(v))
                if stored is None:
                    stored, params = np.empty_like(block), np.empty_like(pblock)
                stored[rows], params[rows] = block[rows], pblock[rows]
        return _Table(stored, self.top_k, self.device), torch.from_numpy(params).to(self.device)

    def epoch_params(self, epoch: int) -> torch.Tensor:
        """View parameters ``(N, P)`` on the device of the view every sample is shown in ``epoch``."""
        self._prepare(epoch)
        return self._params

    def batch_targets(self, epoch: int, idx: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 teacher targets ``(B, C)`` for samples ``idx`` (on the device) in ``epoch``'s views."""
        self._prepare(epoch)
        return self._table.rows(idx, self.num_classes)

    def epoch_accuracy(self, epoch: int, labels: torch.Tensor) -> float:
        """The teacher's accuracy on ``epoch``'s views of the training split (from the cache; for collapse checks)."""
        return _rows_accuracy(lambda idx: self.batch_targets(epoch, idx), labels)

    def test_logits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's logits on the clean test split and the labels (read from the cache at start-up)."""
        logits, labels = self._test
        return torch.from_numpy(logits.astype(np.float32)), torch.from_numpy(labels)

    def lineage(self) -> dict[str, Any]:
        """What taught the student; stored in its checkpoint under ``teacher``."""
        t = self.info.teacher
        return {
            "cache": str(self.path.resolve()),
            "cache_digest": self.digest,
            "cache_format_version": self.info.format_version,
            "views": self.num_views,
            "view_plan": self.plan.kind,
            "top_k": self.top_k,
            "dump_seed": self.info.seed,
            "dtype": self.info.dtype,
            "teacher_model": t.get("model"),
            "teacher_checkpoint": t.get("checkpoint"),
            "teacher_checkpoint_digest": t.get("checkpoint_digest"),
            "teacher_generation": self.generation,
            "teacher_lineage": t.get("lineage"),
            "loss": self.loss,
            "temperature": self.temperature,
            "alpha": self.alpha,
        }


class LiveTeacher:
    """Online distillation: the teacher runs on the student's own input every step (the reference)."""

    def __init__(self, checkpoint: str | Path, dataset: ImageDataset, device: torch.device | str, *,
                 plan: ViewPlan, seed: int, loss: str = "ban+l", temperature: float = 1.0, alpha: float = 0.5):
        self.checkpoint = Path(checkpoint)
        self.ckpt = load_checkpoint(self.checkpoint)
        self.digest = checkpoint_identity(self.ckpt)  # the model it holds, not the file's bytes
        mine = self.ckpt["dataset"]
        if mine["name"] != dataset.name or mine["fingerprint"] != dataset.fingerprint:
            raise UserError(f"--teacher-checkpoint {checkpoint} was trained on {mine['name']} (fingerprint "
                            f"{mine['fingerprint']}), the student on {dataset.name} ({dataset.fingerprint}); "
                            "pass a teacher of this data")
        if mine.get("view_policy") and mine["view_policy"] != dataset.view_policy.to_json():
            raise UserError(f"--teacher-checkpoint {checkpoint} was trained on the view policy {mine['view_policy']}, "
                            f"the student uses {dataset.view_policy.to_json()}; train the student with the "
                            "teacher's --image-size")
        self.device = torch.device(device)
        # The teacher normalises its input as its weights expect (an imported teacher: ImageNet's mean/std),
        # the student as its data does: the student's input x = (v - m_s) / s_s of view v becomes the
        # teacher's (v - m_t) / s_t = x * (s_s / s_t) + (m_s - m_t) / s_t, the same image to rounding.
        t_mean, t_std = normalization(self.ckpt)
        s_mean, s_std = (torch.tensor(t, dtype=torch.float32) for t in dataset.normalization())
        if len(t_mean) != len(s_mean):
            raise UserError(f"--teacher-checkpoint {checkpoint} takes {len(t_mean)}-channel images, the data has "
                            f"{len(s_mean)}; pass a teacher of this data")
        self._renormalize = None
        if not (torch.equal(t_mean, s_mean) and torch.equal(t_std, s_std)):
            scale, shift = s_std / t_std, (s_mean - t_mean) / t_std
            self._renormalize = (scale.view(1, -1, 1, 1).to(self.device), shift.view(1, -1, 1, 1).to(self.device))
        self.model = model_from_checkpoint(self.ckpt).to(self.device, memory_format=torch.channels_last).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.plan, self.policy, self.seed = plan, dataset.view_policy, int(seed)
        self.num_samples = dataset.num_train
        self.generation = int(self.ckpt.get("generation") or 0)
        self.loss, self.temperature, self.alpha = loss, float(temperature), float(alpha)
        self._epoch, self._params = -1, None

    mode = "live"

    def same_content(self, digest: str | None) -> bool:
        """Whether ``digest`` (a run's recorded teacher) names this teacher's model."""
        return digest is not None and digest == self.digest

    def epoch_params(self, epoch: int) -> torch.Tensor:
        """The planned views of ``epoch``, made from the plan's pure functions (what a cache would store)."""
        if epoch != self._epoch:
            self._params = plan_params(self.plan, self.policy, self.plan.epoch_views(self.seed, epoch,
                                                                                     self.num_samples))
            self._params = self._params.to(self.device)
            self._epoch = epoch
        return self._params

    @torch.no_grad()
    def batch_targets(self, epoch: int, idx: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """The teacher's float32 logits on ``x``, the student's own normalised views of ``idx``."""
        if x is None:
            raise ValueError("a live teacher needs the student's input")
        if self._renormalize is not None:
            scale, shift = self._renormalize
            x = (x * scale + shift).contiguous(memory_format=torch.channels_last)
        with autocast(x.device):
            return self.model(x).float()

    def lineage(self) -> dict[str, Any]:
        spec = self.ckpt["model"]
        return {
            "live_teacher": True,
            "cache": None,
            "views": self.plan.num_views,
            "view_plan": self.plan.kind,
            "view_seed": self.plan.seed,
            "teacher_model": spec["name"],
            "teacher_checkpoint": str(self.checkpoint.resolve()),
            "teacher_checkpoint_digest": self.digest,
            "teacher_generation": self.generation,
            "teacher_lineage": self.ckpt.get("teacher"),
            "loss": self.loss,
            "temperature": self.temperature,
            "alpha": self.alpha,
        }


#: How a BANE teacher combines its members' soft targets (``train --teacher-average``).
TEACHER_AVERAGES = ("probs", "logits")


class EnsembleSoftTargets:
    """The BANE as teacher: the average of several caches' soft targets on the same views.

    Generation k learns from generations 0..k-1 together, each read from its own cache
    (no member is ever loaded). That is only the ensemble's output if every member was
    dumped on the *same* views, so the caches must share the view plan (kind, number of
    views, seed) and view policy, and their stored view parameters must be equal; anything
    else is refused (FKD's ensemble labels redraw the flip per teacher, so theirs do not
    match).

    ``average="probs"`` (the default) serves ``log(mean_k p_k)``: the mean of the members'
    probabilities, which is the BANE as the paper defines it and as ``bandistill ensemble``
    and the report measure it, so the student learns from exactly the ensemble whose error
    the report shows. A mixture keeps mass on every class some member finds likely.
    ``average="logits"`` serves ``mean_k log p_k``: after the loss's softmax, the
    normalised geometric mean, sharper, and close to zero on a class any member rules out.
    At ``--temperature`` T != 1 the two differ in one more way: ``logits`` softens the
    average exactly as it would each member (``softmax(mean_k z_k / T)``), while ``probs``
    softens the T = 1 mixture (``p̄^(1/T)``, renormalised). Both cost the same: one row per
    member per step.

    **Top-k caches**: each member's row is first reconstructed as every cached row is
    (its exact top-k probabilities, the rest spread evenly over the other classes), then
    averaged. So a class in one member's top k but not another's gets that member's exact
    probability and the other's flat tail value: the union of the members' top-k sets is
    kept, each class weighted by the members that kept it.
    """

    def __init__(self, members: list[CachedSoftTargets], average: str = "probs"):
        if average not in TEACHER_AVERAGES:
            raise UserError(f"unknown --teacher-average '{average}': use probs or logits")
        first = members[0]
        for m in members[1:]:
            why = _views_differ(first, m)
            if why:
                raise UserError(f"caches {first.path} and {m.path} were dumped on other views ({why}); a BANE "
                                "teacher averages targets of the same views: dump every member with the same "
                                "--views, --epochs and --seed")
        self.members, self.average = members, average
        self.plan, self.num_samples, self.num_classes = first.plan, first.num_samples, first.num_classes
        self.seed = first.seed
        self.generation = max(m.generation for m in members)
        self.loss, self.temperature, self.alpha = first.loss, first.temperature, first.alpha
        joined = "|".join([average, *(m.digest for m in members)])
        self.digest = "bane:" + hashlib.sha256(joined.encode()).hexdigest()

    @property
    def mode(self) -> str:
        return "memory" if all(m.in_memory for m in self.members) else "stream"

    def close(self) -> None:
        """Close the cache files streaming members hold open."""
        for m in self.members:
            m.close()

    def same_content(self, digest: str | None) -> bool:
        return digest is not None and digest == self.digest

    def epoch_params(self, epoch: int) -> torch.Tensor:
        params = self.members[0].epoch_params(epoch)
        for m in self.members[1:]:  # streamed members: compare the views each epoch actually reads
            if not m.in_memory and not torch.equal(m.epoch_params(epoch), params):
                raise UserError(f"caches {self.members[0].path} and {m.path} hold other view parameters for "
                                f"epoch {epoch + 1}; dump every member with the same --views, --epochs and --seed")
        return params

    def batch_targets(self, epoch: int, idx: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 ``(B, C)`` log-probabilities of the members' average on samples ``idx`` (class docstring)."""
        logps = torch.stack([torch.log_softmax(m.batch_targets(epoch, idx), dim=1) for m in self.members])
        if self.average == "logits":
            return logps.mean(dim=0)
        return torch.logsumexp(logps, dim=0) - math.log(len(self.members))

    def epoch_accuracy(self, epoch: int, labels: torch.Tensor) -> float:
        """The averaged teacher's accuracy on ``epoch``'s views of the training split."""
        return _rows_accuracy(lambda idx: self.batch_targets(epoch, idx), labels)

    def lineage(self) -> dict[str, Any]:
        members = [m.lineage() for m in self.members]
        for m in members:
            for k in ("loss", "temperature", "alpha"):
                m.pop(k, None)
        return {
            "ensemble_teacher": True,
            "teacher_average": self.average,
            "cache": None,
            "cache_digest": self.digest,
            "members": members,
            "views": self.members[0].num_views,
            "view_plan": self.plan.kind,
            "dump_seed": self.members[0].info.seed,
            "top_k": [m.top_k for m in self.members],
            "teacher_generation": self.generation,
            "teacher_generations": [m.generation for m in self.members],
            "loss": self.loss,
            "temperature": self.temperature,
            "alpha": self.alpha,
        }


def _rows_accuracy(rows, labels: torch.Tensor, chunk: int = 65536) -> float:
    """Top-1 accuracy of ``rows(idx)`` against ``labels``, a chunk of samples at a time."""
    labels = labels.to(torch.long)
    hits = 0
    for start in range(0, labels.numel(), chunk):
        idx = torch.arange(start, min(start + chunk, labels.numel()), device=labels.device)
        hits += int((rows(idx).argmax(dim=1) == labels[idx]).sum())
    return hits / max(labels.numel(), 1)


def _views_differ(a: CachedSoftTargets, b: CachedSoftTargets) -> str | None:
    """Why two caches do not hold the same views (None when they do)."""
    pa, pb = a.plan, b.plan
    if (pa.kind, pa.num_views) != (pb.kind, pb.num_views):
        return f"--views {pa.kind} of {pa.num_views} vs {pb.kind} of {pb.num_views}"
    if (pa.seed, a.info.seed) != (pb.seed, b.info.seed):
        return f"seed {a.info.seed} vs {b.info.seed}"
    if a.in_memory and b.in_memory and not torch.equal(a._all_params, b._all_params):
        return "other view parameters"
    return None


def plan_params(plan: ViewPlan, policy: ViewPolicy, views: np.ndarray) -> torch.Tensor:
    """Parameters ``(N, P)`` of planned views ``views`` ``(N,)`` of samples ``0..N-1`` (pure functions)."""
    n = len(views)
    out = torch.empty((n, policy.num_params), dtype=torch.int16)
    for v in np.unique(views):
        rows = np.flatnonzero(views == v)
        out[torch.from_numpy(rows)] = plan.params(policy, int(v), rows)
    return out


def open_soft_targets(config: Any, dataset: ImageDataset, device: torch.device | str) -> SoftTargets:
    """The soft targets ``config`` names (``teacher_cache`` or ``teacher_checkpoint``); UserError when they do not fit."""
    if getattr(config, "teacher_checkpoint", None):
        try:
            plan = ViewPlan.parse(config.views, dataset.view_policy, epochs=config.epochs, seed=config.view_seed)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        return LiveTeacher(config.teacher_checkpoint, dataset, device, plan=plan, seed=config.seed,
                           loss=config.loss, temperature=config.temperature, alpha=config.alpha)
    sources = config.teacher_cache
    if isinstance(sources, (list, tuple)):
        if len(sources) > 1:  # the BANE as teacher: each member's budget a share of the whole
            share = float(getattr(config, "device_cache_gb", 4.0)) / len(sources)
            members = [_open_cache(path, config, dataset, device, share) for path in sources]
            return EnsembleSoftTargets(members, getattr(config, "teacher_average", None) or "probs")
        sources = sources[0]
    return _open_cache(sources, config, dataset, device, float(getattr(config, "device_cache_gb", 4.0)))


def _open_cache(path: str, config: Any, dataset: ImageDataset, device: torch.device | str,
                budget_gb: float) -> CachedSoftTargets:
    """One cache, checked against the student's data and schedule."""
    cache = open_cache(path)
    try:
        cache.check_fits(
            dataset=dataset.name,
            fingerprint=dataset.fingerprint,
            num_classes=dataset.num_classes,
            num_samples=dataset.num_train,
            view_policy=dataset.view_policy.to_json(),
        )
        why = cache.info.view_plan.check_epochs(int(getattr(config, "epochs", 0) or 0))
        if why:
            raise UserError(f"cache {cache.path} does not cover this student: {why}")
        budget = budget_gb * GiB
        # NaN/inf logits or out-of-range views are refused here, before training, in the pass that loads it
        targets = CachedSoftTargets(
            cache, device, seed=config.seed, memory_budget_bytes=budget, loss=config.loss,
            temperature=config.temperature, alpha=config.alpha,
        )
    except BaseException:
        cache.close()
        raise
    if targets.in_memory:
        cache.close()  # everything is in memory; a streaming student keeps the file open (see CachedSoftTargets)
    return targets
