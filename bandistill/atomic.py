"""Writing a file so that a crash never leaves half of it: write a temporary file, then rename.

A module of its own (not in :mod:`bandistill.checkpoint`) because everything that writes
files uses it (checkpoints, caches of decoded images, the manifest, reports, ONNX files),
and the data layer must not import the checkpoint layer that imports it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from bandistill.errors import disk_full_error, is_disk_full


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files; follow the umask like open() does
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if is_disk_full(exc):
            raise disk_full_error(path) from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
