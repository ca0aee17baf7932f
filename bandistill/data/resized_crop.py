"""The RandomResizedCrop view policy: torchvision's ImageNet augmentation as a pure function.

A view of sample ``i`` is a box in the *original* image (top, left, height, width) and a
horizontal flip, drawn from (seed, view, i) and the image's size with torchvision's rules
(``transforms.RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))`` followed by
``RandomHorizontalFlip``): up to ten tries of an area fraction uniform in ``scale`` and an
aspect ratio log-uniform in ``ratio``, kept when the box fits, else the central crop with
the ratio clamped. The uniforms come from the same counter-based hash as every other view
(:func:`bandistill.data.views.view_hash`), so a box depends on nothing but those numbers: not
on batch order, worker count, rank or device.

The box is stored in the cache (five int16 per view: top, left, height, width, flip) and a
student rebuilds its view from it. Pixels are made in one place, :func:`render`: Pillow
decodes the file on the CPU, resizes the box to ``size`` x ``size`` with its antialiased
bilinear filter in uint8 and flips; the same file, box and Pillow give the same bytes in
any process, so the teacher's and the student's pixels are bit-identical.

The evaluation view is the usual resize-then-center-crop (shorter side to ``size / 0.875``,
then the central ``size`` square), made as one box: the central square of side
``0.875 * min(H, W)``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from bandistill.data.views import _splitmix64, view_hash

#: Columns of a view's parameter row.
PARAM_NAMES = ("top", "left", "height", "width", "flip")
#: torchvision's number of tries before the central fallback.
TRIES = 10
#: The evaluation crop: the central square of this fraction of the shorter side (224 of 256).
EVAL_FRACTION = 0.875
_FLIP_STREAM = 0xF11F


def _uniform(h: np.ndarray, stream: int) -> np.ndarray:
    """A float64 in [0, 1) per hash, one independent stream per ``stream`` number."""
    bits = _splitmix64(h ^ np.uint64(stream))
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


@dataclass(frozen=True)
class RandomResizedCrop:
    """torchvision's RandomResizedCrop (+ flip) to ``size`` x ``size``; see the module docstring.

    ``sizes`` ((N, 2) int: height, width of each training image) is bound by the dataset that
    uses the policy (:meth:`bind`); it is not part of the policy's identity or its JSON.
    """

    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    sizes: np.ndarray | None = field(default=None, compare=False, repr=False)

    name = "random-resized-crop"
    num_params = len(PARAM_NAMES)
    #: Views are drawn from a continuum: ``--views all`` has nothing to enumerate.
    num_distinct = 1 << 62

    def __post_init__(self) -> None:
        if not 8 <= int(self.size) <= 4096:
            raise ValueError(f"--image-size must be between 8 and 4096, got {self.size}")
        if not (0 < self.scale[0] <= self.scale[1] <= 1) or not (0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError(f"bad RandomResizedCrop scale {self.scale} or ratio {self.ratio}")

    def to_json(self) -> str:
        """The policy as a canonical JSON string (stored in caches, checkpoints and ONNX metadata)."""
        return json.dumps({"name": self.name, "size": int(self.size), "scale": [float(v) for v in self.scale],
                           "ratio": [float(v) for v in self.ratio], "flip": bool(self.flip)}, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "RandomResizedCrop":
        return cls(size=int(data["size"]), scale=tuple(data["scale"]), ratio=tuple(data["ratio"]),
                   flip=bool(data["flip"]))

    def bind(self, sizes: np.ndarray) -> "RandomResizedCrop":
        """This policy for a dataset whose training images have ``sizes`` (N, 2) (height, width)."""
        return RandomResizedCrop(self.size, tuple(self.scale), tuple(self.ratio), self.flip,
                                 np.asarray(sizes, dtype=np.int64))

    def params(self, seed: int, view: int | np.ndarray, indices: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Boxes and flips ``(N, 5)`` int16 of the given view(s) of the given samples (of the bound sizes)."""
        if isinstance(indices, torch.Tensor):
            indices = indices.cpu().numpy()
        indices = np.asarray(indices, dtype=np.int64)
        if self.sizes is None:
            raise ValueError("RandomResizedCrop.params needs the images' sizes: use the dataset's view_policy")
        hw = self.sizes[indices]
        return boxes(view_hash(seed, view, indices.astype(np.uint64)), hw[:, 0], hw[:, 1], self.scale, self.ratio,
                     self.flip)

    def eval_params(self, hw: np.ndarray) -> torch.Tensor:
        """The evaluation view ``(N, 5)`` of images of sizes ``hw`` (N, 2): the central square, no flip."""
        hw = np.asarray(hw, dtype=np.int64).reshape(-1, 2)
        side = np.maximum(1, np.floor(EVAL_FRACTION * hw.min(axis=1) + 0.5)).astype(np.int64)
        top, left = (hw[:, 0] - side) // 2, (hw[:, 1] - side) // 2
        return torch.from_numpy(np.stack([top, left, side, side, np.zeros_like(side)], axis=1).astype(np.int16))

    def apply(self, images, params: torch.Tensor) -> torch.Tensor:
        """The views of a batch of image files (:class:`bandistill.data.stream.FileImages`) as uint8."""
        from bandistill.data.stream import FileImages

        if not isinstance(images, FileImages):
            raise TypeError("RandomResizedCrop views are made from image files (a streaming dataset), not tensors")
        return images.render(params)


def boxes(h: np.ndarray, height: np.ndarray, width: np.ndarray, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
          flip: bool = True) -> torch.Tensor:
    """torchvision's ``RandomResizedCrop.get_params`` for every sample at once, from per-sample hashes ``h``."""
    height = np.asarray(height, dtype=np.int64)
    width = np.asarray(width, dtype=np.int64)
    n = len(h)
    area = (height * width).astype(np.float64)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    out = np.zeros((n, 5), dtype=np.int64)
    done = np.zeros(n, dtype=bool)
    for t in range(TRIES):
        u = [_uniform(h, 4 * t + k + 1) for k in range(4)]
        target = area * (scale[0] + u[0] * (scale[1] - scale[0]))
        aspect = np.exp(log_lo + u[1] * (log_hi - log_lo))
        w = np.rint(np.sqrt(target * aspect)).astype(np.int64)  # round half to even, like Python's round
        hh = np.rint(np.sqrt(target / aspect)).astype(np.int64)
        fits = ~done & (w > 0) & (w <= width) & (hh > 0) & (hh <= height)
        top = np.floor(u[2] * (height - hh + 1)).astype(np.int64)
        left = np.floor(u[3] * (width - w + 1)).astype(np.int64)
        out[fits, 0], out[fits, 1], out[fits, 2], out[fits, 3] = top[fits], left[fits], hh[fits], w[fits]
        done |= fits
    rest = ~done  # the central fallback, the ratio clamped to the range
    if rest.any():
        H, W = height[rest], width[rest]
        in_ratio = W / H
        w = W.copy()
        hh = H.copy()
        narrow, wide = in_ratio < ratio[0], in_ratio > ratio[1]
        hh[narrow] = np.rint(W[narrow] / ratio[0]).astype(np.int64)
        w[wide] = np.rint(H[wide] * ratio[1]).astype(np.int64)
        out[rest, 0], out[rest, 1], out[rest, 2], out[rest, 3] = (H - hh) // 2, (W - w) // 2, hh, w
    if flip:
        out[:, 4] = (_splitmix64(h ^ np.uint64(_FLIP_STREAM)) >> np.uint64(63)).astype(np.int64)
    return torch.from_numpy(out.astype(np.int16))
