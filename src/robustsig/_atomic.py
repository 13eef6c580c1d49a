"""Atomic file writes: a reader (or a rerun after a crash) sees the old file or the complete new one, never a part.

Every file robustsig writes that a later run trusts (store shards and manifests, checkpoints, cached heads and
concept matrices, result tables, the report) goes through :func:`atomic_output`: the content is written to a
temporary file in the same folder, flushed to disk, then renamed over the target, and the folder entry is synced.
Temporary files start with :data:`TEMP_PREFIX`, so a writer that resumes after a crash can find and delete them.

>>> import tempfile, pathlib
>>> target = pathlib.Path(tempfile.mkdtemp()) / "table.csv"
>>> write_text_atomic(target, "a,b\\n1,2\\n")
>>> target.read_text()
'a,b\\n1,2\\n'
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_PREFIX = ".tmp-"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; on leaving the block without an error it is
    synced and renamed over ``path``; on an error it is deleted and ``path`` is left as it was.

    Args:
        path: the final file (its folder is created when missing).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as temporary:
        temporary.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as temporary, open(temporary, "w", encoding="utf-8", newline="") as stream:
        stream.write(text)
