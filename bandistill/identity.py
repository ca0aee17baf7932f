"""What an output *means*, as a digest: never its bytes, timestamps, paths or timings.

Two files that mean the same thing must get the same digest, or a rebuilt input (a cache
dumped again, a ``model.pt`` rewritten from ``last.pt``) would look new and everything
downstream of it would be retrained. File bytes are the wrong identity for both kinds of
file this tool writes:

* a checkpoint's zip records the name of the temporary file ``torch.save`` wrote, and its
  history holds per-epoch timings; what it means is the model: the spec (architecture,
  class count, input channels, options), the input normalisation, and the weights;
* a cache's root attributes hold ``created_at`` and the teacher checkpoint's absolute path;
  what it means is its arrays and the attributes that say what they are.

:func:`checkpoint_digest` and :func:`cache_digest` hash exactly those; :func:`output_digest`
picks the right one for any file a stage writes (other files: their bytes). The manifest,
``train --resume`` and the lineage in checkpoints and caches all use these digests.

Cost: hashing reads every byte of a cache once (sha256 runs at ~1.8 GB/s here); a process
remembers the digest of a file whose size, mtime and inode have not changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bandistill.checkpoint import load_checkpoint

#: Digest length in hex characters (64 bits: collisions are not a concern at this scale).
DIGEST_CHARS = 16

_memo: dict[tuple, str] = {}


def _update_array(h: "hashlib._Hash", name: str, arr: np.ndarray) -> None:
    arr = np.ascontiguousarray(arr)
    h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
    h.update(memoryview(arr).cast("B") if arr.size else b"")


def checkpoint_identity(ckpt: dict[str, Any]) -> str:
    """The digest of a loaded checkpoint: model spec, normalisation and weights (no optimizer, no history)."""
    h = hashlib.sha256()
    spec = {"model": ckpt.get("model"), "normalization": ckpt.get("normalization")}
    h.update(json.dumps(spec, sort_keys=True, default=str).encode())
    for key in sorted(ckpt["state_dict"]):
        tensor = ckpt["state_dict"][key].detach().cpu().contiguous()
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: hash its bits
            tensor = tensor.view(torch.int16)
        _update_array(h, key, tensor.numpy())
    return h.hexdigest()[:DIGEST_CHARS]


def checkpoint_digest(path: str | os.PathLike) -> str:
    """:func:`checkpoint_identity` of the file at ``path`` (:class:`UserError` when it is not a checkpoint)."""
    return _memoized(path, lambda: checkpoint_identity(load_checkpoint(path)))


def loaded_checkpoint_digest(path: str | os.PathLike, ckpt: dict[str, Any], before: os.stat_result) -> str:
    """:func:`checkpoint_digest` of ``path``, whose content ``ckpt`` the caller loaded after taking ``before``
    (its ``os.stat``): remembered when this process has already hashed the unchanged file (``ban``'s
    manifest hashes a teacher just before its dump), else hashed from ``ckpt`` without loading it again.
    A file that changed while it was loaded is hashed from ``ckpt`` and not remembered."""
    st = os.stat(path)
    if (st.st_ino, st.st_size, st.st_mtime_ns) != (before.st_ino, before.st_size, before.st_mtime_ns):
        return checkpoint_identity(ckpt)
    return _memoized(path, lambda: checkpoint_identity(ckpt))


def cache_digest(path: str | os.PathLike) -> str:
    """The digest of a cache: every dataset in the file (name, dtype, shape, values) and its identity attributes.

    Generic over the datasets: a format that adds arrays (top-k values and indices, row
    log-sum-exps) is covered without a change here. Reads the file once, a slab at a time
    (:func:`bandistill.cache.content.content_pass`, which a student's start-up also uses to
    check and load the cache in the same read).
    """
    import h5py

    from bandistill.cache.content import content_pass

    def compute() -> str:
        with h5py.File(path, "r", locking=False) as f:
            return content_pass(f).digest

    return _memoized(path, compute)


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (short form): the identity of files with no meaning of their own here."""
    def compute() -> str:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()[:DIGEST_CHARS]

    return _memoized(path, compute, kind="bytes")


def output_digest(path: str | os.PathLike) -> str:
    """The content identity of any file a stage writes; never raises for a damaged one.

    A checkpoint (a zip torch can read) gets :func:`checkpoint_digest`, an HDF5 file
    :func:`cache_digest`, anything else its bytes. A file that claims to be one of the two
    but cannot be read gets ``damaged:<bytes digest>``, which matches nothing recorded.
    """
    import zipfile

    import h5py

    from bandistill.errors import UserError

    p = Path(path)
    try:
        if h5py.is_hdf5(p):
            return cache_digest(p)
        if zipfile.is_zipfile(p):
            return checkpoint_digest(p)
    except (UserError, OSError, KeyError, ValueError, RuntimeError):
        return f"damaged:{file_digest(p)}"
    return file_digest(p)


def _memoized(path: str | os.PathLike, compute, kind: str = "content") -> str:
    """Digest once per process for an unchanged file (same path, inode, size and mtime)."""
    st = os.stat(path)
    key = (kind, os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _memo:
        _memo[key] = compute()
    return _memo[key]


def lineage_chain(checkpoint: str | Path) -> list[dict[str, Any]]:
    """A checkpoint's ancestry, newest first: ``[{generation, model, ..., loss, cache}, ..., gen 0]``.

    Read from the checkpoint alone (each student's lineage embeds its teacher's), so the
    caches and the older checkpoints need not exist any more.
    """
    before = os.stat(checkpoint) if os.path.isfile(checkpoint) else None
    ckpt = load_checkpoint(checkpoint)  # a missing file: its one-line UserError
    chain = [{
        "generation": int(ckpt.get("generation") or 0),
        "model": ckpt["model"]["name"],
        "checkpoint": str(checkpoint),
        "checkpoint_digest": loaded_checkpoint_digest(checkpoint, ckpt, before),  # not loaded a second time
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
