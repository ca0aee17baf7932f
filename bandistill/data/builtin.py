"""The named datasets held in memory: scikit-learn's digits and torchvision's CIFAR pickles."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from bandistill.data.memory import ImageDataset
from bandistill.data.views import ViewPolicy
from bandistill.errors import UserError


def load_digits() -> ImageDataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, no download): a fixed 80/20 split."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
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


def load_cifar(key: str, data_dir: str | os.PathLike | None, download: bool) -> ImageDataset:
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
