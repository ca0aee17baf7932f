"""An ImageFolder tree decoded whole into memory (the memory source for trees of small images).

Every image is decoded at the training split's majority size and mode
(:func:`bandistill.data.scan.majority_format`); the pad-crop-flip policy pads by an eighth
of the side. The result is kept by content in :mod:`bandistill.data.decoded_cache`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from bandistill.data.memory import ImageDataset
from bandistill.data.scan import majority_format, scan_tree, unreadable
from bandistill.data.views import ViewPolicy


def decode_imagefolder(data_dir: str | os.PathLike | None) -> ImageDataset:
    """``data_dir/train/<class>/*`` and ``data_dir/test/<class>/*`` (``val/`` accepted for ``test/``), decoded."""
    classes, train_dir, train_files, test_dir, test_files = scan_tree(data_dir)
    size, mode = majority_format(train_dir, train_files)
    tx, ty = decode_files(train_files, size, mode)
    vx, vy = decode_files(test_files, size, mode)
    pad = max(1, size[0] // 8)
    return ImageDataset("imagefolder", tx, ty, vx, vy, classes, ViewPolicy(pad=pad, flip=True))


def decode_files(files: list[tuple[Path, int]], size: tuple[int, int], mode: str):
    """Decode every image once as uint8 ``mode`` at ``size``: ``(N, C, H, W)`` images and labels."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for path, _ in files:
        try:
            with Image.open(path) as img:
                img = to_8bit(img).convert(mode)
                if (img.height, img.width) != size:
                    img = img.resize((size[1], size[0]), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise unreadable(path, exc) from None
        images.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return torch.from_numpy(np.stack(images)), labels


def to_8bit(img):
    """16-bit (and 32-bit integer) grayscale scaled to 0..255; PIL's convert("L") clips them to 0 and 255."""
    from PIL import Image

    if img.mode.startswith("I"):
        arr = np.asarray(img, dtype=np.float64) / 257.0  # 65535 -> 255
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    if img.mode == "F":
        return Image.fromarray(np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8), "L")
    return img
