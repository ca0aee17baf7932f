"""Writing a file so that a crash never leaves half of it: write a temporary file, then rename.

A module of its own (not in :mod:`bandistill.checkpoint`) because everything that writes
files uses it (checkpoints, caches of decoded images, the manifest, reports, ONNX files),
and the data layer must not import the checkpoint layer that imports it.

A process killed while writing (``kill -9``, a lost node) leaves its hidden temporary file
behind. The writer holds an ``flock`` on its temporary file until the rename, so the next
write of the same path can tell such leftovers (unlocked) from a concurrent writer's (locked)
and removes them: they never pile up beside the file.
"""

from __future__ import annotations

import fcntl
import glob
import os
import re
import tempfile
from pathlib import Path

from bandistill.errors import disk_full_error, is_disk_full


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        _try_lock(fd)  # held until the rename: this file is not a leftover
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files; follow the umask like open() does
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if is_disk_full(exc):
            raise disk_full_error(path) from None
        raise
    finally:
        os.close(fd)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of ``path`` that killed writers left (``.<name>.<random>.tmp``, unlocked)."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if not _TEMPORARY.fullmatch(tmp.name[len(path.name) + 1:]):
            continue
        try:
            fd = os.open(tmp, os.O_RDONLY)
        except OSError:
            continue
        try:
            if _try_lock(fd):  # nobody holds it: its writer is gone
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
        finally:
            os.close(fd)
    return removed


def _try_lock(fd: int) -> bool:
    """Take an exclusive flock without waiting; False when another process holds one.

    A filesystem that cannot lock (ENOLCK, ENOTSUP) says False too: then nothing is removed.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


#: What follows ``.<name>`` in a temporary file's name (``tempfile.mkstemp``: 8 random characters).
_TEMPORARY = re.compile(r"\.[a-z0-9_]{8}\.tmp")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
