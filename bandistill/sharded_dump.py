"""A dump split across torchrun's ranks: disjoint sample ranges, a shard file each, one cache at the end.

Rank ``r`` of ``W`` takes a contiguous range of the train samples (and of the test samples)
that starts on a batch boundary, so it runs exactly the batches a single-process dump
runs and its logits are the same bits. It writes them into its own shard,
``<out>.shard-r-of-W.partial``: an ordinary partial cache file (:class:`CacheWriter`) over
its range, filled view by view, so a rank that is killed resumes its own shard where it
stopped. When every shard is complete, rank 0 merges them view by view into
``<out>.partial`` with the writer a single-process dump uses, renames it to ``<out>`` and
deletes the shards. The result is the ordinary cache file: no reader can tell how it was
made (tests compare it bit for bit with a single-process dump).

Why a merged copy and not an HDF5 file of virtual datasets over the shards (h5py's
``VirtualLayout``): both read as fast in training, which loads the whole array or one whole
view (``benchmarks/sharded_cache_read.py``: virtual/merged 0.71 to 1.19 over three runs of
50k samples x 8 views x 100 classes in 8 shards, 12-15 ms either way, 2-core CPU, warm
page cache), but a virtual file is not a cache on its own: it
breaks when the shards move or one is deleted, a copy of the ``.h5`` alone is empty, and
its digest does not cover the logits. The merge costs one sequential copy of the logits,
small next to the teacher's forward passes.

Before any shard is written, rank 0 checks that the folder holds the shards and the merged
copy (the peak, just before the shards are deleted); each shard file is then reserved at
its full size like a single-process dump's (:meth:`LogitDump.open_file`).

This module only drives a :class:`bandistill.dump.LogitDump` through its public methods;
``dump.py`` imports it, not the other way round.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from bandistill.cache import schema
from bandistill.cache.reader import read_stored_view
from bandistill.cache.writer import CacheWriter, read_partial_state
from bandistill.distributed import agreement, world
from bandistill.errors import DumpInterrupted
from bandistill.progress import make_progress

if TYPE_CHECKING:  # annotations only: dump.py imports this module
    from bandistill.dump import LogitDump

#: Test hook: ``"<rank>:<views>"`` makes that rank die (exit 137, like SIGKILL) after writing that many views.
KILL_HOOK_ENV = "BANDISTILL_TEST_KILL_RANK_AFTER_VIEWS"


def shard_range(n: int, batch_size: int, rank: int, size: int) -> tuple[int, int]:
    """Samples ``[start, stop)`` of rank ``rank``: whole batches, split as evenly as batches allow."""
    batches = -(-n // batch_size)
    first, last = batches * rank // size, batches * (rank + 1) // size
    return min(first * batch_size, n), min(last * batch_size, n)


def shard_path(out: str | os.PathLike, rank: int, size: int) -> Path:
    """The name a shard would have once complete; it is written as ``<this>.partial`` and merged from there."""
    return Path(f"{out}.shard-{rank}-of-{size}")


def shard_partial(out: str | os.PathLike, rank: int, size: int) -> Path:
    return Path(schema.partial_path(str(shard_path(out, rank, size))))


def all_shard_files(out: str | os.PathLike) -> list[Path]:
    """Every shard file of ``out``, of any world size (for a pipeline that starts a dump over)."""
    out = Path(out)
    return sorted(out.parent.glob(f"{out.name}.shard-*-of-*{schema.PARTIAL_SUFFIX}"))


class Shard:
    """This rank's part of a dump: its sample ranges and its shard file."""

    def __init__(self, job: "LogitDump", rank: int, size: int):
        self.job, self.rank, self.size = job, rank, size
        ds = job.dataset
        self.train = shard_range(ds.num_train, job.batch_size, rank, size)
        self.test = shard_range(int(ds.test_labels.shape[0]), job.batch_size, rank, size)

    def identity(self) -> dict[str, Any]:
        """What must match for an existing shard file to be resumed."""
        (a, b), (ta, tb) = self.train, self.test
        shard = json.dumps({"rank": self.rank, "size": self.size, "samples": [a, b], "test_samples": [ta, tb]})
        return {**self.job.identity(), "num_samples": b - a, "num_test_samples": tb - ta, "shard": shard}

    def open(self) -> CacheWriter:
        """Reopen this rank's shard when it holds the same dump, else start it (refusing other settings);
        a new shard is checked against the free space and reserved at its full size."""
        job = self.job
        mine = self.identity()
        ds, (a, b), (ta, tb) = job.dataset, self.train, self.test
        layout = {**job.layout(), "attrs": {**job.attrs(), "shard": mine["shard"]}, "num_samples": b - a,
                  "labels": ds.train_labels[a:b].numpy(), "test_labels": ds.test_labels[ta:tb].numpy()}
        return job.open_file(shard_path(job.out, self.rank, self.size), mine, layout)

    def write(self, skip_views: set[int], skip_test: bool, *, stop_after_views: int | None = None) -> tuple[int, int]:
        """Compute and store every view of this shard not already merged or written; returns (written, resumed)."""
        job, (a, b), (ta, tb) = self.job, self.train, self.test
        kill_after = _kill_hook(self.rank)
        writer = self.open()
        try:
            done = set(writer.views_done())
            todo = [v for v in range(job.views) if v not in done and v not in skip_views]
            if done - skip_views:
                job.log(f"resuming {writer.partial}: {len(done - skip_views)} of {job.views} views already written")
            need_test = not (skip_test or writer.test_done)
            written = 0
            with make_progress(job.show_progress) as progress:
                task = progress.add_task(f"dump logits (shard {self.rank + 1}/{self.size})",
                                         total=len(todo) * (b - a) + (tb - ta if need_test else 0), info="")
                step = lambda k: progress.update(task, advance=k)  # noqa: E731
                if need_test:
                    writer.write_test(job.test_logits(ta, tb, on_batch=step) if tb > ta else self._empty_logits())
                for v in todo:
                    if stop_after_views is not None and written >= stop_after_views:
                        raise DumpInterrupted(f"stopped after {written} views (test hook)")
                    if kill_after is not None and written >= kill_after:
                        os._exit(137)  # the test hook's stand-in for a SIGKILL: no cleanup, no flush
                    progress.update(task, info=f"view {v + 1}/{job.views}")
                    if b > a:
                        writer.write_view(v, *job.view_logits(v, a, b, on_batch=step))
                    else:  # more ranks than batches: an empty shard
                        writer.write_view(v, self._empty_logits(), np.zeros((0, job.policy.num_params), np.int16))
                    written += 1
        finally:
            writer.close()
        return written, len(done - skip_views)

    def _empty_logits(self) -> np.ndarray:
        return np.zeros((0, self.job.dataset.num_classes), dtype=np.float32)


