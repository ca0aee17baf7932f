"""The streaming source: an ImageFolder tree of photos that is never loaded whole.

``--dataset imagefolder --image-size S`` takes this path (without ``--image-size`` a tree is
decoded whole into memory, :mod:`bandistill.data.imagefolder`). What is held is the list of
files (relative paths as bytes), their labels and their sizes from the headers: nothing that
grows with the pixels. Each batch is decoded, cropped and
resized when a step asks for it (:meth:`FileImages.render`), by a pool of threads (Pillow
releases the GIL while it decodes and resamples), in uint8 on the CPU: the one place pixels
are made, so the teacher's views and the student's are the same bytes.

Images may have any size and mode (greyscale and CMYK become RGB); the views are
:class:`~bandistill.data.resized_crop.RandomResizedCrop` boxes of the original image.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from bandistill.data.memory import ImageDataset
from bandistill.data.resized_crop import RandomResizedCrop
from bandistill.data.scan import header, scan_tree, unreadable
from bandistill.errors import UserError

#: The usual ImageNet normalisation (in [0, 1] units): a streaming tree is not read whole to measure its own.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
#: The largest side a view parameter (int16) can address.
MAX_SIDE = 32767

_pool: ThreadPoolExecutor | None = None
_ahead_thread: ThreadPoolExecutor | None = None


def decode_workers() -> int:
    """Threads that decode images: ``$BANDISTILL_DECODE_WORKERS``, else the CPU count (at most 16)."""
    value = os.environ.get("BANDISTILL_DECODE_WORKERS", "")
    if value.strip():
        try:
            return max(1, int(value))
        except ValueError:
            raise UserError(f"BANDISTILL_DECODE_WORKERS must be a whole number, got {value!r}") from None
    return max(1, min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def _executor() -> ThreadPoolExecutor:
    global _pool
    workers = decode_workers()  # asked once per batch: the environment and the CPU affinity read once
    if _pool is None or _pool._max_workers != workers:
        _pool = ThreadPoolExecutor(workers, thread_name_prefix="bandistill-decode")
    return _pool


def _background() -> ThreadPoolExecutor:
    """One thread that renders the next batch (on the decode pool) while the caller trains on this one."""
    global _ahead_thread
    if _ahead_thread is None:
        _ahead_thread = ThreadPoolExecutor(1, thread_name_prefix="bandistill-prefetch")
    return _ahead_thread


def _host(params) -> np.ndarray:
    return params.cpu().numpy() if isinstance(params, torch.Tensor) else np.asarray(params)


def render_one(path: Path, hw: tuple[int, int], box: np.ndarray, size: int) -> np.ndarray:
    """The view ``box`` (top, left, height, width, flip) of the image at ``path`` as uint8 ``(3, size, size)``.

    The one function that makes pixels: decode (Pillow), crop the box and resize it to
    ``size`` with the antialiased bilinear filter in one resample, flip, all in uint8.
    """
    from PIL import Image, UnidentifiedImageError

    from bandistill.data.imagefolder import to_8bit

    top, left, h, w, flip = (int(v) for v in box)
    try:
        with Image.open(path) as img:
            if (img.height, img.width) != tuple(hw):
                raise UserError(f"image {path} changed since the dataset was scanned ({img.height}x{img.width}, "
                                f"was {hw[0]}x{hw[1]}); run the command again")
            img = to_8bit(img)
            if img.mode != "RGB":
                img = img.convert("RGB")
            out = img.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise unreadable(path, exc) from None
    if flip:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(out, dtype=np.uint8).transpose(2, 0, 1)


class FileImages:
    """A split of image files standing where the memory source has an ``(N, 3, S, S)`` uint8 tensor.

    Indexing (an int array, a tensor or a slice) gives the files of those samples, still
    undecoded; :meth:`render` makes their views from view parameters; ``float()`` makes
    their evaluation views (what :func:`~bandistill.data.views.normalize` asks for when no
    view is applied). ``to(device)`` only says where rendered batches go.
    """

    dtype = torch.uint8

    def __init__(self, root: Path, paths: np.ndarray, hw: np.ndarray, size: int, policy: RandomResizedCrop,
                 device: torch.device | str = "cpu", index: np.ndarray | None = None, ahead: dict | None = None):
        self.root, self.paths, self.hw, self.size, self.policy = root, paths, hw, int(size), policy
        self.device = torch.device(device)
        self.index = np.arange(len(paths)) if index is None else index  # rows of the whole split
        self._ahead = {} if ahead is None else ahead  # batches being rendered in the background (prefetch)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), 3, self.size, self.size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index) -> "FileImages":
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        return FileImages(self.root, self.paths[index], self.hw[index], self.size, self.policy, self.device,
                          self.index[index], self._ahead)

    def to(self, device=None, *args, **kwargs) -> "FileImages":
        if device is None or isinstance(device, torch.dtype):
            return self
        return FileImages(self.root, self.paths, self.hw, self.size, self.policy, device, self.index, self._ahead)

    def prefetch(self, index, params: torch.Tensor) -> None:
        """Start rendering samples ``index`` with ``params`` in the background: the training loop asks for the
        next batch while the current step runs, so decoding overlaps the step. A later :meth:`render` of
        exactly those samples and parameters takes the result; anything else renders as usual."""
        batch = self[index]
        params = _host(params)
        key = batch._key(params)
        if key not in self._ahead:
            while len(self._ahead) >= 2:  # a batch asked for and never used (skipped): drop the oldest
                self._ahead.pop(next(iter(self._ahead)))
            self._ahead[key] = _background().submit(batch._render_now, params)

    def render(self, params: torch.Tensor) -> torch.Tensor:
        """The views ``params`` (N, 5) of these files: uint8 ``(N, 3, S, S)`` on this split's device."""
        params = _host(params)
        ready = self._ahead.pop(self._key(params), None)
        out = ready.result() if ready is not None else self._render_now(params)
        return out.to(self.device)

    def _key(self, params: np.ndarray) -> bytes:
        return np.ascontiguousarray(self.index).tobytes() + b"|" + np.ascontiguousarray(params).tobytes()

    def _render_now(self, params: np.ndarray) -> torch.Tensor:
        if len(params) != len(self.paths):
            raise ValueError(f"{len(params)} view parameters for {len(self.paths)} images")
        root, size = self.root, self.size
        arrays = list(_executor().map(lambda j: render_one(root / os.fsdecode(self.paths[j]), self.hw[j], params[j],
                                                           size), range(len(self.paths))))
        return torch.from_numpy(np.stack(arrays)) if arrays else torch.empty((0, 3, size, size), dtype=torch.uint8)

    def eval_views(self) -> torch.Tensor:
        """The evaluation views (resize, then the centre crop) as uint8 ``(N, 3, S, S)``."""
        return self.render(self.policy.eval_params(self.hw))

    def float(self) -> torch.Tensor:
        return self.eval_views().float()

    def identity(self) -> str:
        """What the files are, without reading their pixels: relative paths, byte sizes and image sizes."""
        h = hashlib.sha256()
        for rel, (height, width) in zip(self.paths, self.hw):
            h.update(rel + b"\0" + f"{os.stat(self.root / os.fsdecode(rel)).st_size} {height} {width}\0".encode())
        return h.hexdigest()


