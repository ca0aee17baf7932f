"""Errors that mean "the user asked for something that cannot work".

The CLI turns a :class:`UserError` into one line on stderr and exit code 2; anything
else is a bug or an environment failure and exits 1.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input: bad option, missing file, mismatched cache...

    The message must be one line that says what is wrong and what to do about it.
    """


class VerificationError(Exception):
    """A check the tool ran on its own output failed (exit code 1, not 2)."""


class StageFailed(VerificationError):
    """A stage run under torchrun failed for a reason that is not the user's (exit code 1, one line)."""


class NonFiniteError(VerificationError):
    """A run produced NaN or inf (a diverged training loss): it stops, exit code 1, one line."""


#: errno values that mean "the disk (or the file size limit) is full".
DISK_FULL_ERRNOS = (28, 27, 122)  # ENOSPC, EFBIG, EDQUOT


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is a write that failed for lack of space (HDF5 reports it only in its message)."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    text = str(exc)
    return any(s in text for s in ("No space left on device", "File too large", "Disk quota exceeded",
                                   "errno = 28", "errno = 27", "errno = 122"))


class DiskFullError(UserError):
    """A write ran out of space (see :func:`disk_full_error`); ``where`` is the file it was writing."""

    def __init__(self, message: str, where: object = None):
        super().__init__(message)
        self.where = where


def disk_full_error(where: object) -> DiskFullError:
    """The one line for a write that ran out of space; the work done so far is kept and resumes."""
    return DiskFullError(f"no space left writing {where} (disk or file size limit full); free space and run the "
                         "same command again: it resumes from what was saved", where)


class DumpInterrupted(RuntimeError):
    """Raised by the dump's ``stop_after_views`` test hook: stands in for a dump killed midway."""
