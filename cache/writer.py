"""Writing a soft-target cache: create (or reopen) the ``.partial`` file, one view at a time.

The order of writes is what makes a dump resumable and a partial file impossible to take
for a whole one:

1. the file is created as ``<out>.partial`` with every array allocated and
   ``views_complete`` all zero, ``complete`` false;
2. for each view: write its logits and parameters, flush, *then* set
   ``views_complete[v] = 1`` and flush again (a crash between the two only redoes v);
3. when every view and the test logits are in: ``complete = true``, close, fsync, and
   rename onto ``<out>``.

The file is opened with HDF5's default (earliest) format, whose superblock carries no
"open for writing" flag, so a file left by a killed process can be reopened; if it cannot
(the kill landed inside a metadata write), :func:`read_partial_state` says so and the
dump starts that file over.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from bandistill.cache import schema
from bandistill.errors import UserError


class CacheWriter:
    """An open ``.partial`` cache file being filled view by view."""

    def __init__(self, partial: str | os.PathLike, final: str | os.PathLike, f: h5py.File):
        self.partial = Path(partial)
        self.final = Path(final)
        self.f = f

    # -- opening -----------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        final: str | os.PathLike,
        *,
        attrs: dict[str, Any],
        num_views: int,
        num_samples: int,
        num_classes: int,
        num_params: int,
        dtype: str,
        labels: np.ndarray,
        test_labels: np.ndarray,
        top_k: int = 0,
    ) -> "CacheWriter":
        """Start a new ``<final>.partial`` (replacing any old partial file).

        ``top_k`` > 0 stores each row as its k largest logits, their classes and the row's
        log-sum-exp (the ``topk`` form); 0 stores full rows in ``logits``.
        """
        if dtype not in schema.DTYPES:
            raise UserError(f"--dtype must be one of {', '.join(schema.DTYPES)}, got {dtype!r}")
        final = Path(final)
        partial = Path(schema.partial_path(str(final)))
        partial.parent.mkdir(parents=True, exist_ok=True)
        if partial.exists():
            partial.unlink()
        f = _open(partial, "w")
        try:
            _lay_out(f, attrs=attrs, num_views=num_views, num_samples=num_samples, num_classes=num_classes,
                     num_params=num_params, dtype=dtype, labels=labels, test_labels=test_labels, top_k=top_k)
        except BaseException:
            f.close()
            raise
        return cls(partial, final, f)

    @staticmethod
    def overhead_bytes(**layout: Any) -> int:
        """Bytes of the file beyond its unwritten arrays (``create``'s arguments but ``final``): HDF5's
        superblock, object headers and attributes, and the small arrays written at creation.

        Measured by laying the file out in memory, so the disk-space preflight counts what HDF5
        really adds instead of guessing it.
        """
        with h5py.File(f"overhead-{id(layout)}", "w", driver="core", backing_store=False, block_size=1) as f:
            _lay_out(f, **layout)
            f.flush()
            return int(f.id.get_filesize())

    @classmethod
    def reopen(cls, final: str | os.PathLike) -> "CacheWriter":
        """Reopen an existing ``<final>.partial`` to continue filling it."""
        final = Path(final)
        partial = Path(schema.partial_path(str(final)))
        return cls(partial, final, _open(partial, "r+"))

    def reserve(self, total_bytes: int) -> None:
        """Allocate the file's whole size on disk now (``posix_fallocate``), so a full disk is found here,
        before any view is written, and not in the middle of an HDF5 write (which leaves HDF5 with
        metadata it cannot flush; h5py then crashes the process at exit). Raises ``OSError`` (ENOSPC,
        EFBIG) when the space is not there; filesystems that cannot preallocate are left as they are.
        """
        fd = os.open(self.partial, os.O_WRONLY)
        try:
            os.posix_fallocate(fd, 0, int(total_bytes))
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
        finally:
            os.close(fd)

    # -- state -------------------------------------------------------------------------
    def views_done(self) -> list[int]:
        return [int(v) for v in np.flatnonzero(self.f[schema.VIEWS_COMPLETE][()])]

    @property
    def test_done(self) -> bool:
        return bool(self.f.attrs["test_complete"])

    # -- writing -----------------------------------------------------------------------
    @property
    def top_k(self) -> int:
        return int(self.f.attrs.get("top_k", 0))

    def write_view(self, view: int, logits: np.ndarray, params: np.ndarray) -> None:
        """Store one whole view from its full float32 logits (kept whole, or as top-k records)."""
        if self.top_k:
            n, c = self.f[schema.TOPK].shape[1], int(self.f.attrs["num_classes"])
            if logits.shape != (n, c):
                raise ValueError(f"view {view}: logits shape {logits.shape}, file expects {(n, c)}")
            logits = schema.to_topk(logits, self.top_k, str(self.f.attrs["dtype"]))
        self.write_stored_view(view, logits, params)

    def write_stored_view(self, view: int, stored: np.ndarray, params: np.ndarray) -> None:
        """Store one whole view already in the file's form, flush, then mark it complete and flush again."""
        ds = self.f[schema.TOPK if self.top_k else schema.LOGITS]
        if stored.shape != ds.shape[1:]:
            raise ValueError(f"view {view}: soft targets of shape {stored.shape}, file expects {ds.shape[1:]}")
        ds[view] = stored.astype(ds.dtype, copy=False)
        self.f[schema.VIEW_PARAMS][view] = np.asarray(params, dtype=np.int16)
        self.f.flush()
        self.f[schema.VIEWS_COMPLETE][view] = 1
        self.f.flush()

    def write_test(self, logits: np.ndarray) -> None:
        ds = self.f[schema.TEST_LOGITS]
        ds[...] = logits.astype(ds.dtype, copy=False)
        self.f.flush()
        self.f.attrs["test_complete"] = True
        self.f.flush()

    def set_attrs(self, **attrs: Any) -> None:
        for key, value in attrs.items():
            self.f.attrs[key] = value

    def finish(self) -> Path:
        """Mark the file complete and move it onto the final name (atomically)."""
        missing = sorted(set(range(int(self.f.attrs["num_views"]))) - set(self.views_done()))
        if missing or not self.test_done:
            raise RuntimeError(f"cannot finish {self.partial}: views {missing} or test logits missing")
        self.f.attrs["complete"] = True
        self.f.flush()
        self.f.close()
        fd = os.open(self.partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.partial, self.final)
        return self.final

    def close(self) -> None:
        if self.f.id.valid:
            self.f.close()

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _lay_out(f: h5py.File, *, attrs: dict[str, Any], num_views: int, num_samples: int, num_classes: int,
             num_params: int, dtype: str, labels: np.ndarray, test_labels: np.ndarray, top_k: int = 0) -> None:
    """Write a new cache's attributes and allocate its arrays (``views_complete`` all zero, not complete)."""
    for key, value in attrs.items():
        f.attrs[key] = value
    if "view_plan" not in attrs:  # K fixed views, as version 1 had
        f.attrs["view_plan"] = json.dumps({"kind": "fixed", "num_views": int(num_views),
                                           "seed": int(attrs.get("seed", 0))}, sort_keys=True)
    f.attrs["format"] = schema.FORMAT
    f.attrs["format_version"] = schema.FORMAT_VERSION
    f.attrs["num_views"] = num_views
    f.attrs["num_samples"] = num_samples
    f.attrs["num_classes"] = num_classes
    f.attrs["num_test_samples"] = int(len(test_labels))
    f.attrs["dtype"] = dtype
    f.attrs["top_k"] = int(top_k)
    f.attrs["complete"] = False
    f.attrs["test_complete"] = False
    # Contiguous (no chunks= argument, no compression): view v is one sequential read.
    if top_k:
        f.create_dataset(schema.TOPK, shape=(num_views, num_samples), dtype=schema.topk_dtype(top_k, num_classes, dtype))
    else:
        f.create_dataset(schema.LOGITS, shape=(num_views, num_samples, num_classes), dtype=dtype)
    f.create_dataset(schema.VIEW_PARAMS, shape=(num_views, num_samples, num_params), dtype="int16")
    f.create_dataset(schema.LABELS, data=np.asarray(labels, dtype=np.int64))
    f.create_dataset(schema.TEST_LOGITS, shape=(len(test_labels), num_classes), dtype=dtype)
    f.create_dataset(schema.TEST_LABELS, data=np.asarray(test_labels, dtype=np.int64))
    f.create_dataset(schema.VIEWS_COMPLETE, data=np.zeros(num_views, dtype=np.uint8))
    f.flush()


def read_partial_state(final: str | os.PathLike) -> dict[str, Any] | None:
    """Attributes and finished views of ``<final>.partial``; None when absent.

    Returns ``{"readable": False}`` when the file exists but HDF5 cannot open it (a dump
    killed in the middle of a metadata write): such a file can only be started over.
    """
    partial = Path(schema.partial_path(str(final)))
    if not partial.exists():
        return None
    try:
        with _open(partial, "r") as f:
            attrs = {k: schema.decode_attr(v) for k, v in f.attrs.items()}
            done = [int(v) for v in np.flatnonzero(f[schema.VIEWS_COMPLETE][()])]
            if attrs.get("format") != schema.FORMAT:
                return {"readable": False}
            return {"readable": True, "attrs": attrs, "views_done": done}
    except UserError:
        raise
    except (OSError, KeyError, ValueError):
        return {"readable": False}


def _open(path: Path, mode: str) -> h5py.File:
    try:
        return h5py.File(path, mode)
    except BlockingIOError:
        raise UserError(f"{path} is open in another process (another dump writing it?); wait for it or stop it") from None
    except OSError as exc:
        if "lock" in str(exc).lower():  # e.g. ENOSYS on some network filesystems
            raise UserError(
                f"cannot lock {path} on this filesystem; set HDF5_USE_FILE_LOCKING=FALSE or write the cache "
                "to a local disk"
            ) from None
        raise
