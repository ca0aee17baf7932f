"""An ImageFolder tree is decoded once: in memory for the process, and as uint8 arrays on disk.

Decoding thousands of JPEG/PNG files costs seconds to minutes, and every stage of a
born-again run (train, dump, train, ..., export parity, evaluation) needs the same images.
So :func:`load_imagefolder` keys the decoded dataset by a digest of

* every image file's relative path and *content* (bytes, not timestamps: a file rewritten
  with the same size and time is still noticed), and
* the decoder itself (the source of :mod:`bandistill.data.imagefolder` and :mod:`bandistill.data.scan`,
  the Pillow version),

and serves it from, in order: this process's memory, the on-disk copy
``<cache dir>/<digest>.npz`` (written atomically after the first decode), or a fresh
decode. A changed tree, or a changed decoder, has another digest, so it is never served
stale. Hashing a tree reads its bytes but decodes nothing (imagenette-32's 13k PNGs: a
fraction of a second; measured figures in README). A process that already holds a tree in memory
checks only the files' stat signature (sizes, inodes, modification and change times) before serving
it, so the stages of one ``ban`` read the tree's bytes once.

The cache dir is ``$BANDISTILL_CACHE_DIR`` (``off`` disables the disk copy), by default
``~/.cache/bandistill/decoded``. Deleting it is always safe.
"""

from __future__ import annotations

import os
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bandistill.atomic import atomic_write
from bandistill.data.fingerprint import stat_signature, tree_digest
from bandistill.data.memory import ImageDataset
from bandistill.data.views import ViewPolicy
from bandistill.errors import UserError

#: Datasets kept decoded in this process (one ban chain uses one; a few leave room for tests and tools).
MEMORY_ENTRIES = 2

_memory: OrderedDict[str, object] = OrderedDict()
#: The content digest of a tree this process has hashed, by its stat signature: a tree served from memory
#: is not read again as long as no file in it changed (size, inode, modification or change time).
_digests: dict[str, str] = {}


def cache_dir() -> Path | None:
    """Where decoded trees are kept on disk, or None when ``BANDISTILL_CACHE_DIR=off``."""
    value = os.environ.get("BANDISTILL_CACHE_DIR", "")
    if value.lower() == "off":
        return None
    return Path(value).expanduser() if value else Path.home() / ".cache" / "bandistill" / "decoded"


def load_imagefolder(root: str | os.PathLike, decode: Callable[[], ImageDataset],
                     suffixes: tuple[str, ...]) -> ImageDataset:
    """The :class:`~bandistill.data.ImageDataset` of the tree at ``root``: from memory, disk, or ``decode()``."""
    root = Path(root).expanduser()
    signature = stat_signature(root, suffixes)
    key = _digests.get(signature)
    if key not in _memory:
        key = _digests[signature] = tree_digest(root, suffixes)
    if key in _memory:
        _memory.move_to_end(key)
        return _memory[key]
    folder = cache_dir()
    path = None if folder is None else folder / f"{key}.npz"
    ds = None
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                ds = ImageDataset(
                    name=str(z["name"]),
                    train_images=torch.from_numpy(z["train_images"]),
                    train_labels=torch.from_numpy(z["train_labels"]),
                    test_images=torch.from_numpy(z["test_images"]),
                    test_labels=torch.from_numpy(z["test_labels"]),
                    classes=[str(c) for c in z["classes"]],
                    view_policy=ViewPolicy.from_json(str(z["view_policy"])),
                )
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # damaged: decode again, replace it
            ds = None
    if ds is None:
        ds = decode()
        if path is not None:
            _save(ds, path)
    _memory[key] = ds
    while len(_memory) > MEMORY_ENTRIES:
        _memory.popitem(last=False)
    return ds


def _save(ds, path: Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, name=np.array(ds.name), classes=np.array(ds.classes),
                     view_policy=np.array(ds.view_policy.to_json()),
                     train_images=ds.train_images.numpy(), train_labels=ds.train_labels.numpy(),
                     test_images=ds.test_images.numpy(), test_labels=ds.test_labels.numpy())

    try:
        atomic_write(path, write)
    except (OSError, UserError):  # a read-only or full cache dir costs speed, never the run
        pass  # (atomic_write turns a full disk into a UserError, which must not stop the run either)
