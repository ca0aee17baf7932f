"""Reading a soft-target cache, and refusing one that does not fit.

:func:`open_cache` checks that a path is a complete cache of a format this version reads
(else :class:`~bandistill.errors.UserError`, one line); :meth:`SoftTargetCache.check_fits`
compares it with the data a student trains on. Arrays are read a whole view at a time
(one sequential read each); nothing here reads per sample.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from bandistill.cache import schema
from bandistill.cache.content import ContentPass, ValueCheck, content_pass
from bandistill.errors import UserError
from bandistill.data.views import VIEW_PLANS, ViewPlan

if TYPE_CHECKING:
    from bandistill.data.views import ViewPolicy


@dataclass(frozen=True)
class CacheInfo:
    """The root attributes of a cache, decoded."""

    path: str
    format_version: int
    dataset: str
    dataset_fingerprint: str
    num_classes: int
    num_samples: int
    num_test_samples: int
    num_views: int
    view_policy: str
    seed: int
    dtype: str
    teacher: dict[str, Any]
    complete: bool
    attrs: dict[str, Any]
    #: Which views the cache holds and how a student walks through them (version 1: K fixed views).
    view_plan: ViewPlan
    #: 0: full rows in ``logits``; k > 0: ``topk`` records.
    top_k: int = 0

    @property
    def targets_name(self) -> str:
        """The dataset that holds the train soft targets: ``logits`` or ``topk``."""
        return schema.TOPK if self.top_k else schema.LOGITS

    @property
    def teacher_model(self) -> str:
        return str(self.teacher.get("model", "?"))

    @property
    def teacher_digest(self) -> str:
        return str(self.teacher.get("checkpoint_digest", "?"))

    @property
    def teacher_generation(self) -> int:
        return int(self.teacher.get("generation", 0))


class SoftTargetCache:
    """A complete cache file opened for reading (use as a context manager, or call close())."""

    def __init__(self, path: Path, f: h5py.File, info: CacheInfo):
        self.path = path
        self.f = f
        self.info = info

    # -- arrays (whole views only) -------------------------------------------------------
    def read_view(self, view: int) -> np.ndarray:
        """Logits ``(samples, classes)`` of one view of a full-row cache, in the stored dtype: one sequential read."""
        if self.info.top_k:
            raise ValueError(f"{self.path} keeps the top {self.info.top_k} logits only; use read_stored_view")
        return self.f[schema.LOGITS][view]

    def read_stored_view(self, view: int) -> np.ndarray:
        """One view's soft targets as stored (one sequential read): logits ``(N, C)`` or ``topk`` records ``(N,)``."""
        return read_stored_view(self.f, self.info.top_k, view)

    def read_stored_all(self) -> np.ndarray:
        """Every view's soft targets as stored: ``(K, N, C)`` logits or ``(K, N)`` records (one read)."""
        return self.f[self.info.targets_name][()]

    def read_view_params(self, view: int) -> np.ndarray:
        return self.f[schema.VIEW_PARAMS][view]

    def read_logits(self) -> np.ndarray:
        """All logits ``(views, samples, classes)`` of a full-row cache: one sequential read of the whole array."""
        if self.info.top_k:
            raise ValueError(f"{self.path} keeps the top {self.info.top_k} logits only; use read_stored_all")
        return self.f[schema.LOGITS][()]

    def read_view_params_all(self) -> np.ndarray:
        return self.f[schema.VIEW_PARAMS][()]

    def read_labels(self) -> np.ndarray:
        return self.f[schema.LABELS][()]

    def read_test(self) -> tuple[np.ndarray, np.ndarray]:
        """Teacher logits on the clean test split, and the test labels."""
        return self.f[schema.TEST_LOGITS][()], self.f[schema.TEST_LABELS][()]

    def load(self, *, keep_targets: bool) -> ContentPass:
        """One pass over the whole file (what a student pays once at start-up): the value check
        (:func:`check_values`), the content digest (:func:`bandistill.identity.cache_digest`) and
        the test split, plus with ``keep_targets`` the soft targets and view parameters of every view.
        Raises :class:`UserError` on NaN/inf or out-of-range view parameters."""
        keep = [schema.TEST_LOGITS, schema.TEST_LABELS]
        if keep_targets:
            keep += [self.info.targets_name, schema.VIEW_PARAMS]
        return content_pass(self.f, check=value_check(self), keep=keep)

    @property
    def logits_nbytes(self) -> int:
        """Bytes of the train soft targets (full rows or top-k records)."""
        ds = self.f[self.info.targets_name]
        return int(np.prod(ds.shape)) * ds.dtype.itemsize

    # -- validation ----------------------------------------------------------------------
    def check_fits(
        self,
        *,
        dataset: str,
        fingerprint: str,
        num_classes: int,
        num_samples: int,
        view_policy: str,
        what: str = "the student",
    ) -> None:
        """Raise :class:`UserError` (one line naming the mismatch) unless the cache fits."""
        i, p = self.info, self.path
        if i.dataset != dataset:
            raise UserError(f"cache {p} holds logits for dataset '{i.dataset}', but {what} trains on '{dataset}'; "
                            "dump a cache for this dataset")
        if i.num_classes != num_classes:
            raise UserError(f"cache {p} has {i.num_classes} classes, but {what}'s data has {num_classes}; "
                            "dump a cache from a teacher of this dataset")
        if i.num_samples != num_samples:
            raise UserError(f"cache {p} has {i.num_samples} train samples, but {what}'s train split has "
                            f"{num_samples} (another --val-split?); dump a cache with the same split")
        if i.dataset_fingerprint != fingerprint:
            raise UserError(f"cache {p} was dumped on other data (fingerprint {i.dataset_fingerprint}, "
                            f"this data {fingerprint}); dump a cache from this data")
        if _canonical_policy(i.view_policy) != _canonical_policy(view_policy):
            raise UserError(f"cache {p} was made with view policy {i.view_policy}, but {what} uses "
                            f"{view_policy}; dump a cache with this policy")

    def close(self) -> None:
        if self.f.id.valid:
            self.f.close()

    def __enter__(self) -> "SoftTargetCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_values(cache: SoftTargetCache) -> None:
    """Raise :class:`UserError` unless every floating array is finite and every view parameter is in range.

    A NaN or inf logit would train a student on garbage with exit 0, and a crop offset beyond
    the policy's padding indexes outside the image. Generic over the file's datasets (a format
    with top-k values or log-sum-exps is covered); reads the file once, a slab at a time. A
    student that also needs the digest and the arrays uses :meth:`SoftTargetCache.load` instead.
    """
    content_pass(cache.f, digest=False, check=value_check(cache))


