"""What a dataset *is*, as a short digest: of decoded tensors, or of a tree of image files.

Checkpoints and caches record a dataset's fingerprint, so a cache made on other data (or on a
changed validation split) is refused instead of silently paired with the wrong images.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch


def fingerprint_arrays(*tensors: torch.Tensor) -> str:
    """A short sha256 digest of the bytes, shapes and dtypes of the given tensors."""
    h = hashlib.sha256()
    for t in tensors:
        if not isinstance(t, torch.Tensor):  # a streaming split (bandistill.data.stream.FileImages)
            h.update(f"files {t.identity()}".encode())
            continue
        arr = t.detach().cpu().contiguous().numpy()
        h.update(f"{arr.dtype}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:16]


def tree_digest(root: Path, suffixes: tuple[str, ...]) -> str:
    """sha256 of every folder's and image file's path (relative to ``root``) and every image's bytes, in
    sorted order, plus the decoder (the source of :mod:`bandistill.data.imagefolder` and
    :mod:`bandistill.data.scan`, the Pillow version)."""
    import PIL

    from bandistill.data import imagefolder, scan

    h = hashlib.sha256()
    for module in (imagefolder, scan):  # the decoder's own source: a new decoder, a new key
        h.update(Path(module.__file__).read_bytes())
    h.update(f"pillow {PIL.__version__}".encode())
    for rel, first, filenames in walk_once(root):
        if first is not None:  # a second way to the same folder (a link): named, not read again
            h.update(b"alias " + rel.encode() + b"\0" + first.encode() + b"\0")
            continue
        h.update(b"dir " + rel.encode() + b"\0")  # an empty class folder counts
        for name in filenames:
            if not name.lower().endswith(suffixes):
                continue
            path = root / rel / name
            h.update(str(Path(rel) / name).encode() + b"\0")
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:32]


def stat_signature(root: Path, suffixes: tuple[str, ...]) -> str:
    """A digest of every image file's path, size, inode and change times: what a process checks instead of
    re-reading the bytes of a tree it has already hashed.

    The change time (ctime) moves on every write to a file, even one that restores the modification
    time afterwards, so a rewritten image is noticed without reading it.
    """
    h = hashlib.sha256()
    for rel, first, filenames in walk_once(root):
        h.update(f"dir {rel}\0{first}\0".encode())
        if first is not None:
            continue
        for name in filenames:
            if name.lower().endswith(suffixes):
                st = os.stat(root / rel / name)
                h.update(f"{name}\0{st.st_size} {st.st_ino} {st.st_mtime_ns} {st.st_ctime_ns}\0".encode())
    return h.hexdigest()


def walk_once(root: Path):
    """``(relative folder, first relative path of the same real folder or None, sorted file names)`` of every
    folder under ``root``, following links but entering each real folder once.

    ``os.walk(followlinks=True)`` alone never ends on a tree with a link to a folder above it
    (two such links double the work at every level).
    """
    seen: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        rel = str(Path(dirpath).relative_to(root))
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []  # do not descend a folder already walked
            yield rel, seen[real], []
            continue
        seen[real] = rel
        yield rel, None, sorted(filenames)
