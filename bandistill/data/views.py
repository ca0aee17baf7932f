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
import math
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

    @property
    def num_distinct(self) -> int:
        """How many different views the policy can make of one image: (2 pad + 1)^2 crops x 2 flips."""
        return (2 * self.pad + 1) ** 2 * (2 if self.flip else 1)

    def enumerate_params(self, views: np.ndarray) -> torch.Tensor:
        """Parameters ``(N, 3)`` int16 of views numbered ``0 .. num_distinct - 1`` (the whole space).

        View ``v`` is crop row ``v // (span * F)``, crop column ``(v // F) % span`` and flip
        ``v % F`` (span = 2 pad + 1, F = 2 with flips, else 1); the same for every sample.
        """
        views = np.asarray(views, dtype=np.int64)
        span, nflip = 2 * self.pad + 1, 2 if self.flip else 1
        if views.size and (views.min() < 0 or views.max() >= self.num_distinct):
            raise ValueError(f"view numbers must lie in 0..{self.num_distinct - 1}")
        dy, rest = np.divmod(views, span * nflip)
        dx, flip = np.divmod(rest, nflip)
        return torch.from_numpy(np.stack([dy, dx, flip], axis=-1).astype(np.int16))

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


#: What ``--views`` may say besides an integer K.
VIEW_PLANS = ("epochs", "all")
#: Stream tags of the plans' hashes (keep them apart from the other uses of a seed).
_SCHEDULE_STREAM = 0x5C4ED
_DRAW_STREAM = 0xA11_0000


def view_schedule(seed: int, epoch: int, num_views: int) -> int:
    """K cached views: the one every sample is shown in ``epoch``, a seeded permutation per cycle of K epochs."""
    cycle, pos = divmod(int(epoch), int(num_views))
    keys = view_hash(seed, _SCHEDULE_STREAM + cycle, np.arange(num_views, dtype=np.uint64))
    return int(np.argsort(keys, kind="stable")[pos])