def value_check(cache: SoftTargetCache) -> ValueCheck:
    """What :func:`~bandistill.cache.content.content_pass` checks this cache's values against."""
    policy = view_policy_of(cache.info)
    if policy is None:
        hi = None
    elif hasattr(policy, "pad"):  # pad-crop-flip: offsets within the padding
        hi = np.array([2 * policy.pad, 2 * policy.pad, 1 if policy.flip else 0])
    else:  # random-resized-crop: a box (top, left, height, width) in an int16-sized image, and a flip
        hi = np.array([32767, 32767, 32767, 32767, 1 if policy.flip else 0])
    return ValueCheck(str(cache.path), cache.info.view_policy, hi)


def read_stored_view(f: h5py.File, top_k: int, view: int) -> np.ndarray:
    """View ``view`` of an open cache (complete, partial or a shard) as stored: one sequential read."""
    return f[schema.TOPK if top_k else schema.LOGITS][view]


def _canonical_policy(text: str) -> str:
    try:
        return json.dumps(json.loads(text), sort_keys=True)
    except (TypeError, ValueError):
        return str(text)


RESUME_HINT = "run the same 'bandistill dump-logits' command again to resume it"


def open_cache(path: str | os.PathLike, *, require_complete: bool = True) -> SoftTargetCache:
    """Open a cache for reading; :class:`UserError` with one line when it is not a usable one."""
    path = Path(path)
    partial = Path(schema.partial_path(str(path)))
    if not path.exists():
        if partial.exists():
            done = _partial_progress(partial)
            raise UserError(f"cache {path} is not finished: the dump stopped with {done} in {partial}; "
                            f"{RESUME_HINT}")
        raise UserError(f"cache {path} does not exist; write it with 'bandistill dump-logits --out {path}'")
    if path.is_dir():
        raise UserError(f"cache {path} is a folder, not an HDF5 file; pass the .h5 file from 'bandistill dump-logits'")
    if not h5py.is_hdf5(path):
        raise UserError(f"{path} is not an HDF5 file; pass the .h5 cache written by 'bandistill dump-logits'")
    try:
        # A file under its final name is complete and never written again: no lock needed
        # (and some network filesystems cannot lock).
        f = h5py.File(path, "r", locking=False)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} is not a readable HDF5 file ({first}); dump the cache again") from None
    try:
        info = _read_info(path, f)
        if require_complete:
            _check_complete(path, f, info)
    except BaseException:
        f.close()
        raise
    return SoftTargetCache(path, f, info)


