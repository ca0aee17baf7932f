"""Datasets held in memory as uint8 tensors, with a fingerprint and a default view policy.

Every supported dataset is small enough to decode once and keep as one ``(N, C, H, W)``
uint8 tensor (CIFAR's 50k images are 150 MB), so the training loop can move it to the
device once and make each batch with tensor indexing, with no loader workers.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from bandistill.errors import UserError
from bandistill.views import ViewPolicy

DATASETS = ("cifar10", "cifar100", "imagefolder", "digits")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class ImageDataset:
    """A train and a test split as uint8 tensors, plus what a model needs to know about them."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    view_policy: ViewPolicy
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    fingerprint: str = field(default="")

    def __post_init__(self) -> None:
        if not self.fingerprint:
            self.fingerprint = fingerprint_arrays(
                self.train_images, self.train_labels, self.test_images, self.test_labels
            )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.train_images.shape[1:])  # type: ignore[return-value]

    @property
    def num_train(self) -> int:
        return int(self.train_images.shape[0])

    def normalization(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images, in [0, 1] units."""
        x = self.train_images.float().div_(255.0)
        mean = x.mean(dim=(0, 2, 3))
        std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return [float(v) for v in mean], [float(v) for v in std]


def fingerprint_arrays(*tensors: torch.Tensor) -> str:
    """A short sha256 digest of the bytes, shapes and dtypes of the given tensors."""
    h = hashlib.sha256()
    for t in tensors:
        arr = t.detach().cpu().contiguous().numpy()
        h.update(f"{arr.dtype}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:16]


def load_dataset(
    name: str, data_dir: str | os.PathLike | None = None, *, download: bool = False, val_split: float = 0.0
) -> ImageDataset:
    """Load a dataset by the name a user types. Raises :class:`UserError` on bad input."""
    key = name.lower()
    if key == "digits":
        ds = _load_digits()
    elif key in ("cifar10", "cifar100"):
        ds = _load_cifar(key, data_dir, download)
    elif key == "imagefolder":
        ds = _load_imagefolder(data_dir)
    else:
        import difflib

        close = difflib.get_close_matches(key, DATASETS, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise UserError(f"unknown dataset '{name}': choose one of {', '.join(DATASETS)}{hint}")
    if val_split:
        ds = split_validation(ds, val_split)
    return ds


def split_validation(ds: ImageDataset, fraction: float) -> ImageDataset:
    """Carve a validation set out of train (a fixed split, the same for every run and seed).

    The fingerprint is recomputed: a cache or checkpoint made on the full train split
    does not match a run on the reduced one.
    """
    if not 0.0 < fraction < 1.0:
        raise UserError(f"--val-split must be between 0 and 1 (exclusive), got {fraction}")
    n = ds.num_train
    n_val = max(1, int(round(n * fraction)))
    perm = torch.from_numpy(np.random.default_rng(12345).permutation(n))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    return replace(
        ds,
        train_images=ds.train_images[train_idx],
        train_labels=ds.train_labels[train_idx],
        val_images=ds.train_images[val_idx],
        val_labels=ds.train_labels[val_idx],
        fingerprint="",
    )


def _load_digits() -> ImageDataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, no download): a fixed 80/20 split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(labels))
    n_test = len(labels) // 5
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return ImageDataset(
        name="digits",
        train_images=torch.from_numpy(images[train]),
        train_labels=torch.from_numpy(labels[train]),
        test_images=torch.from_numpy(images[test]),
        test_labels=torch.from_numpy(labels[test]),
        classes=[str(i) for i in range(10)],
        view_policy=ViewPolicy(pad=1, flip=False),  # a flipped digit is another digit
    )


def _load_cifar(key: str, data_dir: str | os.PathLike | None, download: bool) -> ImageDataset:
    from torchvision import datasets

    root = Path(data_dir or "data").expanduser()
    cls = datasets.CIFAR10 if key == "cifar10" else datasets.CIFAR100
    folder = root / cls.base_folder
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except RuntimeError as exc:
        if "not found" in str(exc).lower() or "corrupted" in str(exc).lower():
            raise UserError(
                f"{key} not found or corrupted: expected torchvision's files in {folder}; "
                f"pass --data-dir to the folder that holds {cls.base_folder}/, or --download on a machine with network"
            ) from None
        raise
    except (OSError, ValueError) as exc:
        raise UserError(f"{key} under {root} could not be read ({exc}); download it again with --download") from None

    def to_tensor(ds) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        return x, torch.as_tensor(ds.targets, dtype=torch.int64)

    tx, ty = to_tensor(train)
    vx, vy = to_tensor(test)
    return ImageDataset(key, tx, ty, vx, vy, list(train.classes), ViewPolicy(pad=4, flip=True))


def _load_imagefolder(data_dir: str | os.PathLike | None) -> ImageDataset:
    """``data_dir/train/<class>/*`` and ``data_dir/test/<class>/*`` (``val/`` accepted for ``test/``)."""
    if data_dir is None:
        raise UserError("--dataset imagefolder needs --data-dir pointing at a folder with train/ and test/ (or val/)")
    root = Path(data_dir).expanduser()
    train_dir = root / "train"
    test_dir = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise UserError(
            f"{root} is not an ImageFolder tree: expected {train_dir}/<class>/*.png and {root / 'test'}/<class>/* (or val/)"
        )
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not classes:
        raise UserError(f"{train_dir} has no class folders: expected {train_dir}/<class>/<image files>")
    test_classes = sorted(p.name for p in test_dir.iterdir() if p.is_dir())
    extra = sorted(set(test_classes) - set(classes))
    if extra:
        raise UserError(f"{test_dir} has classes that {train_dir} lacks: {', '.join(extra[:5])}")
    tx, ty, size, mode = _read_image_tree(train_dir, classes, None, None)
    vx, vy, _, _ = _read_image_tree(test_dir, classes, size, mode)
    pad = max(1, size[0] // 8)
    return ImageDataset("imagefolder", tx, ty, vx, vy, classes, ViewPolicy(pad=pad, flip=True))


def _read_image_tree(folder: Path, classes: list[str], size, mode):
    """Decode every image under ``folder/<class>/`` once, resized to the first image's size."""
    from PIL import Image, UnidentifiedImageError

    images, labels = [], []
    for label, cls in enumerate(classes):
        cdir = folder / cls
        if not cdir.is_dir():
            continue
        for path in sorted(cdir.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(path) as img:
                    if mode is None:
                        mode = "L" if img.mode in ("L", "1", "P;L", "I;16") else "RGB"
                    img = img.convert(mode)
                    if size is None:
                        size = (img.height, img.width)
                    if (img.height, img.width) != size:
                        img = img.resize((size[1], size[0]), Image.BILINEAR)
                    arr = np.asarray(img, dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as exc:
                raise UserError(f"cannot read image {path}: {exc}; remove or replace the file") from None
            images.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise UserError(f"no images found under {folder}/<class>/ (looked for {', '.join(IMAGE_SUFFIXES)})")
    return torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64), size, mode
