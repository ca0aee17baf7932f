"""Loading a dataset by the name a user types."""

from __future__ import annotations

import os

from bandistill.data import builtin, imagefolder
from bandistill.data.decoded_cache import load_imagefolder
from bandistill.data.memory import ImageDataset, split_validation
from bandistill.data.scan import IMAGE_SUFFIXES
from bandistill.errors import UserError

DATASETS = ("cifar10", "cifar100", "imagefolder", "digits")


def load_dataset(
    name: str, data_dir: str | os.PathLike | None = None, *, download: bool = False, val_split: float = 0.0
) -> ImageDataset:
    """Load a dataset by the name a user types. Raises :class:`UserError` on bad input."""
    key = name.lower()
    if key == "digits":
        ds = builtin.load_digits()
    elif key in ("cifar10", "cifar100"):
        ds = builtin.load_cifar(key, data_dir, download)
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
        ds = split_validation(ds, val_split)
    return ds
