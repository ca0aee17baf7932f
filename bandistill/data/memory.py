"""The memory source: a dataset held as uint8 tensors, with a fingerprint and a default view policy.

Small datasets (digits, CIFAR, an ImageFolder of thumbnails) are decoded once and kept as
one ``(N, C, H, W)`` uint8 tensor per split (CIFAR's 50k images are 150 MB), so the training
loop can move them to the device once and make each batch with tensor indexing, with no
loader workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from bandistill.data.fingerprint import fingerprint_arrays
from bandistill.data.views import ViewPolicy
from bandistill.errors import UserError


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
