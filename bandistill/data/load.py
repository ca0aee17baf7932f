"""Loading a dataset by the name a user types, once per process.

Every stage of a ``ban`` (train, dump, train, ..., export, ensemble) asks for the same
dataset. It is read, decoded and fingerprinted once: later calls get the same object back as
long as the files behind it are unchanged (their stat signature: sizes, inodes, modification
and change times), so a rewritten file is read again and nothing is served stale.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Callable

from bandistill.data import builtin, imagefolder
from bandistill.data.decoded_cache import load_imagefolder
from bandistill.data.fingerprint import stat_signature
from bandistill.data.memory import ImageDataset, split_validation
from bandistill.data.scan import IMAGE_SUFFIXES
from bandistill.errors import UserError

DATASETS = ("cifar10", "cifar100", "imagefolder", "digits")
#: Loaded datasets (with their validation splits) this process keeps: one ban chain uses one.
MEMORY_ENTRIES = 2

_loaded: OrderedDict[tuple, tuple[ImageDataset, object]] = OrderedDict()


def load_dataset(
    name: str, data_dir: str | os.PathLike | None = None, *, download: bool = False, val_split: float = 0.0,
    image_size: int | None = None,
) -> ImageDataset:
    """Load a dataset by the name a user types. Raises :class:`UserError` on bad input.

    ``image_size`` (``--image-size``) picks the streaming source for an ImageFolder tree:
    photos of any size stay on disk and are shown as RandomResizedCrop views of that size
    (:mod:`bandistill.data.stream`). Without it a tree is decoded whole into memory.
    """
    key = name.lower()
    if image_size and key != "imagefolder":
        raise UserError(f"--image-size streams an ImageFolder tree of photos; {name} is held in memory at its own "
                        "size: drop --image-size or use --dataset imagefolder")
    if image_size:
        from bandistill.data.stream import load_streaming

        root = Path(data_dir).expanduser() if data_dir is not None else None
        signature = stat_signature(root, IMAGE_SUFFIXES) if root is not None and root.is_dir() else None
        load = lambda: load_streaming(data_dir, int(image_size))  # noqa: E731
        ds = load() if signature is None else _once(("stream", os.path.realpath(root), signature, int(image_size)),
                                                    load)
    elif key == "digits":
        ds = _once(("digits",), builtin.load_digits)
    elif key in ("cifar10", "cifar100"):
        folder = Path(data_dir or "data").expanduser() / builtin.CIFAR_LAYOUT[key][0]
        signature = stat_signature(folder, ("",)) if folder.is_dir() else None
        load = lambda: builtin.load_cifar(key, data_dir, download)  # noqa: E731
        ds = load() if signature is None else _once((key, os.path.realpath(folder), signature), load)
    elif key == "imagefolder" and data_dir is not None:  # decoded once, kept by content (decoded_cache)
        ds = load_imagefolder(data_dir, lambda: imagefolder.decode_imagefolder(data_dir), IMAGE_SUFFIXES)
    elif key == "imagefolder":
        ds = imagefolder.decode_imagefolder(data_dir)
    else:
        import difflib

        close = difflib.get_close_matches(key, DATASETS, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise UserError(f"unknown dataset '{name}': choose one of {', '.join(DATASETS)}{hint}")
    if val_split:
        ds = _once(("split", id(ds), float(val_split)), lambda: split_validation(ds, val_split), keep=ds)
    return ds


def _once(key: tuple, load: Callable[[], ImageDataset], keep: object = None) -> ImageDataset:
    """``load()`` the first time ``key`` is asked for in this process, then the same object."""
    hit = _loaded.get(key)
    if hit is not None and (keep is None or hit[1] is keep):  # (an id is only unique while its object lives)
        _loaded.move_to_end(key)
        return hit[0]
    ds = load()
    _loaded[key] = (ds, keep)
    while len(_loaded) > MEMORY_ENTRIES * 2:
        _loaded.popitem(last=False)
    return ds
