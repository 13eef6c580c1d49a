"""The log of a study run: one line per step, on the terminal (stderr) and appended to ``results/run.log``.

Lines read ``[TAG] SUBJECT: WHAT`` (``[extract] ViT-B-32-zs on imagenet-r: reused (30000 images)``); the file
copy is prefixed with the time. Terminal lines go through ``tqdm.write`` so they never tear a progress bar.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path

from tqdm.auto import tqdm

from robustsig._atomic import open_regular


class RunLog:
    """Log lines of one run.

    Args:
        path: the log file (appended to; its folder is created).
        echo: also print each line on stderr.
    """

    def __init__(self, path: str | os.PathLike, *, echo: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.echo = echo
        # never through a link planted at run.log (it would append to the link's target), never a FIFO
        self._fd = open_regular(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def line(self, tag: str, subject: str, text: str) -> None:
        """Log ``[tag] subject: text``."""
        self.write(f"[{tag}] {subject}: {text}" if subject else f"[{tag}] {text}")

    def write(self, message: str) -> None:
        """Log one line as it is."""
        self._append(f"{datetime.now().isoformat(timespec='seconds')} {message}\n")
        if self.echo:
            tqdm.write(message, file=sys.stderr)

    def detail(self, text: str) -> None:
        """Write to the file only (tracebacks, long details)."""
        self._append(text if text.endswith("\n") else text + "\n")

    def _append(self, text: str) -> None:
        """Append ``text`` whole or not at all: a write cut short (a full disk) is undone, so the log never ends
        in half a line; the error then names the log."""
        # a non-UTF-8 file name in a message is written as \xe9, never a UnicodeEncodeError
        data = text.encode("utf-8", errors="backslashreplace")
        size = os.fstat(self._fd).st_size
        try:
            done = 0
            while done < len(data):
                done += _write(self._fd, data[done:])
        except OSError as error:
            try:
                os.ftruncate(self._fd, size)
            except OSError:
                pass
            raise OSError(error.errno, error.strerror or str(error), str(self.path)) from error

    def close(self) -> None:
        os.close(self._fd)


def _write(fd: int, data: bytes) -> int:
    """``os.write`` (one place for tests to simulate a full disk)."""
    return os.write(fd, data)
