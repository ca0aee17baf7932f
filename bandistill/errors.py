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
