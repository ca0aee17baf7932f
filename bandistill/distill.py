"""A student's soft targets, read from a teacher's cache (the teacher itself is never loaded).

Schedule: in epoch ``e`` every sample is shown view ``schedule(seed, e)`` -- within each
cycle of K epochs a permutation of 0..K-1 drawn from the student's seed, so every sample
sees every cached view once per cycle and a fresh seed gives another order. The image is
rebuilt from the view's *stored* parameters, against that view's stored logits.

The same schedule serves both memory modes, so a run's result does not depend on the
memory budget:

* in memory (the cache fits ``cache_memory_budget_gb``): all logits ``(K, N, C)`` and
  parameters are read once (one sequential read each) onto the training device; a step
  is one tensor index;
* streaming: at the start of an epoch whose view differs from the last one, that one view
  (``(N, C)``, one sequential read) replaces the previous; a step is again one index.

Either way no HDF5 read happens inside a step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from bandistill.cache.reader import SoftTargetCache, check_values, open_cache
from bandistill.checkpoint import load_checkpoint
from bandistill.data import ImageDataset
from bandistill.identity import cache_digest, checkpoint_digest
from bandistill.views import view_hash

#: Stream tag for the view schedule's hash (keeps it apart from the other uses of the seed).
_SCHEDULE_STREAM = 0x5C4ED

GiB = 1 << 30


def view_schedule(seed: int, epoch: int, num_views: int) -> int:
    """The cached view every sample is shown in ``epoch``: a seeded permutation per cycle of K epochs."""
    cycle, pos = divmod(int(epoch), int(num_views))
    keys = view_hash(seed, _SCHEDULE_STREAM + cycle, np.arange(num_views, dtype=np.uint64))
    return int(np.argsort(keys, kind="stable")[pos])


class CachedSoftTargets:
    """Teacher logits and view parameters from a cache, laid out for one-index-per-step reads.

    Implements the ``SoftTargets`` protocol of :mod:`bandistill.train`.
    """

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
        self.device = torch.device(device)
        self.seed = int(seed)
        self.num_views = info.num_views
        self.generation = info.teacher_generation
        self.loss, self.temperature, self.alpha = loss, float(temperature), float(alpha)
        self.digest = cache_digest(self.path)  # content, not bytes: the same cache dumped again matches
        params_bytes = info.num_views * info.num_samples * 3 * 2
        self.in_memory = cache.logits_nbytes + params_bytes <= memory_budget_bytes
        self._view: int | None = None
        self._schedule_epoch, self._schedule_view = -1, 0
        self._logits: torch.Tensor | None = None  # (K, N, C) in memory, or (N, C) of self._view
        self._params: torch.Tensor | None = None
        if self.in_memory:
            self._logits = torch.from_numpy(cache.read_logits()).to(self.device)
            self._params = torch.from_numpy(cache.read_view_params_all()).to(self.device)

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

    @property
    def mode(self) -> str:
        return "memory" if self.in_memory else "stream"

    def view_for_epoch(self, epoch: int) -> int:
        if epoch != self._schedule_epoch:  # called every step: hash once per epoch
            self._schedule_epoch, self._schedule_view = epoch, view_schedule(self.seed, epoch, self.num_views)
        return self._schedule_view

    def _load(self, view: int) -> None:
        """Streaming: make ``view`` the resident one (one sequential read of logits and params)."""
        if self._view == view:
            return
        self._logits = self._params = None  # free the old view before reading the new one
        with open_cache(self.path) as cache:
            logits = cache.read_view(view)
            params = cache.read_view_params(view)
        self._logits = torch.from_numpy(logits).to(self.device)
        self._params = torch.from_numpy(params).to(self.device)
        self._view = view

    def epoch_params(self, epoch: int) -> torch.Tensor:
        """View parameters ``(N, P)`` on the device of the view every sample is shown in ``epoch``."""
        view = self.view_for_epoch(epoch)
        if self.in_memory:
            return self._params[view]
        self._load(view)
        return self._params

    def batch_logits(self, epoch: int, idx: torch.Tensor) -> torch.Tensor:
        """Float32 teacher logits ``(B, C)`` for samples ``idx`` (on the device) in ``epoch``'s view."""
        view = self.view_for_epoch(epoch)
        if self.in_memory:
            return self._logits[view][idx].float()
        self._load(view)
        return self._logits[idx].float()

    def test_logits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's logits on the clean test split and the labels (from the cache)."""
        with open_cache(self.path) as cache:
            logits, labels = cache.read_test()
        return torch.from_numpy(logits.astype(np.float32)), torch.from_numpy(labels)

    def lineage(self) -> dict[str, Any]:
        """What taught the student; stored in its checkpoint under ``teacher``."""
        t = self.info.teacher
        return {
            "cache": str(self.path.resolve()),
            "cache_digest": self.digest,
            "cache_format_version": self.info.format_version,
            "views": self.num_views,
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


def open_soft_targets(config: Any, dataset: ImageDataset, device: torch.device | str) -> CachedSoftTargets:
    """Open ``config.teacher_logits`` for a student on ``dataset``; refuse (UserError) a cache that does not fit."""
    cache = open_cache(config.teacher_logits)
    try:
        cache.check_fits(
            dataset=dataset.name,
            fingerprint=dataset.fingerprint,
            num_classes=dataset.num_classes,
            num_samples=dataset.num_train,
            view_policy=dataset.view_policy.to_json(),
        )
        check_values(cache)  # NaN/inf logits or out-of-range views: refused before training, not trained on
        budget = float(getattr(config, "cache_memory_budget_gb", 4.0)) * GiB
        return CachedSoftTargets(
            cache, device, seed=config.seed, memory_budget_bytes=budget, loss=config.loss,
            temperature=config.temperature, alpha=config.alpha,
        )
    finally:
        cache.close()


def lineage_chain(checkpoint: str | Path) -> list[dict[str, Any]]:
    """A checkpoint's ancestry, newest first: ``[{generation, model, ..., loss, cache}, ..., gen 0]``.

    Read from the checkpoint alone (each student's lineage embeds its teacher's), so the
    caches and the older checkpoints need not exist any more.
    """
    ckpt = load_checkpoint(checkpoint)
    chain = [{
        "generation": int(ckpt.get("generation") or 0),
        "model": ckpt["model"]["name"],
        "checkpoint": str(checkpoint),
        "checkpoint_digest": checkpoint_digest(checkpoint),
        "test_accuracy": (ckpt.get("metrics") or {}).get("test_accuracy"),
    }]
    link = ckpt.get("teacher")
    while link:
        chain[-1].update(loss=link.get("loss"), cache=link.get("cache"), cache_digest=link.get("cache_digest"))
        chain.append({
            "generation": link.get("teacher_generation"),
            "model": link.get("teacher_model"),
            "checkpoint": link.get("teacher_checkpoint"),
            "checkpoint_digest": link.get("teacher_checkpoint_digest"),
        })
        link = link.get("teacher_lineage")
    return chain