def eval_tensor(images) -> torch.Tensor:
    """``images`` as a uint8 tensor: a streaming split decoded as its evaluation views (for ONNX runs)."""
    return images.eval_views() if isinstance(images, FileImages) else images


class StreamingDataset(ImageDataset):
    """An :class:`ImageDataset` whose splits are :class:`FileImages` (the normalisation is ImageNet's)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        # the policy draws boxes from the training images' sizes: bound to this train split's (a validation
        # split carved out of it changes which images those are)
        self.view_policy = self.view_policy.bind(self.train_images.hw)

    def normalization(self) -> tuple[list[float], list[float]]:
        """ImageNet's mean and std, as float32 values (what a checkpoint's tensors give back)."""
        return ([float(np.float32(v)) for v in IMAGENET_MEAN], [float(np.float32(v)) for v in IMAGENET_STD])


def load_streaming(data_dir: str | os.PathLike | None, image_size: int) -> StreamingDataset:
    """The tree at ``data_dir`` as a streaming dataset of ``image_size`` x ``image_size`` RandomResizedCrop views."""
    try:
        policy = RandomResizedCrop(size=int(image_size))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    classes, train_dir, train_files, test_dir, test_files = scan_tree(data_dir)
    root = Path(data_dir).expanduser()

    def split(files: list[tuple[Path, int]]) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        paths = np.array([os.fsencode(p.relative_to(root)) for p, _ in files])
        hw = np.array([header_size(p) for p, _ in files], dtype=np.int64).reshape(-1, 2)
        labels = torch.tensor([label for _, label in files], dtype=torch.int64)
        return paths, hw, labels

    tp, thw, ty = split(train_files)
    vp, vhw, vy = split(test_files)
    return StreamingDataset("imagefolder", FileImages(root, tp, thw, image_size, policy), ty,
                            FileImages(root, vp, vhw, image_size, policy), vy, classes, policy)


def header_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image from its header; one line naming the file when it cannot be read."""
    height, width, _ = header(path)
    if max(height, width) > MAX_SIDE:
        raise UserError(f"image {path} is {height}x{width}; sides above {MAX_SIDE} are not supported: resize it")
    return height, width