@dataclass(frozen=True)
class ViewPlan:
    """Which views a teacher is run on, and which of them a student sees in each epoch.

    A plan is what ``--views`` says, made concrete; the dump writes the views it names and a
    student (from the cache, or beside a live teacher) replays them:

    * ``fixed`` (``--views K``): views ``0..K-1``, each sample's own crop and flip from
      ``policy.params(seed, v, i)``; in every epoch all samples are shown one of them,
      cycling through all K in an order drawn from the student's seed.
    * ``epochs`` (``--views epochs``): one view per epoch of the student's schedule,
      ``num_views`` = its epochs; epoch ``e`` shows view ``e`` (each sample its own crop
      and flip). The student sees a fresh draw every epoch, as generation 0 does.
    * ``all`` (``--views all``): the policy's whole finite space (pad 4, flip: 9 x 9 x 2 =
      162 views; view ``v`` is the same crop and flip for every sample). In every epoch
      each sample draws any view from the student's seed: online distillation with the
      standard augmentation.

    ``seed`` is the seed of the views' parameters (``dump-logits --seed``).
    """

    kind: str
    num_views: int
    seed: int = 0

    @classmethod
    def parse(cls, views: str | int, policy: ViewPolicy, *, epochs: int | None, seed: int = 0) -> "ViewPlan":
        """The plan ``--views`` names (an integer K, ``epochs`` or ``all``); ValueError on a bad value."""
        text = str(views).strip().lower()
        if text == "epochs":
            if not epochs or epochs < 1:
                raise ValueError("--views epochs needs the student's number of epochs (--epochs)")
            return cls("epochs", int(epochs), int(seed))
        if text == "all":
            if not hasattr(policy, "enumerate_params"):
                raise ValueError(f"--views all enumerates a finite view policy; {policy.name} draws from a "
                                 "continuum: use --views epochs or an integer")
            return cls("all", policy.num_distinct, int(seed))
        try:
            k = int(text)
        except ValueError:
            raise ValueError(f"--views must be a positive integer, 'epochs' or 'all', got {views!r}") from None
        if k < 1:
            raise ValueError(f"--views must be a positive integer, 'epochs' or 'all', got {views!r}")
        return cls("fixed", k, int(seed))

    @property
    def label(self) -> str:
        """What a user typed: ``4``, ``epochs`` or ``all``."""
        return str(self.num_views) if self.kind == "fixed" else self.kind

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ViewPlan":
        return cls(**json.loads(text))

    def params(self, policy: ViewPolicy, view: int, indices: np.ndarray) -> torch.Tensor:
        """Parameters ``(N, 3)`` of planned view ``view`` of samples ``indices`` (what the dump stores)."""
        if self.kind == "all":
            return policy.enumerate_params(np.full(len(indices), view, dtype=np.int64))
        return policy.params(self.seed, view, indices)

    def epoch_views(self, student_seed: int, epoch: int, num_samples: int) -> np.ndarray:
        """The planned view ``(N,)`` int64 each sample is shown in ``epoch`` of a student with ``student_seed``."""
        if self.kind == "all":
            h = view_hash(student_seed, _DRAW_STREAM + int(epoch), np.arange(num_samples, dtype=np.uint64))
            return (h % np.uint64(self.num_views)).astype(np.int64)
        if self.kind == "epochs":
            if epoch >= self.num_views:
                raise ValueError(f"the plan has views for {self.num_views} epochs, not epoch {epoch + 1}")
            view = int(epoch)
        else:
            view = view_schedule(student_seed, epoch, self.num_views)
        return np.full(num_samples, view, dtype=np.int64)

    def check_epochs(self, epochs: int) -> str | None:
        """Why a student of ``epochs`` epochs cannot follow this plan, or None when it can."""
        if self.kind == "epochs" and epochs > self.num_views:
            return (f"the cache holds one view per epoch for {self.num_views} epochs, but the student trains "
                    f"{epochs}; dump it with --views epochs --epochs {epochs}")
        return None

    def views_seen(self, policy: ViewPolicy, epochs: int) -> dict[str, float]:
        """Per sample over a run of ``epochs``: views drawn and the expected number of distinct images.

        Draws from a finite space of D views repeat: E independent draws give on average
        D (1 - (1 - 1/D)^E) distinct ones. Generation 0 draws a fresh view each epoch
        (:func:`generation0_views_seen`).
        """
        d = policy.num_distinct
        if self.kind == "fixed":
            drawn = min(self.num_views, epochs)
        else:
            drawn = epochs
        return {"draws": float(drawn), "distinct": expected_distinct(d, drawn)}


def expected_distinct(space: int, draws: int) -> float:
    """Expected number of different values among ``draws`` uniform draws from ``space`` values."""
    return float(-space * math.expm1(draws * math.log1p(-1.0 / space)))  # exact for a huge space too


def generation0_views_seen(policy: ViewPolicy, epochs: int) -> dict[str, float]:
    """Generation 0 (and online distillation) draws a fresh view per epoch."""
    return {"draws": float(epochs), "distinct": expected_distinct(policy.num_distinct, epochs)}


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images to float, scaled to [0, 1] and standardised per channel."""
    x = images.float().div_(255.0)
    return x.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))


def policy_from_json(text: str):
    """The view policy a cache, checkpoint or ONNX file names (``pad-crop-flip`` or ``random-resized-crop``).

    Raises ValueError for a policy this version does not know.
    """
    data = json.loads(text)
    name = data.get("name", ViewPolicy.name)
    if name == ViewPolicy.name:
        return ViewPolicy.from_json(text)
    if name == "random-resized-crop":
        from bandistill.data.resized_crop import RandomResizedCrop

        return RandomResizedCrop.from_dict(data)
    raise ValueError(f"unknown view policy {name!r}")
