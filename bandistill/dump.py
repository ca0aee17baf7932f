"""Paying for the teacher once: its logits on the planned augmented views of every training sample.

The views are a :class:`~bandistill.data.views.ViewPlan` (``--views K``, ``epochs`` or ``all``);
view ``v`` of sample ``i`` has parameters ``plan.params(policy, v, i)``, a pure function.
The dump runs the teacher (eval mode) on exactly those images and stores the logits (full
rows, or with ``top_k`` the k largest and the row's log-sum-exp) and the parameters side by
side, so a student can rebuild the image bit for bit and read the matching soft targets
without the teacher. It also stores the teacher's logits on the clean test split.

Resuming: the dump writes ``<out>.partial``, marking each view complete once it is
flushed. Run again with the same settings, it skips the complete views and finishes the
file; with other settings it refuses (``overwrite=True`` starts over). Only a complete
file is renamed to ``<out>``; when ``<out>`` already holds a complete dump with the same
settings the call does nothing and reports it (so a pipeline can call it unconditionally).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from bandistill import distributed
from bandistill.background import BackgroundWriter
from bandistill.cache import schema
from bandistill.cache.reader import open_cache
from bandistill.cache.writer import CacheWriter, read_partial_state
from bandistill.checkpoint import checkpoint_dataset, load_checkpoint, model_from_checkpoint, normalization
from bandistill.data import ImageDataset
from bandistill.device import resolve_device
from bandistill.errors import DumpInterrupted, UserError, disk_full_error, is_disk_full
from bandistill.identity import checkpoint_identity, loaded_checkpoint_digest
from bandistill.inference import accuracy_and_nll, predict_logits
from bandistill.lock import file_lock
from bandistill.progress import make_progress
from bandistill.data.views import ViewPlan
from bandistill.sharded_dump import run_sharded

__all__ = ["DumpInterrupted", "LogitDump", "check_dump_options", "dump_logits", "is_complete", "load_teacher",
           "teacher_dataset"]

#: Largest magnitude float16 holds; a teacher beyond it needs --dtype float32.
FLOAT16_MAX = 65504.0
#: Most views one cache may hold (``views_complete`` and the view numbers are stored as HDF5 integers).
MAX_VIEWS = 2**31 - 1
#: ``--seed`` is stored as a signed 64-bit HDF5 attribute.
SEED_RANGE = (-(2**63), 2**63 - 1)


def check_dump_options(views: int | str, *, seed: int, epochs: int | None) -> None:
    """Refuse ``--views`` / ``--seed`` / ``--epochs`` values no dump can honour, before anything runs.

    ``ban`` calls it up front (a bad value used to surface only when the first dump started,
    after generation 0 had trained). ``--epochs`` sizes a ``--views epochs`` plan only: with
    ``--views K`` or ``all`` it would be silently ignored, so it is refused there.
    """
    if not SEED_RANGE[0] <= int(seed) <= SEED_RANGE[1]:
        raise UserError(f"--seed must fit in a signed 64-bit integer, got {seed}")
    text = str(views).strip().lower()
    if epochs is not None:
        if int(epochs) < 1:
            raise UserError(f"--epochs must be a positive integer, got {epochs} (leave it out for the teacher's epochs)")
        if text != "epochs":
            raise UserError(f"--epochs {epochs} sizes a '--views epochs' plan only; --views {views} does not "
                            "depend on it: leave --epochs out, or pass --views epochs")
        if int(epochs) > MAX_VIEWS:
            raise UserError(f"--epochs {epochs} would dump {epochs} views; a cache holds at most {MAX_VIEWS}")
    if text not in ("epochs", "all"):
        try:
            k = int(text)
        except ValueError:
            return  # ViewPlan.parse says what --views accepts
        if k > MAX_VIEWS:
            raise UserError(f"--views {views} is more views than a cache holds (at most {MAX_VIEWS}); "
                            "pass fewer --views")


def load_teacher(ckpt: dict[str, Any], device: torch.device) -> torch.nn.Module:
    """The teacher network of a checkpoint on ``device``, in eval mode, channels_last.

    The same function serves the dump and ``verify-cache`` so both run identical numerics.
    """
    model = model_from_checkpoint(ckpt)
    return model.to(device, memory_format=torch.channels_last).eval()


def teacher_dataset(ckpt: dict[str, Any], dataset: str, data_dir: str | None) -> ImageDataset:
    """Load ``dataset`` with the teacher's validation split, and refuse it unless it is the teacher's data."""
    ds = checkpoint_dataset(ckpt, dataset, data_dir)
    mine = ckpt["dataset"]
    if ds.name != mine["name"]:
        raise UserError(f"the checkpoint was trained on '{mine['name']}', not '{ds.name}'; "
                        f"pass --dataset {mine['name']} (a teacher's logits on other data teach nothing)")
    if ds.fingerprint != mine["fingerprint"]:
        raise UserError(f"the checkpoint was trained on other {ds.name} data (fingerprint {mine['fingerprint']}, "
                        f"these files {ds.fingerprint}); pass the --data-dir it was trained on")
    if ds.num_classes != int(mine["num_classes"]):
        raise UserError(f"the checkpoint has {mine['num_classes']} classes, {ds.name} has {ds.num_classes}")
    return ds


class LogitDump:
    """One dump, set up (checkpoint and data loaded and checked) but not yet run.

    ``model``, ``dataset`` and ``policy`` are public so tests can watch what the teacher sees.
    """

    def __init__(
        self,
        checkpoint: str | Path,
        dataset: str,
        out: str | Path,
        *,
        views: int | str,
        data_dir: str | None = None,
        seed: int = 0,
        dtype: str = "float16",
        top_k: int = 0,
        epochs: int | None = None,
        batch_size: int = 512,
        device: str = "auto",
        overwrite: bool = False,
        progress: bool = True,
        log: Callable[[str], None] | None = None,
    ):
        check_dump_options(views, seed=seed, epochs=epochs)
        if batch_size < 1:
            raise UserError(f"--batch-size must be a positive integer, got {batch_size}")
        if dtype not in schema.DTYPES:
            raise UserError(f"--dtype must be one of {', '.join(schema.DTYPES)}, got {dtype!r}")
        if not str(out).strip():
            raise UserError("--out is empty; name the cache file, e.g. --out cache/gen0.h5")
        self.out = Path(out)
        if self.out.is_dir():
            raise UserError(f"--out {self.out} is a folder; pass a file name such as {self.out / 'gen0.h5'}")
        self.seed, self.dtype, self.top_k = int(seed), dtype, int(top_k)
        self.batch_size, self.overwrite, self.show_progress = batch_size, overwrite, progress
        self.log = log or (lambda msg: None)
        self.checkpoint = Path(checkpoint)
        before = os.stat(self.checkpoint) if self.checkpoint.is_file() else None
        self.ckpt = load_checkpoint(self.checkpoint)
        self.device = resolve_device(device)
        #: the precision the teacher runs in: bf16 autocast on CUDA, float32 elsewhere (stored as ``autocast``)
        self.autocast = "bf16" if self.device.type == "cuda" else "none"
        self.dataset = teacher_dataset(self.ckpt, dataset, data_dir)
        self.policy = self.dataset.view_policy
        if self.policy.to_json() != self.ckpt["dataset"]["view_policy"]:
            raise UserError(f"the checkpoint's view policy {self.ckpt['dataset']['view_policy']} is not "
                            f"{self.dataset.name}'s {self.policy.to_json()}; retrain the teacher with this version")
        # --views epochs: one view per epoch of the student's schedule, by default the teacher's own
        if epochs is None:
            epochs = int((self.ckpt.get("config") or {}).get("epochs") or 0) or None
        try:
            self.plan = ViewPlan.parse(views, self.policy, epochs=epochs, seed=self.seed)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        self.views = self.plan.num_views
        schema.check_top_k(self.top_k, self.dataset.num_classes)
        # the model it holds, not the file's bytes; remembered when this process has just hashed the
        # unchanged file (ban's manifest), instead of a second pass over the weights
        self.teacher_digest = (loaded_checkpoint_digest(self.checkpoint, self.ckpt, before) if before is not None
                               else checkpoint_identity(self.ckpt))
        self._device_images: dict[str, torch.Tensor] = {}
        self.model = load_teacher(self.ckpt, self.device)
        self.mean, self.std = normalization(self.ckpt)
        self._estimate: dict[str, int] | None = None

    @property
    def estimate(self) -> dict[str, int]:
        """Bytes of this dump's cache file (:meth:`file_estimate` of the whole train and test splits).

        Measured on first use, which comes after the arithmetic disk-space check of a new file
        (:meth:`open_writer`): the measurement lays the file out in memory, and a 10^12-view plan
        used to allocate 931 GiB here before any check.
        """
        if self._estimate is None:
            self._estimate = self.file_estimate(self.layout())
        return self._estimate

    def storage_estimate(self, top_k: int) -> dict[str, int]:
        """Bytes of the arrays in the full-row (``top_k`` 0) or the top-k form (HDF5's own overhead aside)."""
        ds = self.dataset
        return schema.storage_bytes(self.views, ds.num_train, ds.num_classes, self.dtype, self.policy.num_params,
                                    int(ds.test_labels.shape[0]), top_k=top_k)

    def file_estimate(self, layout: dict[str, Any]) -> dict[str, int]:
        """Bytes of a cache file with ``layout`` (:meth:`CacheWriter.create`'s arguments; the whole dump's
        is :meth:`layout`, a shard's covers its samples): the arrays plus what HDF5 adds (superblock,
        headers, attributes), measured on the real layout in memory (a preflight that left it out let
        a disk that held the arrays fill mid-dump)."""
        num_test = len(layout["test_labels"])
        e = layout_array_bytes(layout)
        e["hdf5_overhead"] = CacheWriter.overhead_bytes(**layout)
        e["total"] = e["logits"] + e["view_params"] + e["hdf5_overhead"] + \
            num_test * layout["num_classes"] * np.dtype(layout["dtype"]).itemsize
        return e

    # -- what the file says about itself -------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """The attributes that decide whether an existing (partial) file is this dump."""
        ds = self.dataset
        values = {
            "format_version": schema.FORMAT_VERSION,
            "dataset": ds.name,
            "dataset_fingerprint": ds.fingerprint,
            "num_classes": ds.num_classes,
            "num_samples": ds.num_train,
            "num_test_samples": int(ds.test_labels.shape[0]),
            "num_views": self.views,
            "view_policy": self.policy.to_json(),
            "view_plan": self.plan.to_json(),
            "top_k": self.top_k,
            "seed": self.seed,
            "dtype": self.dtype,
            "teacher_digest": self.teacher_digest,
        }
        return {key: values[key] for key in schema.IDENTITY_ATTRS}

    def attrs(self) -> dict[str, Any]:
        from bandistill import __version__

        spec = self.ckpt["model"]
        return {
            **self.identity(),
            "split": "train",
            "teacher": schema.teacher_attr(
                spec["name"], self.teacher_digest, int(self.ckpt.get("generation") or 0),
                str(self.checkpoint.resolve()), self.ckpt.get("teacher"),
            ),
            "teacher_model": spec["name"],
            "normalization": json.dumps(self.ckpt["normalization"]),
            "classes": json.dumps(list(self.dataset.classes)),
            "device": self.device.type,
            "autocast": self.autocast,
            "batch_size": self.batch_size,
            "created_by": f"bandistill {__version__}",
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def differences(self, attrs: dict[str, Any], mine: dict[str, Any] | None = None) -> list[str]:
        """``key=theirs, not mine`` for each identity attribute in which ``attrs`` differ from this dump."""
        mine = self.identity() if mine is None else mine
        return [f"{k}={attrs.get(k)!r}, not {v!r}" for k, v in mine.items() if attrs.get(k) != v]

    def check_resumable(self, partial: str | Path, attrs: dict[str, Any], mine: dict[str, Any] | None = None) -> None:
        """Raise :class:`UserError` unless this run may finish the unfinished file ``partial`` (attributes ``attrs``).

        It must be the same dump (``mine``: this dump's identity, or a shard's), and computed in the
        same precision: a dump started on the CPU (float32) and finished on CUDA (bf16 autocast)
        would hold views of two numerics under one ``device`` attribute, so that resume is refused
        (finish it where it started, or start over) rather than recorded per view.
        """
        diff = self.differences(attrs, mine)
        if diff:
            raise UserError(f"an unfinished dump with other settings ({diff[0]}) is at {partial}; rerun it with "
                            "its own options to finish it, or pass --overwrite to start this one")
        theirs = (attrs.get("device"), attrs.get("autocast"))
        if None not in theirs and theirs != (self.device.type, self.autocast):
            precision = {"none": "float32", "bf16": "bf16 autocast"}
            raise UserError(f"the unfinished dump at {partial} was computed on {theirs[0]} "
                            f"({precision.get(theirs[1], theirs[1])}), this run would use {self.device.type} "
                            f"({precision[self.autocast]}): one cache must not mix the two; finish it with "
                            f"--device {theirs[0]}, or pass --overwrite to start over")

    def estimate_line(self) -> str:
        """The storage estimate in both forms (full rows and top-k), saying which one is written."""
        ds, full = self.dataset, self.storage_estimate(0)
        item = np.dtype(self.dtype).itemsize
        plan = "" if self.plan.kind == "fixed" else f" ({self.plan.kind})"
        line = (f"cache size: {ds.num_train} samples x {self.views} views{plan} x {ds.num_classes} classes x "
                f"{item} bytes ({self.dtype}) = {schema.human_bytes(full['logits'])} of logits, "
                f"{schema.human_bytes(full['total'])} in all")
        k = self.top_k or max(1, min(5, ds.num_classes // 10))
        top = self.storage_estimate(k)
        ratio = full["total"] / max(top["total"], 1)
        if self.top_k:
            return f"{line}; writing the top {k} and each row's log-sum-exp: {schema.human_bytes(top['total'])} ({ratio:.1f}x smaller)"
        return f"{line}; with --top-k {k}: {schema.human_bytes(top['total'])} ({ratio:.1f}x smaller)"

    # -- the work ------------------------------------------------------------------------
    def run(self, *, stop_after_views: int | None = None) -> dict[str, Any]:
        """Write (or finish) the cache and return a summary.

        ``stop_after_views``: raise :class:`DumpInterrupted` after writing that many views
        in this call (a test hook standing in for a killed process).
        """
        t0 = time.perf_counter()
        done = self.existing_result()
        if done is not None:
            return done
        try:
            return self._write(t0, stop_after_views)
        except (OSError, RuntimeError) as exc:  # HDF5 reports a full disk as either, with errno 28 in the text
            if is_disk_full(exc):
                raise disk_full_error(schema.partial_path(str(self.out))) from None
            raise

    def _write(self, t0: float, stop_after_views: int | None) -> dict[str, Any]:
        writer = self.open_writer()
        self.log(self.estimate_line())
        resumed = writer.views_done()
        written = 0
        background = BackgroundWriter()
        try:
            todo = [v for v in range(self.views) if v not in resumed]
            if resumed:
                self.log(f"resuming {writer.partial}: {len(resumed)} of {self.views} views already written")
            ds = self.dataset
            n = ds.num_train
            with make_progress(self.show_progress) as progress:
                task = progress.add_task("dump logits", total=(len(todo) * n) + (0 if writer.test_done else
                                         int(ds.test_labels.shape[0])), info="")
                step = lambda k: progress.update(task, advance=k)  # noqa: E731
                if not writer.test_done:
                    progress.update(task, info="test split")
                    writer.write_test(self.test_logits(0, int(ds.test_labels.shape[0]), on_batch=step))
                for v in todo:
                    if stop_after_views is not None and written >= stop_after_views:
                        background.wait()
                        raise DumpInterrupted(f"stopped after {written} views (test hook)")
                    progress.update(task, info=f"view {v + 1}/{self.views}")
                    logits, params = self.view_logits(v, 0, n, on_batch=step)
                    # written on a thread while the next view is computed (one write in flight, in order)
                    background.submit(lambda obj, view: writer.write_view(view, *obj), (logits, params), v)
                    written += 1
                background.wait()
            path = writer.finish()
        finally:
            with contextlib.suppress(BaseException):
                background.wait()  # a view being written is finished before the file is closed
            writer.close()
        return self.summary(path, written=written, resumed=len(resumed), seconds=time.perf_counter() - t0)

    def view_logits(self, view: int, start: int, stop: int, on_batch=None) -> tuple[np.ndarray, np.ndarray]:
        """The teacher's logits (checked storable) and the view parameters of train samples ``start:stop``.

        Batches start at ``start``: a sharded dump whose shards begin on batch boundaries
        runs exactly the batches of a single-process dump, hence the same bits.
        """
        params = self.plan.params(self.policy, view, np.arange(start, stop))
        logits = predict_logits(self.model, self._on_device("train_images")[start:stop], self.mean, self.std,
                                policy=self.policy, params=params, device=self.device,
                                batch_size=self.batch_size, on_batch=on_batch)
        return self._storable(logits, f"view {view}"), params.numpy()

    def test_logits(self, start: int, stop: int, on_batch=None) -> np.ndarray:
        """The teacher's logits (checked storable) on clean test samples ``start:stop``."""
        logits = predict_logits(self.model, self._on_device("test_images")[start:stop], self.mean, self.std,
                                device=self.device, batch_size=self.batch_size, on_batch=on_batch)
        return self._storable(logits, "test split")

    def _on_device(self, split: str) -> torch.Tensor:
        """``dataset.<split>`` (uint8) on the dump's device: moved there once per dump, not once per view."""
        cached = self._device_images.get(split)
        if cached is None:
            cached = self._device_images[split] = getattr(self.dataset, split).to(self.device)
        return cached

    def existing_result(self) -> dict[str, Any] | None:
        """What to do about a file already at ``--out``: None when there is none (or it may be replaced).

        A complete cache of this very dump: its summary (nothing to do). Another cache: refused,
        unless ``--overwrite``. A file that is not a bandistill cache (a checkpoint, an ONNX file,
        anything else) is refused even with ``--overwrite``, which replaces caches only.
        """
        if not self.out.exists():
            return None
        if not is_cache_file(self.out):
            raise UserError(f"--out {self.out} already exists and is not a bandistill cache; --overwrite replaces "
                            "caches only: choose another --out, or move that file away yourself")
        if self.overwrite:
            return None
        try:
            with open_cache(self.out) as cache:
                diff = self.differences(cache.info.attrs)
        except UserError as exc:
            raise UserError(f"--out {self.out} already exists and is not a complete cache of this dump ({exc}); "
                            "pass --overwrite to replace it or choose another --out") from None
        if diff:
            raise UserError(f"--out {self.out} already holds a dump with other settings ({diff[0]}); "
                            "pass --overwrite to replace it or choose another --out")
        self.log(f"{self.out} already holds this dump, complete; nothing to do")
        return self.summary(self.out, written=0, resumed=self.views, seconds=0.0, already_complete=True)

    def open_writer(self) -> CacheWriter:
        """``<out>.partial`` reopened when it holds this dump (refused when it holds another), else
        created after the disk-space check; either way its whole size is then reserved on disk."""
        return self.open_file(self.out, self.identity(), self.layout())

    def open_file(self, final: Path, mine: dict[str, Any], layout: dict[str, Any]) -> CacheWriter:
        """:meth:`open_writer` for any file of this dump: the whole cache, or one rank's shard
        (``mine``: its identity, ``layout``: :meth:`CacheWriter.create`'s arguments for it)."""
        partial = schema.partial_path(str(final))
        state = None if self.overwrite else read_partial_state(final)
        if state is not None and state["readable"]:
            self.check_resumable(partial, state["attrs"], mine)
            writer = CacheWriter.reopen(final)
        else:
            if state is not None:
                self.log(f"{partial} cannot be read (the dump was killed mid-write); starting it over")
            self.check_disk_space(layout_array_bytes(layout)["total"], Path(final).parent)  # before anything of that size exists
            writer = CacheWriter.create(final, **layout)
        size = self.estimate if Path(final) == self.out else self.file_estimate(layout)
        try:
            writer.reserve(size["total"])
        except OSError:
            writer.close()
            raise
        return writer

    def layout(self) -> dict[str, Any]:
        """The arguments of :meth:`CacheWriter.create` (but the file name) for this dump."""
        ds = self.dataset
        return dict(attrs=self.attrs(), num_views=self.views, num_samples=ds.num_train, num_classes=ds.num_classes,
                    num_params=self.policy.num_params, dtype=self.dtype, labels=ds.train_labels.numpy(),
                    test_labels=ds.test_labels.numpy(), top_k=self.top_k)

    def check_disk_space(self, need: int, folder: Path | None = None) -> None:
        """Raise :class:`UserError` unless ``folder`` (default: ``--out``'s) has ``need`` bytes free."""
        folder = folder if folder is not None else self.out.parent
        folder = folder if str(folder) else Path(".")
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
        if need > free:
            smaller = "fewer --views or --top-k" if self.dtype == "float16" else "--dtype float16, fewer --views or --top-k"
            raise UserError(f"the cache needs {schema.human_bytes(need)} but {folder} has "
                            f"{schema.human_bytes(free)} free; free space or use {smaller}")

    def _storable(self, logits: torch.Tensor, what: str) -> np.ndarray:
        arr = logits.numpy()
        if not np.isfinite(arr).all():
            raise UserError(f"the teacher's logits on the {what} are not finite (NaN or inf): the checkpoint "
                            f"{self.checkpoint} is broken; retrain it")
        if self.dtype == "float16":
            peak = float(np.abs(arr).max()) if arr.size else 0.0
            if peak > FLOAT16_MAX:
                raise UserError(f"the teacher's logits reach {peak:.3g}, beyond float16's range; "
                                "dump with --dtype float32")
        return arr

    def summary(self, path: Path, *, written: int, resumed: int, seconds: float,
                 already_complete: bool = False) -> dict[str, Any]:
        with open_cache(path) as cache:
            info = cache.info
            test_logits, test_labels = cache.read_test()
        acc, nll = accuracy_and_nll(torch.from_numpy(test_logits.astype(np.float32)),
                                    torch.from_numpy(test_labels))
        return {
            "cache": str(path),
            "dataset": info.dataset,
            "teacher": info.teacher_model,
            "teacher_digest": info.teacher_digest,
            "teacher_generation": info.teacher_generation,
            "views": info.num_views,
            "view_plan": info.view_plan.kind,
            "top_k": info.top_k,
            "views_written": written,
            "views_resumed": resumed,
            "samples": info.num_samples,
            "classes": info.num_classes,
            "seed": info.seed,
            "dtype": info.dtype,
            "estimated_bytes": self.estimate["total"],
            "file_bytes": path.stat().st_size,
            "teacher_test_accuracy": acc,
            "teacher_test_loss": nll,
            "complete": info.complete,
            "already_complete": already_complete,
            "device": str(self.device),
            "seconds": seconds,
        }


def dump_logits(
    checkpoint: str | Path,
    dataset: str,
    out: str | Path,
    *,
    views: int | str,
    data_dir: str | None = None,
    seed: int = 0,
    dtype: str = "float16",
    top_k: int = 0,
    epochs: int | None = None,
    batch_size: int = 512,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    stop_after_views: int | None = None,
) -> dict[str, Any]:
    """Dump ``checkpoint``'s logits on the ``views`` plan (K, ``"epochs"``, ``"all"``) of ``dataset``'s train split.

    ``top_k`` > 0 keeps each row's k largest logits and its log-sum-exp instead of the full
    row; ``epochs`` is the student's epoch count for ``views="epochs"`` (default: the teacher's; refused
    with any other plan, which it would not change).

    Resumable and idempotent: see the module docstring. Returns a summary dict (``cache``,
    ``views_written``, ``views_resumed``, ``already_complete``, ``teacher_test_accuracy``, ...).
    Raises :class:`UserError` on a checkpoint from other data or a conflicting ``out``.
    Under torchrun every rank dumps a shard of the samples (see :mod:`bandistill.sharded_dump`).
    """
    w = distributed.start(device)
    with contextlib.ExitStack() as held:
        with distributed.agreement():  # under torchrun: a bad checkpoint or --out on any rank stops every rank
            job = LogitDump(checkpoint, dataset, out, views=views, data_dir=data_dir, seed=seed, dtype=dtype,
                            top_k=top_k, epochs=epochs, batch_size=batch_size, device=device, overwrite=overwrite,
                            progress=progress and w.is_main, log=log if w.is_main else None)
            if w.is_main:  # one dump per cache file (another would start this one's .partial over)
                held.enter_context(file_lock(job.out))
        if w.size > 1:
            return run_sharded(job, stop_after_views=stop_after_views)
        return job.run(stop_after_views=stop_after_views)


def layout_array_bytes(layout: dict[str, Any]) -> dict[str, int]:
    """:func:`bandistill.cache.schema.storage_bytes` of a file with ``layout`` (:meth:`LogitDump.layout`'s keys):
    plain arithmetic, nothing laid out."""
    return schema.storage_bytes(layout["num_views"], layout["num_samples"], layout["num_classes"], layout["dtype"],
                                layout["num_params"], len(layout["test_labels"]), top_k=layout["top_k"])


def is_cache_file(path: str | Path) -> bool:
    """True when ``path`` is an HDF5 file that says it is a bandistill soft-target cache (complete or not)."""
    import h5py

    try:
        if not h5py.is_hdf5(path):
            return False
        with h5py.File(path, "r", locking=False) as f:
            return schema.decode_attr(f.attrs.get("format")) == schema.FORMAT
    except (OSError, ValueError):
        return False


def is_complete(path: str | Path) -> bool:
    """True when ``path`` is a complete cache this version reads (no exception on anything else)."""
    try:
        with open_cache(path):
            return True
    except UserError:
        return False
