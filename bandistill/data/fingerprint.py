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
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        h.update(b"dir " + str(Path(dirpath).relative_to(root)).encode() + b"\0")  # an empty class folder counts
        for name in sorted(filenames):
            if not name.lower().endswith(suffixes):
                continue
            path = Path(dirpath) / name
            h.update(str(path.relative_to(root)).encode() + b"\0")
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:32]
