"""Where robustsig keeps what it can rebuild (zero-shot heads, Broden presence matrices, the stat cache of file
digests): one folder, chosen once."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$ROBUSTSIG_CACHE``, else ``$XDG_CACHE_HOME/robustsig``, else ``~/.cache/robustsig``."""
    if os.environ.get("ROBUSTSIG_CACHE"):
        return Path(os.environ["ROBUSTSIG_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "robustsig"
