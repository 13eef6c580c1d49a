"""A file's *stamp*: ``[size, mtime_ns, ctime_ns, inode]`` (links followed), one ``stat`` away.

Keys are made of file *contents* (:mod:`robustsig._contents`); the stamp only tells which files must be read
again: an unchanged stamp vouches for the digest hashed when the stamp was taken. Writing to a file changes its
ctime (which no program can set back, short of turning the system clock back), replacing it by another file
changes its inode, so a file edited in any way has another stamp. A copy (``cp -a``, ``rsync -a``, a restore) or a
``touch`` also changes the stamp while keeping the bytes: the file is hashed again, and its digest is unchanged.
"""

from __future__ import annotations

import os


def stat_stamp(status: os.stat_result) -> list[int]:
    """The stamp of a file from its ``os.stat`` (or ``os.fstat``) result.

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile() as handle:
    ...     stat_stamp(os.stat(handle.name))[0]
    0
    """
    return [status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino]
