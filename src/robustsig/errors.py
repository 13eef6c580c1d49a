"""Exceptions raised by robustsig.

Every error a user can cause by passing bad input derives from :class:`RobustsigError`, so the command
line prints its message (which names the bad input and what was expected) without a traceback.
"""

from __future__ import annotations

import errno


class RobustsigError(Exception):
    """Base class of the errors robustsig raises on purpose."""


class InputError(RobustsigError, ValueError):
    """An argument, file or config value is not what was expected; the message says what to pass instead."""


class DataError(RobustsigError):
    """A dataset folder, mapping file or image does not have the expected layout or content."""


class CorruptImageError(DataError):
    """An image file could not be decoded (truncated, not an image, unreadable)."""

    def __init__(self, path: str, reason: str | None = None) -> None:
        # With one argument it is a whole message: that is how a DataLoader worker re-raises the error in the
        # main process, which keeps it a CorruptImageError (printed cleanly by the CLI) instead of a RuntimeError.
        super().__init__(path if reason is None else f"cannot decode image {path!r}: {reason}")
        self.path = path
        self.reason = reason


class UnsafeCheckpointError(RobustsigError):
    """A checkpoint needs arbitrary pickled code to load; robustsig only loads tensors (weights_only)."""


def os_error_message(error: OSError) -> str:
    """One line saying which file an operating-system error (a full disk, a file where a folder should be, a
    permission) concerns, and what to do: what the command line prints instead of a traceback.

    >>> os_error_message(OSError(errno.ENOSPC, "No space left on device", "out/results/accuracy.csv")).split(";")[0]
    'cannot write out/results/accuracy.csv: No space left on device'
    """
    path = error.filename if error.filename is not None else "a file"
    cause = error.strerror or str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"cannot write {path}: {cause}; free some space (or write elsewhere) and rerun: finished work is kept"
    if error.errno in (errno.EEXIST, errno.ENOTDIR):
        return (f"{path}: {cause}: it, or a folder on its path, is a file and not a folder; give a folder path "
                "there, or another path")
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{path}: {cause}; choose a path you can write, or change its permissions"
    return f"{path}: {cause}"