def read_info(path: str | os.PathLike) -> CacheInfo:
    """The attributes of a (complete) cache, without keeping it open."""
    with open_cache(path) as cache:
        return cache.info


def _read_info(path: Path, f: h5py.File) -> CacheInfo:
    attrs = {k: schema.decode_attr(v) for k, v in f.attrs.items()}
    if attrs.get("format") != schema.FORMAT:
        raise UserError(f"{path} is an HDF5 file but not a bandistill soft-target cache; "
                        "pass the file written by 'bandistill dump-logits'")
    version = attrs.get("format_version")
    if version not in schema.READABLE_VERSIONS:
        newer = isinstance(version, int) and version > schema.FORMAT_VERSION
        fix = "upgrade bandistill" if newer else "dump the cache again with this version"
        raise UserError(f"cache {path} has format version {version}, this bandistill reads versions "
                        f"{', '.join(map(str, schema.READABLE_VERSIONS))}; {fix}")
    missing = [a for a in schema.REQUIRED_ATTRS if a not in attrs]
    if version >= 2:
        missing += [a for a in schema.REQUIRED_ATTRS_V2 if a not in attrs]
    top_k = int(attrs.get("top_k", 0)) if not missing and _is_int(attrs.get("top_k", 0)) else 0
    targets = schema.TOPK if top_k else schema.LOGITS
    missing += [d for d in (targets, schema.VIEW_PARAMS, schema.LABELS, schema.VIEWS_COMPLETE,
                            schema.TEST_LOGITS, schema.TEST_LABELS) if d not in f]
    if missing:
        raise UserError(f"cache {path} is damaged ({missing[0]} is missing); dump the cache again")
    info = CacheInfo(
        path=str(path),
        format_version=int(version),
        dataset=_attr(path, attrs, "dataset", str),
        dataset_fingerprint=_attr(path, attrs, "dataset_fingerprint", str),
        num_classes=_attr(path, attrs, "num_classes", int, low=1),
        num_samples=_attr(path, attrs, "num_samples", int, low=0),
        num_test_samples=_attr(path, attrs, "num_test_samples", int, low=0),
        num_views=_attr(path, attrs, "num_views", int, low=1),
        view_policy=_attr(path, attrs, "view_policy", str),
        seed=_attr(path, attrs, "seed", int),
        dtype=_attr(path, attrs, "dtype", str),
        teacher=_teacher(path, attrs["teacher"]),
        complete=_attr(path, attrs, "complete", bool),
        attrs=attrs,
        view_plan=_view_plan(path, attrs),
        top_k=_attr(path, attrs, "top_k", int, low=0) if "top_k" in attrs else 0,
    )
    if info.dtype not in schema.DTYPES:
        raise UserError(f"cache {path} is damaged: its dtype attribute is {info.dtype!r}, not one of "
                        f"{', '.join(schema.DTYPES)}; dump the cache again")
    k, n, c = info.num_views, info.num_samples, info.num_classes
    if info.view_plan.num_views != k:
        raise UserError(f"cache {path} is damaged: its view plan names {info.view_plan.num_views} views, "
                        f"num_views says {k}; dump the cache again")
    shapes = {
        targets: (k, n) if top_k else (k, n, c),
        schema.LABELS: (n,),
        schema.VIEWS_COMPLETE: (k,),
        schema.TEST_LOGITS: (info.num_test_samples, c),
    }
    for name, shape in shapes.items():
        if tuple(f[name].shape) != shape:
            raise UserError(f"cache {path} is damaged: {name} has shape {tuple(f[name].shape)}, "
                            f"its attributes say {shape}; dump the cache again")
    if top_k and f[targets].dtype != schema.topk_dtype(top_k, c, info.dtype):
        raise UserError(f"cache {path} is damaged: {targets} does not hold top-{top_k} records of {info.dtype}; "
                        "dump the cache again")
    # the stored type must be the one the attributes name: int32 logits read as float16 teach a teacher
    # 100x sharper, bytes cannot be read as logits at all
    for name in ((schema.LOGITS,) if not top_k else ()) + (schema.TEST_LOGITS,):
        if f[name].dtype != np.dtype(info.dtype):
            raise UserError(f"cache {path} is damaged: {name} is stored as {f[name].dtype}, its dtype attribute "
                            f"says {info.dtype}; dump the cache again")
    for name in (schema.LABELS, schema.TEST_LABELS, schema.VIEW_PARAMS, schema.VIEWS_COMPLETE):
        if f[name].dtype.kind not in "iu":
            raise UserError(f"cache {path} is damaged: {name} is stored as {f[name].dtype}, not integers; "
                            "dump the cache again")
    vp = f[schema.VIEW_PARAMS].shape
    policy = view_policy_of(info)
    columns = policy.num_params if policy is not None else (vp[2] if len(vp) == 3 else -1)
    if len(vp) != 3 or vp != (k, n, columns):
        raise UserError(f"cache {path} is damaged: view_params has shape {tuple(vp)}, its attributes say "
                        f"{(k, n, columns)}; dump the cache again")
    return info


