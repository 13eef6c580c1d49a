"""Folder walking shared by the loaders: listing images and class folders, finding a layout under a download's
top folder, and the one error every loader raises for a missing or wrong root."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from robustsig.data.base import is_image_file
from robustsig.errors import DataError


def layout_error(kind: str, path: str | os.PathLike, problem: str, expected: str) -> DataError:
    """``DataError("imagenet-r: /data/x: <problem>; expected <expected>")``."""
    return DataError(f"{kind}: {path}: {problem}; expected {expected}")


def require_dir(root: str | os.PathLike, kind: str, expected: str) -> Path:
    """``root`` as an absolute Path, or a :class:`DataError` when it is missing or not a folder."""
    path = Path(root).expanduser()
    if not path.exists():
        raise layout_error(kind, path, "no such folder", expected)
    if not path.is_dir():
        raise layout_error(kind, path, "not a folder", expected)
    return path.resolve()


def _visible(entry: os.DirEntry) -> bool:
    return not entry.name.startswith(".")


def subfolders(folder: Path) -> list[Path]:
    """The non-hidden sub-folders of ``folder``, sorted by name."""
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries if _visible(e) and e.is_dir())


def images_in(folder: Path) -> list[Path]:
    """The non-hidden image files directly in ``folder``, sorted by name."""
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries if _visible(e) and e.is_file() and is_image_file(e.name))


def list_images(folder: Path) -> list[Path]:
    """Every non-hidden image file under ``folder`` (recursively, following links), sorted by relative path."""
    found: list[Path] = []
    for parent, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(Path(parent, f) for f in files if not f.startswith(".") and is_image_file(f))
    return sorted(found)


def locate(root: Path, accepts: Callable[[Path], bool], inner: Iterable[str] = ()) -> Path | None:
    """``root`` when ``accepts(root)``, else the first of ``root/<inner path>`` that exists and is accepted
    (how the official downloads nest their data: ``objectnet-1.0/``, ``imagenet-r/``...), else ``None``."""
    if accepts(root):
        return root
    for relative in inner:
        candidate = root / relative
        if candidate.is_dir() and accepts(candidate):
            return candidate
    return None


def examples(names: Iterable[str], limit: int = 5) -> str:
    """``'a', 'b', 'c' and 4 more`` for error messages."""
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
