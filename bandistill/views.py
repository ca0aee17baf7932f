"""Augmentation as a pure function: a *view* is decided by (seed, view index, sample index).

Nothing here touches a global random state. The parameters of a view come from a
counter-based hash (splitmix64) of the three integers, so the same arguments give the
same parameters in any batch order, with any number of workers, on any device. The
images are then made from those parameters with integer indexing only, so they are
bit-identical on CPU and GPU. This is what lets a student replay exactly the views a
teacher was shown when its logits were cached.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

#: Columns of a view's parameter row: crop offset (rows), crop offset (cols), horizontal flip.
PARAM_NAMES = ("dy", "dx", "flip")

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """One round of splitmix64 on a uint64 array (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _M64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
        return x ^ (x >> np.uint64(31))


def view_hash(seed: int, view: int | np.ndarray, index: np.ndarray) -> np.ndarray:
    """A uint64 hash per sample of (seed, view, sample index); pure and order independent."""
    index = np.asarray(index, dtype=np.uint64)
    view = np.asarray(view, dtype=np.uint64)
    h = _splitmix64(np.full(index.shape, np.uint64(seed & 0xFFFFFFFFFFFFFFFF), dtype=np.uint64))
    h = _splitmix64(h ^ view)
    return _splitmix64(h ^ index)


@dataclass(frozen=True)
class ViewPolicy:
    """CIFAR-style augmentation: zero-pad by ``pad`` pixels, crop back, maybe flip.

    ``pad=0`` and ``flip=False`` is the identity policy.
    """

    pad: int = 4
    flip: bool = True

    name = "pad-crop-flip"
    num_params = len(PARAM_NAMES)

    def to_json(self) -> str:
        """The policy as a canonical JSON string (stored in caches and checkpoints)."""
        return json.dumps({"name": self.name, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ViewPolicy":
        data = json.loads(text)
        data.pop("name", None)
        return cls(**data)

    def params(self, seed: int, view: int | np.ndarray, indices: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Parameters ``(N, 3)`` int16 of the given view(s) of the given samples.

        ``view`` is one view index for all samples or one per sample.
        """
        if isinstance(indices, torch.Tensor):
            indices = indices.cpu().numpy()
        indices = np.asarray(indices, dtype=np.int64)
        h = view_hash(seed, view, indices.astype(np.uint64))
        span = np.uint64(2 * self.pad + 1)
        dy = (h % span).astype(np.int16)
        dx = ((h >> np.uint64(16)) % span).astype(np.int16)
        flip = ((h >> np.uint64(40)) & np.uint64(1)).astype(np.int16) if self.flip else np.zeros_like(dy)
        return torch.from_numpy(np.stack([dy, dx, flip], axis=1))

    def identity_params(self, n: int) -> torch.Tensor:
        """Parameters of the clean view (centre crop, no flip) for ``n`` samples."""
        out = torch.zeros((n, 3), dtype=torch.int16)
        out[:, 0] = self.pad
        out[:, 1] = self.pad
        return out

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Make the views: ``images`` uint8 ``(B, C, H, W)``, ``params`` ``(B, 3)``; same device.

        Batched integer gathers only (no per-sample Python, no interpolation), so the
        result is bit-identical on every device. The output is channels_last in memory.
        """
        b, _, h, w = images.shape
        params = params.to(device=images.device, dtype=torch.long)
        padded = F.pad(images, (self.pad, self.pad, self.pad, self.pad)) if self.pad else images
        ar_h = torch.arange(h, device=images.device)
        ar_w = torch.arange(w, device=images.device)
        rows = params[:, 0:1] + ar_h  # (B, H)
        flip = params[:, 2:3].bool()
        cols = params[:, 1:2] + torch.where(flip, (w - 1) - ar_w, ar_w)  # (B, W)
        batch = torch.arange(b, device=images.device)[:, None, None]
        out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
        return out.permute(0, 3, 1, 2)


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images to float, scaled to [0, 1] and standardised per channel."""
    x = images.float().div_(255.0)
    return x.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))
