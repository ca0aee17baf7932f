"""The soft-target cache file: names, version and layout (the contract other tools read).

One HDF5 file per teacher. Everything a reader needs to decide whether the file fits
the data it trains on is in root attributes; the arrays are:

========================  =========================  ==========================================
dataset                   shape                      contents
========================  =========================  ==========================================
``logits``                ``(views, samples, C)``    teacher logits on view v of train sample i
``view_params``           ``(views, samples, P)``    int16 parameters of that view (see views.py)
``labels``                ``(samples,)``             int64 train labels
``test_logits``           ``(test_samples, C)``      teacher logits on the clean test split
``test_labels``           ``(test_samples,)``        int64 test labels
``views_complete``        ``(views,)``               uint8, 1 once view v is written and flushed
========================  =========================  ==========================================

``logits`` and ``view_params`` are stored contiguously (no chunking, no compression), so
view ``v`` is one sequential hyperslab read: ``f["logits"][v]``. gzip shrinks logits by
~14% and costs an order of magnitude in read time, and per-sample fancy indexing is far
slower still, so neither is used; readers load a whole view (or all of them) and index in
memory.

A dump writes ``<out>.partial`` and renames it to ``<out>`` only once every view and the
test logits are written and the root attribute ``complete`` is true, so a file under the
final name is always whole. A reader still checks ``complete`` and ``views_complete``
(someone may pass the ``.partial`` file, or copy one).
"""

from __future__ import annotations

import json
from typing import Any

#: Value of the root attribute ``format``.
FORMAT = "bandistill-soft-targets"
#: Bumped on any change a reader of the previous version would misread.
FORMAT_VERSION = 1

LOGITS = "logits"
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


def storage_bytes(num_views: int, num_samples: int, num_classes: int, dtype: str,
                  num_params: int = 3, num_test: int = 0) -> dict[str, int]:
    """Bytes the arrays of a dump take: logits, view params, and the rest (labels, test logits)."""
    item = 2 if dtype == "float16" else 4
    logits = num_views * num_samples * num_classes * item
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
