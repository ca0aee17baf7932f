"""Reading an ImageFolder tree's layout: its splits, classes and image files, and image headers.

``root/train/<class>/*`` and ``root/test/<class>/*`` (``val/`` accepted for ``test/``).
Hidden folders and files (``.ipynb_checkpoints/``, ``.DS_Store``) are not classes or images.
Nothing here decodes pixels.
"""

from __future__ import annotations

import os
from pathlib import Path

from bandistill.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
#: PIL modes of single-channel images (16-bit and 32-bit integer, float, 1-bit, with alpha).
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")


def split_folders(data_dir: str | os.PathLike | None) -> tuple[Path, Path]:
    """The ``train/`` and ``test/`` (or ``val/``) folders of the tree at ``data_dir``."""
    if data_dir is None:
        raise UserError("--dataset imagefolder needs --data-dir pointing at a folder with train/ and test/ (or val/)")
    root = Path(data_dir).expanduser()
    train_dir = root / "train"
    test_dir = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise UserError(
            f"{root} is not an ImageFolder tree: expected {train_dir}/<class>/*.png and {root / 'test'}/<class>/* (or val/)"
        )
    return train_dir, test_dir


def scan_tree(data_dir: str | os.PathLike | None) -> tuple[list[str], Path, list[tuple[Path, int]], Path,
                                                           list[tuple[Path, int]]]:
    """``(classes, train_dir, train_files, test_dir, test_files)`` of a tree, refusing a malformed one."""
    train_dir, test_dir = split_folders(data_dir)
    classes = class_folders(train_dir)
    if not classes:
        raise UserError(f"{train_dir} has no class folders: expected {train_dir}/<class>/<image files>")
    extra = sorted(set(class_folders(test_dir)) - set(classes))
    if extra:
        raise UserError(f"{test_dir} has classes that {train_dir} lacks: {', '.join(extra[:5])}")
    train_files = image_files(train_dir, classes)
    empty = sorted(set(classes) - {classes[label] for _, label in train_files})
    if empty:
        raise UserError(f"class folder {train_dir / empty[0]} holds no images ({len(empty)} such); every class "
                        "needs training images: add some or remove the folder")
    test_files = image_files(test_dir, classes)
    if not test_files:
        raise UserError(f"no images found under {test_dir}/<class>/ (looked for {', '.join(IMAGE_SUFFIXES)})")
    return classes, train_dir, train_files, test_dir, test_files


def class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(folder: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(path, label) of every image file under ``folder/<class>/`` (hidden files skipped), in a fixed order."""
    files = []
    for label, cls in enumerate(classes):
        cdir = folder / cls
        if cdir.is_dir():
            files += [(p, label) for p in sorted(cdir.iterdir())
                      if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    return files


def unreadable(path: Path, exc: BaseException) -> UserError:
    """The one line for an image file that cannot be decoded (damaged, truncated, or a decompression bomb)."""
    return UserError(f"cannot read image {path}: {exc}; remove or replace the file")


def header(path: Path) -> tuple[int, int, str]:
    """(height, width, mode) of an image from its header, decoding no pixels; one line naming a damaged file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.height, img.width, img.mode
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise unreadable(path, exc) from None


def majority_format(folder: Path, files: list[tuple[Path, int]]) -> tuple[tuple[int, int], str]:
    """The size most training images have and their majority mode (``L`` or ``RGB``), from headers only.

    The first image used to decide both, so one small or grayscale image shrank or greyed the
    whole dataset. Images of another size are resized to the majority's; when no size is
    shared by more than half of the images there is no sensible one, and the tree is refused.
    """
    from collections import Counter

    sizes: Counter = Counter()
    gray = 0
    for path, _ in files:
        height, width, mode = header(path)
        sizes[(height, width)] += 1
        gray += mode in GRAY_MODES
    (size, count), total = sizes.most_common(1)[0], len(files)
    if count * 2 <= total:
        listed = ", ".join(f"{h}x{w} ({n})" for (h, w), n in sizes.most_common(3))
        raise UserError(f"the images under {folder} have no majority size ({listed}, ...); resize them to one "
                        "size first")
    return size, "L" if gray * 2 > total else "RGB"
