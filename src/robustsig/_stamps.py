"""How robustsig tells that a file changed without reading it: its *stamp*, the rule every cache key that names
files uses (model weights, class-name and template files, dataset images, WebDataset shards, Broden label PNGs).

A stamp is ``[size, mtime_ns, ctime_ns, inode]`` of the file (links followed). Rewriting a file changes its
ctime, and replacing it by a renamed copy changes its inode, so a file edited in any way since the stamp was taken
has another stamp, even when its size is kept and its modification time is put back (``cp -p``, ``touch -r``,
``rsync -a``). Only a change of the clock or of the file system under the file (a restored backup, a copy to
another disk) can give two different contents one stamp, and those also change the stamp of nearly every file.
A file merely read, or given another name by a link, keeps its stamp. Changing its mode or owner changes ctime
(one recomputation, never a stale result).

Stamping is cheap: one ``stat`` per file, about a microsecond on a warm file system, against reading the whole
file for a content digest (``python -m benchmarks keying`` measures both against extraction).
"""

from __future__ import annotations

import os


def stat_stamp(status: os.stat_result) -> list[int]:
    """The stamp of a file from its ``os.stat`` result."""
    return [status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino]


def file_stamp(path: str | bytes | os.PathLike) -> list[int] | None:
    """``[size, mtime_ns, ctime_ns, inode]`` of ``path`` (links followed), or ``None`` when it cannot be read.

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile() as handle:
    ...     file_stamp(handle.name)[0]
    0
    """
    try:
        return stat_stamp(os.stat(path))
    except (OSError, ValueError):
        return None
