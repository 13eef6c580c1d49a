"""Exclusive locks on files, for the folders robustsig writes in place (a store, a study's results): a second
process that wants the same folder is refused at once, with the process id and machine of the holder.

A lock is a POSIX record lock (``lockf``) on a small file that holds the holder's process id and machine name. It
belongs to the process alone, so processes it forks (DataLoader workers) do not inherit it, and it ends with the
process, however it ends (``kill -9`` included): no stale lock to remove by hand. The lock file is opened without
following a link planted at its path and never as a FIFO (:func:`robustsig._atomic.open_regular`). A POSIX lock does
not exclude the process holding it, so the locks this process holds are also tracked here.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any

from robustsig._atomic import open_regular
from robustsig.errors import InputError

try:
    import fcntl
except ImportError:  # not POSIX: no inter-process lock
    fcntl = None  # type: ignore[assignment]

_HELD: set[str] = set()
_GUARD = threading.Lock()


def lock_holder(path: str | os.PathLike) -> tuple[int | None, str | None]:
    """The process id and machine name written in a lock file (``None, None`` when unreadable)."""
    try:
        pid, host = Path(path).read_text().split(maxsplit=1)
        return int(pid), host.strip()
    except (OSError, ValueError):
        return None, None


class FileLock:
    """An exclusive lock on ``path``, taken by :meth:`acquire` and given back by :meth:`release`.

    Args:
        path: the lock file (created when missing; its folder must exist).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._handle: Any = None

    def acquire(self, doing: str, advice: str) -> None:
        """Take the lock, or refuse at once.

        Args:
            doing: what the holder does, for the message (``"writing the store in out/"``).
            advice: what to do instead of waiting (``"use another out_dir"``).

        Raises:
            InputError: another process, or this one, holds it (naming the holder); the lock file is a link or
                not a regular file.
        """
        if fcntl is None:
            return
        key = str(self.path.absolute())
        with _GUARD:
            if key in _HELD:
                raise InputError(f"this process is already {doing}; wait for it or {advice}")
            handle = os.fdopen(open_regular(self.path, os.O_RDWR | os.O_CREAT), "r+")  # noqa: SIM115 (release())
            try:
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                pid, host = lock_holder(self.path)
                who = f"process {pid} on {host}" if pid is not None else "another process"
                raise InputError(f"{who} is {doing}; wait for it or {advice}") from None
            _HELD.add(key)
        holder = f"{os.getpid()} {socket.gethostname()}\n"
        handle.seek(0)
        if handle.read() != holder:  # rewritten only for another holder
            handle.seek(0)
            handle.truncate()
            handle.write(holder)
            handle.flush()
        self._handle = handle

    def release(self) -> None:
        """Give the lock back (nothing happens when it is not held)."""
        if self._handle is not None:
            with _GUARD:
                _HELD.discard(str(self.path.absolute()))
                self._handle.close()
            self._handle = None
