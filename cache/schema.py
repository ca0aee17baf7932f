"""The soft-target cache file: names, version and layout (the contract other tools read).

One HDF5 file per teacher. Everything a reader needs to decide whether the file fits
the data it trains on is in root attributes; the arrays are:

========================  =========================  ==========================================
dataset                   shape                      contents
========================  =========================  ==========================================
``logits``                ``(views, samples, C)``    teacher logits on view v of train sample i
                                                     (full rows, ``top_k == 0``), or instead:
``topk``                  ``(views, samples)``       one record per row (``top_k == k > 0``):
                                                     ``values`` (k,) the k largest logits,
                                                     ``indices`` (k,) their classes (uint8 up to
                                                     256 classes), ``logsumexp`` of the full row
``view_params``           ``(views, samples, P)``    int16 parameters of that view (see bandistill/data/views.py)
``labels``                ``(samples,)``             int64 train labels
``test_logits``           ``(test_samples, C)``      teacher logits on the clean test split
``test_labels``           ``(test_samples,)``        int64 test labels
``views_complete``        ``(views,)``               uint8, 1 once view v is written and flushed
========================  =========================  ==========================================

Format 2 adds the root attributes ``view_plan`` (JSON: ``kind`` fixed / epochs / all,
``num_views``, ``seed``; see :class:`bandistill.data.views.ViewPlan`) and ``top_k``, and the
``topk`` form. From a ``topk`` record the top-k probabilities are exact,
``exp(value - logsumexp)``, and the remaining mass is spread evenly over the other C - k
classes (FKD's "marginal smoothing", Shen & Xing, ECCV 2022); see
:mod:`bandistill.soft_targets`. Version 1 files (full rows, K fixed views, no
``view_plan``) still read as ``fixed`` plans of ``num_views`` views.

``logits`` (or ``topk``) and ``view_params`` are stored contiguously (no chunking, no compression), so
view ``v`` is one sequential hyperslab read: ``f["logits"][v]``. gzip shrinks logits by
~14% and costs an order of magnitude in read time, and per-sample fancy indexing is far
slower still, so neither is used; readers load a whole view (or all of them) and index in
memory.

A dump writes ``<out>.partial`` and renames it to ``<out>`` only once every view and the
test logits are written and the root attribute ``complete`` is true, so a file under the
final name is always whole. A reader still checks ``complete`` and ``views_complete``
(someone may pass the ``.partial`` file, or copy one), and that every attribute has the type
a dump writes and every array the stored type and shape the attributes name (``logits`` and
``test_logits`` in ``dtype``, ``view_params`` with the view policy's number of columns):
int32 logits read under a float16 label would teach a far sharper teacher.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

#: Value of the root attribute ``format``.
FORMAT = "bandistill-soft-targets"
#: Bumped on any change a reader of the previous version would misread.
FORMAT_VERSION = 2
#: Versions this code reads (1: full rows of K fixed views only).
READABLE_VERSIONS = (1, 2)

LOGITS = "logits"
TOPK = "topk"
VIEW_PARAMS = "view_params"
LABELS = "labels"
TEST_LOGITS = "test_logits"
TEST_LABELS = "test_labels"
VIEWS_COMPLETE = "views_complete"

#: Storage dtypes a dump may write logits in (float16 halves the file; see verify tolerances).
DTYPES = ("float16", "float32")

#: Suffix of the file a dump writes into before it is complete.
PARTIAL_SUFFIX = ".partial"

#: Root attributes every complete file carries (all scalars or JSON strings).
REQUIRED_ATTRS = (
    "format",
    "format_version",
    "dataset",
    "dataset_fingerprint",
    "split",
    "num_classes",
    "num_samples",
    "num_test_samples",
    "num_views",
    "view_policy",
    "seed",
    "dtype",
    "teacher",
    "complete",
    "test_complete",
)
#: Root attributes version 2 adds.
REQUIRED_ATTRS_V2 = ("view_plan", "top_k")

#: Attributes that define what a dump computes: a partial file is resumed only when all of
#: these equal what the new run would write (device and batch size may change).
IDENTITY_ATTRS = (
    "format_version",
    "dataset",
    "dataset_fingerprint",
    "num_classes",
    "num_samples",
    "num_test_samples",
    "num_views",
    "view_policy",
    "seed",
    "dtype",
    "teacher_digest",
    "view_plan",
    "top_k",
)


#: Root attributes that record how and when a dump ran, not what its arrays are: left out of the
#: cache's content identity (:func:`bandistill.identity.cache_digest`), so a cache dumped again
#: with the same content has the same digest. A writer that records more of this kind lists it here.
PROVENANCE_ATTRS = ("created_at", "created_by", "device", "autocast", "batch_size")


def partial_path(path: str) -> str:
    """Where the dump for ``path`` writes until it is complete."""
    return str(path) + PARTIAL_SUFFIX


def decode_attr(value: Any) -> Any:
    """h5py hands back numpy scalars and sometimes bytes; make plain Python values."""
    if isinstance(value, bytes):
        return value.decode()
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        return value.item()
    return value


def teacher_attr(name: str, digest: str, generation: int, checkpoint: str, lineage: Any) -> str:
    """The ``teacher`` root attribute: JSON with the model name and checkpoint digest."""
    return json.dumps(
        {"model": name, "checkpoint_digest": digest, "generation": generation, "checkpoint": checkpoint,
         "lineage": lineage},
        sort_keys=True,
        default=str,
    )


def index_dtype(num_classes: int) -> str:
    """The smallest unsigned integer type that holds a class index."""
    return "uint8" if num_classes <= 256 else "uint16" if num_classes <= 65536 else "uint32"


def topk_dtype(k: int, num_classes: int, dtype: str) -> np.dtype:
    """The record of one row in the ``topk`` form: values (k,), indices (k,), logsumexp."""
    return np.dtype([("values", dtype, (k,)), ("indices", index_dtype(num_classes), (k,)), ("logsumexp", dtype)])


def check_top_k(top_k: int, num_classes: int) -> None:
    """Raise :class:`UserError` unless ``0 <= top_k < num_classes`` (0 keeps full rows)."""
    from bandistill.errors import UserError

    if top_k < 0 or (top_k and top_k >= num_classes):
        raise UserError(f"--top-k must be 0 (full rows) or between 1 and {num_classes - 1} for {num_classes} "
                        f"classes, got {top_k}")


def to_topk(logits: np.ndarray, k: int, dtype: str) -> np.ndarray:
    """Full float32 rows ``(N, C)`` -> ``topk`` records ``(N,)``: the k largest logits (largest first,
    ties to the lower class), their classes, and the row's log-sum-exp (computed in float64)."""
    logits = np.asarray(logits, dtype=np.float32)
    n, c = logits.shape
    rec = np.empty(n, dtype=topk_dtype(k, c, dtype))
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    rec["indices"] = order
    rec["values"] = np.take_along_axis(logits, order, axis=1)
    x = logits.astype(np.float64)
    peak = x.max(axis=1, keepdims=True) if c else np.zeros((n, 1))
    rec["logsumexp"] = (peak[:, 0] + np.log(np.exp(x - peak).sum(axis=1))) if n else 0
    return rec


def row_bytes(num_classes: int, dtype: str, top_k: int = 0) -> int:
    """Bytes one stored row takes: C logits, or k values + k indices + one log-sum-exp."""
    if top_k:
        return topk_dtype(top_k, num_classes, dtype).itemsize
    return num_classes * np.dtype(dtype).itemsize


def storage_bytes(num_views: int, num_samples: int, num_classes: int, dtype: str,
                  num_params: int = 3, num_test: int = 0, top_k: int = 0) -> dict[str, int]:
    """Bytes the arrays of a dump take: soft targets (``logits``, full or top-k), view params, the rest."""
    item = np.dtype(dtype).itemsize
    logits = num_views * num_samples * row_bytes(num_classes, dtype, top_k)
    params = num_views * num_samples * num_params * 2
    other = num_samples * 8 + num_test * (num_classes * item + 8) + num_views
    return {"logits": logits, "view_params": params, "other": other, "total": logits + params + other}


def human_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, like disk sizes)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} TB"  # pragma: no cover
