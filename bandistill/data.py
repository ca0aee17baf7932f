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
    elif key == "imagefolder" and data_dir is not None:  # decoded once, kept by content (decoded_cache)
        from bandistill.decoded_cache import load_imagefolder

        ds = load_imagefolder(data_dir, lambda: _load_imagefolder(data_dir), IMAGE_SUFFIXES)
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
    per_class = torch.bincount(ds.train_labels[train_idx], minlength=ds.num_classes)
    if len(train_idx) < 2 or bool((per_class == 0).any()):
        missing = [ds.classes[i] for i in torch.nonzero(per_class == 0).flatten().tolist()]
        what = f"; class {missing[0]} has none" if missing else ""
        raise UserError(f"--val-split {fraction} leaves {len(train_idx)} of {n} training images{what}; "
                        "use a smaller fraction")
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


#: torchvision's on-disk CIFAR layout: folder, train files, test file, meta file, label key, names key.
CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                "batches.meta", "labels", "label_names"),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", "fine_labels", "fine_label_names"),
}


def _load_cifar(key: str, data_dir: str | os.PathLike | None, download: bool) -> ImageDataset:
    """Read torchvision's CIFAR pickles from ``data_dir/<folder>/`` (downloading them if asked).

    The files are read directly rather than through ``torchvision.datasets.CIFAR*`` so that
    a missing or damaged file gets a message naming it (torchvision only says "not found
    or corrupted").
    """
    root = Path(data_dir or "data").expanduser()
    folder_name, train_files, test_file, meta_file, label_key, names_key = CIFAR_LAYOUT[key]
    folder = root / folder_name
    if download and not folder.is_dir():
        from torchvision import datasets

        cls = datasets.CIFAR10 if key == "cifar10" else datasets.CIFAR100
        try:
            cls(str(root), train=True, download=True)
        except Exception as exc:  # network errors come in many types
            raise UserError(f"could not download {key} into {root} ({type(exc).__name__}: {exc})") from None
    if not folder.is_dir():
        raise UserError(
            f"{key} not found: expected torchvision's files in {folder}; pass --data-dir to the folder that "
            f"holds {folder_name}/, or add --download on a machine with network"
        )

    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        batch = _read_pickle(folder / name)
        try:
            data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            labels = np.asarray(batch[label_key], dtype=np.int64)
        except (KeyError, ValueError) as exc:
            raise UserError(f"{folder / name} is not a {key} batch ({exc}); download {key} again") from None
        return data, labels

    parts = [read(f) for f in train_files]
    tx = np.concatenate([p[0] for p in parts])
    ty = np.concatenate([p[1] for p in parts])
    vx, vy = read(test_file)
    classes = [str(c) for c in _read_pickle(folder / meta_file).get(names_key, [])]
    n_classes = 10 if key == "cifar10" else 100
    if len(classes) != n_classes:
        classes = [str(i) for i in range(n_classes)]
    return ImageDataset(
        key, torch.from_numpy(tx), torch.from_numpy(ty), torch.from_numpy(vx), torch.from_numpy(vy),
        classes, ViewPolicy(pad=4, flip=True),
    )


def _read_pickle(path: Path) -> dict:
    import pickle

    if not path.is_file():
        raise UserError(f"{path} is missing: the CIFAR folder is incomplete; download it again (--download)")
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception as exc:  # truncated or not a pickle
        raise UserError(f"{path} is damaged ({type(exc).__name__}); delete the folder and download it again") from None