def merged_so_far(job: "LogitDump") -> tuple[set[int], bool]:
    """Views (and whether the test logits) already in ``<out>.partial``: a merge cut short, or a
    single-process dump that was interrupted. No shard recomputes them."""
    state = None if job.overwrite else read_partial_state(job.out)
    if state is None or not state["readable"]:
        return set(), False
    job.check_resumable(schema.partial_path(str(job.out)), state["attrs"])
    return set(state["views_done"]), bool(state["attrs"].get("test_complete"))


def merge_shards(job: "LogitDump", size: int) -> Path:
    """Rank 0: copy the complete shards, view by view, into ``<out>.partial``, finish it, delete the shards."""
    writer = job.open_writer()
    parts = [shard_partial(job.out, r, size) for r in range(size)]
    files: list[h5py.File] = []
    try:
        files = [h5py.File(p, "r") for p in parts]
        for v in sorted(set(range(job.views)) - set(writer.views_done())):
            missing = [str(p) for p, f in zip(parts, files) if not f[schema.VIEWS_COMPLETE][v]]
            if missing:
                raise RuntimeError(f"cannot merge view {v}: {missing[0]} does not hold it")
            writer.write_stored_view(v, np.concatenate([read_stored_view(f, job.top_k, v) for f in files]),
                                     np.concatenate([f[schema.VIEW_PARAMS][v] for f in files]))
        if not writer.test_done:
            writer.write_test(np.concatenate([f[schema.TEST_LOGITS][()] for f in files]))
        path = writer.finish()
    finally:
        for f in files:
            f.close()
        writer.close()
    for p in parts:
        p.unlink(missing_ok=True)
    return path


def check_room(job: "LogitDump", size: int) -> None:
    """Rank 0, before any shard is written: the folder must hold every shard and the merged copy (the peak,
    just before the shards are deleted), less what the files already there reserved."""
    there = [shard_partial(job.out, r, size) for r in range(size)] + [Path(schema.partial_path(str(job.out)))]
    held = sum(p.stat().st_size for p in there if p.exists() and not job.overwrite)
    # the arrays' arithmetic, before anything of their size is laid out (each file's own check adds HDF5's bytes)
    job.check_disk_space(max(0, 2 * job.storage_estimate(job.top_k)["total"] - held))


def run_sharded(job: "LogitDump", *, stop_after_views: int | None = None) -> dict[str, Any]:
    """This rank's part of a sharded dump, then (rank 0) the merge; every rank returns the summary."""
    w, t0 = world(), time.perf_counter()
    with agreement():
        done = job.existing_result()
    if done is not None:
        return done
    shard = Shard(job, w.rank, w.size)
    with agreement():
        skip_views, skip_test = merged_so_far(job)
        if w.is_main:
            check_room(job, w.size)
            job.log(job.estimate_line())
            job.log(f"{w.size} ranks each write a shard ({shard_partial(job.out, 0, w.size).name} ...); "
                    f"rank 0 merges them into {job.out}")
    with agreement():  # ends when every shard is written: a user error on one rank stops them all
        written, resumed = shard.write(skip_views, skip_test, stop_after_views=stop_after_views)
    with agreement():
        if w.is_main:
            merge_shards(job, w.size)
    return job.summary(job.out, written=written, resumed=resumed + len(skip_views),
                       seconds=time.perf_counter() - t0)


def _kill_hook(rank: int) -> int | None:
    spec = os.environ.get(KILL_HOOK_ENV)
    if not spec:
        return None
    hook_rank, views = (int(x) for x in spec.split(":"))
    return views if hook_rank == rank else None
