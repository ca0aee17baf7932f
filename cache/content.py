"""One pass over a cache file: its content digest, its value checks and, for a student that keeps it in
memory, its arrays, from a single read of every byte.

A student used to read its whole cache three times before its first step: the value check
(NaN/inf, view parameters in range), the content digest it records in its lineage, and the
load into memory. Each is a full sequential read; :func:`content_pass` does all three on
each slab as it comes in (``benchmarks/identity_cost.py`` measures the saving).

The digest is the one :func:`bandistill.identity.cache_digest` gives for any HDF5 file
(it calls this pass with nothing to check or keep): sha256 over the identity attributes
(:func:`cache_identity_attrs`), then every dataset in name order, its name, dtype, shape
and bytes. Slab boundaries do not change it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Collection

import h5py
import numpy as np

from bandistill.cache import schema
from bandistill.errors import UserError

#: Bytes read per slab (along a dataset's first axis).
SLAB_BYTES = 64 << 20
#: Digest length in hex characters (64 bits: collisions are not a concern at this scale).
DIGEST_CHARS = 16


def cache_identity_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """The root attributes that say what a cache's arrays are (provenance left out).

    Everything is kept except :data:`bandistill.cache.schema.PROVENANCE_ATTRS` (when and
    where and with which batch size it was written), and the ``teacher`` JSON is reduced
    to the teacher's model, content digest and generation (its path and lineage are
    provenance too).
    """
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if key in schema.PROVENANCE_ATTRS:
            continue
        value = schema.decode_attr(value)
        if key == "teacher":
            try:
                t = json.loads(value)
                value = {k: t.get(k) for k in ("model", "checkpoint_digest", "generation")}
            except (TypeError, ValueError, AttributeError):
                pass
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        out[key] = value
    return out


@dataclass(frozen=True)
class ValueCheck:
    """What :func:`content_pass` checks values against: the cache's path (for the message), its view
    policy, and the largest value each view parameter may take (None: a policy this version does
    not know, which ``check_fits`` refuses where it matters)."""

    path: str
    view_policy: str
    param_max: np.ndarray | None


@dataclass
class ContentPass:
    """What one pass found: the digest (when asked for) and the datasets it was asked to keep."""

    digest: str | None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def content_pass(f: h5py.File, *, digest: bool = True, check: ValueCheck | None = None,
                 keep: Collection[str] = ()) -> ContentPass:
    """Read every dataset of ``f`` once, a slab at a time, and on each slab:

    * ``digest``: feed the content digest;
    * ``check``: refuse NaN/inf in any floating array or
      record field, and view parameters outside the cache's view policy (:class:`UserError`,
      one line: a student must not train on them);
    * ``keep``: copy the named datasets into arrays returned whole (read straight into them:
      no second copy).
    """
    h = hashlib.sha256() if digest else None
    if h is not None:
        h.update(json.dumps(cache_identity_attrs(dict(f.attrs)), sort_keys=True, default=str).encode())
    bounds = check.param_max if check is not None else None
    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    kept: dict[str, np.ndarray] = {}
    for name in sorted(names):
        ds = f[name]
        if h is not None:
            h.update(f"{name}|{ds.dtype.str}|{ds.shape}|".encode())
        floats = _float_fields(ds.dtype) if check is not None else []
        if ds.shape == ():
            value = np.asarray(ds[()])
            if h is not None:
                _update_array(h, "", value)
            if floats:
                _check_finite(check, name, value, floats, None)
            if name in keep:
                kept[name] = value
            continue
        out = np.empty(ds.shape, ds.dtype) if name in keep else None
        row = max(1, int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize)
        step = max(1, SLAB_BYTES // row)
        for start in range(0, ds.shape[0], step):
            stop = min(start + step, ds.shape[0])
            if out is not None:
                if ds.size:
                    ds.read_direct(out, np.s_[start:stop], np.s_[start:stop])
                part = out[start:stop]
            else:
                part = np.ascontiguousarray(ds[start:stop])
            if h is not None:
                h.update(memoryview(part).cast("B") if part.size else b"")
            if floats and part.size:
                _check_finite(check, name, part, floats, start)
            if name == schema.VIEW_PARAMS and bounds is not None:
                _check_params(check, part, bounds, start)
        if out is not None:
            kept[name] = out
    return ContentPass(h.hexdigest()[:DIGEST_CHARS] if h is not None else None, kept)


def _update_array(h: "hashlib._Hash", name: str, arr: np.ndarray) -> None:
    arr = np.ascontiguousarray(arr)
    h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
    h.update(memoryview(arr).cast("B") if arr.size else b"")


def _float_fields(dtype: np.dtype) -> list[str | None]:
    """[None] for a floating array; the floating fields of a record array (a top-k cache's values and
    log-sum-exps); [] otherwise."""
    if dtype.kind == "f":
        return [None]
    return [n for n in (dtype.names or ()) if dtype[n].base.kind == "f"]


def _check_finite(check: ValueCheck, name: str, part: np.ndarray, fields: list[str | None],
                  start: int | None) -> None:
    if all(_all_finite(np.ascontiguousarray(part if n is None else part[n])) for n in fields):
        return
    where = f" (from row {start} of axis 0)" if start is not None else ""
    raise UserError(f"cache {check.path} is damaged: {name} holds NaN or inf values{where}; dump the cache again")


def _all_finite(arr: np.ndarray) -> bool:
    if arr.dtype == np.float16:  # exponent bits all set means inf or NaN; numpy's isfinite on float16 is slow
        return not bool((np.bitwise_and(arr.view(np.uint16), 0x7C00) == 0x7C00).any())
    return bool(np.isfinite(arr).all())


def _check_params(check: ValueCheck, part: np.ndarray, hi: np.ndarray, start: int) -> None:
    """``part``: view parameters of views ``start, start + 1, ...`` ``(views, samples, P)``."""
    if not part.size:
        return
    bad = ((part < 0) | (part > hi[: part.shape[-1]])).reshape(len(part), -1).any(axis=1)
    if bad.any():
        v = start + int(np.flatnonzero(bad)[0])
        raise UserError(f"cache {check.path} is damaged: view_params of view {v} are out of range for its view "
                        f"policy {check.view_policy}; dump the cache again")