def _load_imagefolder(data_dir: str | os.PathLike | None) -> ImageDataset:
    """``data_dir/train/<class>/*`` and ``data_dir/test/<class>/*`` (``val/`` accepted for ``test/``).

    Hidden folders and files (``.ipynb_checkpoints/``, ``.DS_Store``) are not classes or images.
    Every image is decoded at the training split's majority size and mode (see :func:`_majority_format`).
    """
    if data_dir is None:
        raise UserError("--dataset imagefolder needs --data-dir pointing at a folder with train/ and test/ (or val/)")
    root = Path(data_dir).expanduser()
    train_dir = root / "train"
    test_dir = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise UserError(
            f"{root} is not an ImageFolder tree: expected {train_dir}/<class>/*.png and {root / 'test'}/<class>/* (or val/)"
        )
    classes = _class_folders(train_dir)
    if not classes:
        raise UserError(f"{train_dir} has no class folders: expected {train_dir}/<class>/<image files>")
    extra = sorted(set(_class_folders(test_dir)) - set(classes))
    if extra:
        raise UserError(f"{test_dir} has classes that {train_dir} lacks: {', '.join(extra[:5])}")
    train_files = _image_files(train_dir, classes)
    empty = sorted(set(classes) - {classes[label] for _, label in train_files})
    if empty:
        raise UserError(f"class folder {train_dir / empty[0]} holds no images ({len(empty)} such); every class "
                        "needs training images: add some or remove the folder")
    size, mode = _majority_format(train_dir, train_files)
    tx, ty = _decode(train_dir, train_files, size, mode)
    vx, vy = _decode(test_dir, _image_files(test_dir, classes), size, mode)
    pad = max(1, size[0] // 8)
    return ImageDataset("imagefolder", tx, ty, vx, vy, classes, ViewPolicy(pad=pad, flip=True))


#: PIL modes of single-channel images (16-bit and 32-bit integer, float, 1-bit, with alpha).
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")


def _class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(path, label) of every image file under ``folder/<class>/`` (hidden files skipped), in a fixed order."""
    files = []
    for label, cls in enumerate(classes):
        cdir = folder / cls
        if cdir.is_dir():
            files += [(p, label) for p in sorted(cdir.iterdir())
                      if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    return files


def _majority_format(folder: Path, files: list[tuple[Path, int]]) -> tuple[tuple[int, int], str]:
    """The size most training images have and their majority mode (``L`` or ``RGB``), from headers only.

    The first image used to decide both, so one small or grayscale image shrank or greyed the
    whole dataset. Images of another size are resized to the majority's; when no size is
    shared by more than half of the images there is no sensible one, and the tree is refused.
    """
    from collections import Counter

    from PIL import Image, UnidentifiedImageError

    sizes: Counter = Counter()
    gray = 0
    for path, _ in files:
        try:
            with Image.open(path) as img:
                sizes[(img.height, img.width)] += 1
                gray += img.mode in GRAY_MODES
        except (UnidentifiedImageError, OSError) as exc:
            raise UserError(f"cannot read image {path}: {exc}; remove or replace the file") from None
    (size, count), total = sizes.most_common(1)[0], len(files)
    if count * 2 <= total:
        listed = ", ".join(f"{h}x{w} ({n})" for (h, w), n in sizes.most_common(3))
        raise UserError(f"the images under {folder} have no majority size ({listed}, ...); resize them to one "
                        "size first")
    return size, "L" if gray * 2 > total else "RGB"


def _decode(folder: Path, files: list[tuple[Path, int]], size: tuple[int, int], mode: str):
    """Decode every image once as uint8 ``mode`` at ``size``: ``(N, C, H, W)`` images and labels."""
    from PIL import Image, UnidentifiedImageError

    if not files:
        raise UserError(f"no images found under {folder}/<class>/ (looked for {', '.join(IMAGE_SUFFIXES)})")
    images = []
    for path, _ in files:
        try:
            with Image.open(path) as img:
                img = _to_8bit(img).convert(mode)
                if (img.height, img.width) != size:
                    img = img.resize((size[1], size[0]), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as exc:
            raise UserError(f"cannot read image {path}: {exc}; remove or replace the file") from None
        images.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return torch.from_numpy(np.stack(images)), labels


def _to_8bit(img):
    """16-bit (and 32-bit integer) grayscale scaled to 0..255; PIL's convert("L") clips them to 0 and 255."""
    from PIL import Image

    if img.mode.startswith("I"):
        arr = np.asarray(img, dtype=np.float64) / 257.0  # 65535 -> 255
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    if img.mode == "F":
        return Image.fromarray(np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8), "L")
    return img
