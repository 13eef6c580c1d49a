"""The log of a study run: one line per step, on the terminal (stderr) and appended to ``results/run.log``.

Lines read ``[TAG] SUBJECT: WHAT`` (``[extract] ViT-B-32-zs on imagenet-r: reused (30000 images)``); the file
copy is prefixed with the time. Terminal lines go through ``tqdm.write`` so they never tear a progress bar.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path
from typing import TextIO

from tqdm.auto import tqdm


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
        # closed by close(); a non-UTF-8 file name in a message is written as \xe9, never a UnicodeEncodeError
        self._file: TextIO = open(self.path, "a", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115

    def line(self, tag: str, subject: str, text: str) -> None:
        """Log ``[tag] subject: text``."""
        self.write(f"[{tag}] {subject}: {text}" if subject else f"[{tag}] {text}")

    def write(self, message: str) -> None:
        """Log one line as it is."""
        self._file.write(f"{datetime.now().isoformat(timespec='seconds')} {message}\n")
        self._file.flush()
        if self.echo:
            tqdm.write(message, file=sys.stderr)

    def detail(self, text: str) -> None:
        """Write to the file only (tracebacks, long details)."""
        self._file.write(text if text.endswith("\n") else text + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