def view_policy_of(info: CacheInfo) -> "ViewPolicy | None":
    """The view policy a cache names; None when this version does not know it (``check_fits`` refuses it
    where it matters)."""
    from bandistill.data.views import policy_from_json

    try:
        return policy_from_json(info.view_policy)
    except (TypeError, ValueError, AttributeError, KeyError):
        return None


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _attr(path: Path, attrs: dict[str, Any], name: str, kind: type, low: int | None = None) -> Any:
    """Root attribute ``name`` as ``kind``; :class:`UserError` when it has another type (``num_classes`` a
    word, ``seed`` a string) or is below ``low``, instead of a TypeError or ValueError deep in training."""
    value = attrs[name]
    if kind is int:
        ok = _is_int(value) and (low is None or value >= low)
    elif kind is bool:
        ok = isinstance(value, (bool, np.bool_)) or (_is_int(value) and value in (0, 1))
    else:
        ok = isinstance(value, kind)
    if not ok:
        want = {int: "an integer" + (f" >= {low}" if low is not None else ""), str: "a string",
                bool: "true or false"}[kind]
        raise UserError(f"cache {path} is damaged: its {name} attribute is {value!r}, not {want}; "
                        "dump the cache again")
    return kind(value)


def _teacher(path: Path, value: Any) -> dict[str, Any]:
    """The ``teacher`` attribute: JSON of an object (a plain model name is read as one, as early files had)."""
    if isinstance(value, str):
        try:
            teacher = json.loads(value)
        except ValueError:
            return {"model": value}
        if isinstance(teacher, dict):
            return teacher
    raise UserError(f"cache {path} is damaged: its teacher attribute is {value!r}, not the JSON object a dump "
                    "writes; dump the cache again")


def _view_plan(path: Path, attrs: dict[str, Any]) -> ViewPlan:
    """The plan a cache was dumped with (version 1 knew only K fixed views)."""
    if "view_plan" not in attrs:
        return ViewPlan("fixed", int(attrs["num_views"]), int(attrs["seed"]))
    try:
        plan = ViewPlan.from_json(str(attrs["view_plan"]))
        ok = isinstance(plan.kind, str) and _is_int(plan.num_views) and _is_int(plan.seed)
    except (TypeError, ValueError, KeyError, AttributeError):
        ok = False
    if not ok:
        raise UserError(f"cache {path} is damaged (view_plan {attrs['view_plan']!r} is not a view plan); "
                        "dump the cache again")
    if plan.kind not in ("fixed", *VIEW_PLANS):
        raise UserError(f"cache {path} has view plan '{plan.kind}', which this bandistill does not know; "
                        "upgrade bandistill")
    return plan


def _check_complete(path: Path, f: h5py.File, info: CacheInfo) -> None:
    done = f[schema.VIEWS_COMPLETE][()].astype(bool)
    if done.all() and info.complete and bool(info.attrs.get("test_complete")):
        return
    missing = [int(v) for v in np.flatnonzero(~done)]
    if missing:
        listed = ", ".join(map(str, missing[:8])) + (" ..." if len(missing) > 8 else "")
        what = f"views {listed} of {info.num_views} are missing"
    elif not info.attrs.get("test_complete"):
        what = "the test-split logits are missing"
    else:
        what = "it is not marked complete"
    raise UserError(f"cache {path} is an incomplete dump ({what}); {RESUME_HINT}")


def _partial_progress(partial: Path) -> str:
    try:
        with h5py.File(partial, "r", locking=False) as f:
            done = int(f[schema.VIEWS_COMPLETE][()].sum())
            return f"{done} of {int(f.attrs['num_views'])} views written"
    except Exception:  # an unreadable partial file: the rerun starts it over
        return "an unreadable partial file"
