"""One process at a time per run folder (``train``, ``ban``) or cache file (``dump-logits``).

Two processes writing one folder interleave their epochs and overwrite each other's
checkpoints. The lock is ``fcntl.flock`` on a small file next to the work: the kernel
releases it when its holder exits, however it exits (a crash, ``kill -9``), so there is
never a stale lock to clean up. The holder writes its pid, host and command into the file
so the second process can say who holds it; the file itself stays (an unlocked file is no
lock). Filesystems without ``flock`` (some network mounts) run unlocked.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from bandistill.errors import UserError

#: The lock file of a run folder.
FOLDER_LOCK = ".bandistill.lock"

_held: dict[str, int] = {}  # lock files this process holds -> nesting depth


def lock_path_for_file(path: str | os.PathLike) -> Path:
    """The lock file guarding one output file (``cache/.gen0.h5.lock`` for ``cache/gen0.h5``)."""
    p = Path(path)
    return p.parent / f".{p.name}.lock"


@contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold the lock of run folder ``folder`` (created if needed) for the ``with`` block."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with hold(folder / FOLDER_LOCK, str(folder)):
        yield


@contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold the lock of output file ``path`` (its folder is created if needed)."""
    lock = lock_path_for_file(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with hold(lock, str(path)):
        yield


@contextmanager
def hold(lock: Path, what: str) -> Iterator[None]:
    """Take ``lock`` without waiting, or raise :class:`UserError` naming its holder."""
    key = os.path.realpath(lock)
    if key in _held:  # this process already holds it (a stage inside a pipeline that holds it)
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                holder = _read_holder(fd) or "a process that is starting"
                raise UserError(f"{what} is in use by another bandistill process ({holder}); wait for it to "
                                "finish or stop it, or choose another --out") from None
            # ENOLCK/ENOTSUP: this filesystem cannot lock; run unlocked rather than not at all
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, _describe_self().encode(), 0)
        except OSError:  # a full disk: the lock holds all the same, only unnamed
            pass
        _held[key] = 1
        try:
            yield
        finally:
            del _held[key]
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
    finally:
        os.close(fd)  # closing releases the flock


def _read_holder(fd: int, wait_s: float = 1.0) -> str:
    """The holder's line. It writes it just after taking the lock, so an empty file is a holder that is
    starting: read again for up to ``wait_s`` before saying so (a second process started beside the first
    otherwise named nobody)."""
    deadline = time.monotonic() + wait_s
    while True:
        holder = os.pread(fd, 512, 0).decode(errors="replace").strip()
        if holder or time.monotonic() >= deadline:
            return holder
        time.sleep(0.02)


def _describe_self() -> str:
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
    if len(command) > 160:
        command = command[:157] + "..."
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    return f"pid {os.getpid()} on {socket.gethostname()}, started {started}: {command}"
