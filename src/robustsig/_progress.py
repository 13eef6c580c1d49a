"""Progress bars for long work, shared by every module so that `--quiet`/`--json` silence them all."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_enabled: bool = os.environ.get("ROBUSTSIG_PROGRESS", "1") != "0"


def progress_enabled() -> bool:
    """Whether progress bars are shown (off with ``ROBUSTSIG_PROGRESS=0`` or :func:`quiet`)."""
    return _enabled


@contextmanager
def quiet() -> Iterator[None]:
    """Silence progress bars inside the block (used by ``--json`` output)."""
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", **kwargs) -> tqdm:
    """A tqdm bar on stderr with robustsig's defaults; disabled when progress is off or stderr is not a tty
    and ``ROBUSTSIG_PROGRESS`` is unset (so CI logs stay readable)."""
    forced = os.environ.get("ROBUSTSIG_PROGRESS") == "1"
    disable = not _enabled or (not forced and not sys.stderr.isatty())
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True,
                file=sys.stderr, **kwargs)
