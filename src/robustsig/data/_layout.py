"""Folder walking shared by the loaders: listing images and class folders, finding a layout under a download's
top folder, and the one error every loader raises for a missing or wrong root."""

from __future__ import annotations

import os
import stat
import warnings
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


Unlisted = list[dict[str, str]]
"""Files and folders a walk found but did not list, ``{"path": ..., "reason": ...}`` each (see
:func:`list_images`)."""


def _visible(entry: os.DirEntry) -> bool:
    return not entry.name.startswith(".")


def _note(problems: Unlisted | None, path: str, reason: str, loud: bool = False) -> None:
    """Record a file or folder left out: into ``problems`` when the caller collects them (the dataset's
    ``.unlisted``), and as a warning when nobody does or when it is ``loud`` (a link loop)."""
    if problems is not None:
        problems.append({"path": path, "reason": reason})
    if problems is None or loud:
        warnings.warn(f"{path}: {reason}; left out of the dataset", RuntimeWarning, stacklevel=4)


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"))


def _regular_image(entry: os.DirEntry, problems: Unlisted | None,
                   seen: dict[tuple[int, int], tuple[str, str]] | None, scope: str = "") -> bool:
    """Whether ``entry`` (an image name) is a readable regular file, not met before in this walk; a FIFO, a
    device, a broken link, an unreadable file or a second link to a file already listed is noted instead.
    ``seen`` maps each file listed to its path and the class folder (``scope``) it was listed in: a second link
    in another class folder is also a warning naming both (one image, one label; the first class keeps it).
    Only ``stat`` and ``access`` are called: nothing is opened (opening a FIFO would block)."""
    try:
        status = os.stat(entry.path)  # follows links
    except OSError as error:
        _note(problems, entry.path, f"cannot read the file: {error.strerror or error}")
        return False
    if not stat.S_ISREG(status.st_mode):
        kind = next((name for test, name in _KINDS if test(status.st_mode)), "a special file")
        _note(problems, entry.path, f"not a regular file ({kind})")
        return False
    if not os.access(entry.path, os.R_OK):
        _note(problems, entry.path, "cannot read the file: permission denied")
        return False
    if seen is not None:
        identity = (status.st_dev, status.st_ino)
        if identity in seen:
            first, first_scope = seen[identity]
            if first_scope == scope:
                _note(problems, entry.path, "the same file as one already listed (a link): counted once")
            else:  # one image in two classes: its second label is dropped, loudly
                _note(problems, entry.path, f"the same file as {first} (a link), listed in the class folder "
                      f"{os.path.basename(first_scope)!r}: an image has one label, so it is counted once, in that "
                      f"class, not in {os.path.basename(scope)!r}", loud=True)
            return False
        seen[identity] = (entry.path, scope)
    return True


def _scan(folder: str | os.PathLike, problems: Unlisted | None) -> list[os.DirEntry]:
    """The visible entries of ``folder`` sorted by name; none (noted) when it cannot be listed."""
    try:
        with os.scandir(folder) as entries:
            return sorted((e for e in entries if _visible(e)), key=lambda e: e.name)
    except OSError as error:
        _note(problems, os.fspath(folder), f"cannot list the folder: {error.strerror or error}")
        return []


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def subfolders(folder: Path, problems: Unlisted | None = None) -> list[Path]:
    """The non-hidden sub-folders of ``folder``, sorted by name."""
    return [Path(e.path) for e in _scan(folder, problems) if _is_dir(e)]


def images_in(folder: Path, problems: Unlisted | None = None) -> list[Path]:
    """The non-hidden image files directly in ``folder`` (regular files only), sorted by name."""
    return [Path(e.path) for e in _scan(folder, problems)
            if not _is_dir(e) and is_image_file(e.name) and _regular_image(e, problems, None)]


def _identity(path: str) -> tuple[int, int]:
    status = os.stat(path)
    return status.st_dev, status.st_ino


class ImageWalk:
    """Recursive listings of image files that share what they have seen, so each real file and folder is listed
    once across them (the class folders of one dataset).

    A link back into a folder above the one being walked (a loop) is left out with a warning; a second way into a
    folder or file already listed (a link), or into one of the ``reserved`` folders (the other class folders,
    walked as their own class), is left out. A file linked into two class folders (two walks) is kept in the first
    one only (an image has one label; the duplicate would also break the label-permutation test), with a warning
    naming both. Only regular files are listed. Whatever is left out (also a folder
    that cannot be listed, a file that cannot be read, a FIFO) is appended to ``problems`` with the reason;
    without ``problems`` each is a warning.

    Args:
        problems: where to note what is left out (a dataset's ``.unlisted``), or None to warn.
        reserved: folders that will be walked on their own (never entered through a link).
    """

    def __init__(self, problems: Unlisted | None = None, reserved: Iterable[Path] = ()) -> None:
        self.problems = problems
        self._walked: dict[tuple[int, int], str] = {}
        self._files: dict[tuple[int, int], tuple[str, str]] = {}  # each file listed: its path, its walk's start
        self._start = ""
        self._parents: dict[str, dict[tuple[int, int], str]] = {}
        for folder in reserved:
            try:
                self._walked[_identity(os.fspath(folder))] = os.fspath(folder)
            except OSError:
                pass

    def images(self, folder: Path) -> list[Path]:
        """Every non-hidden image file under ``folder`` (following links), sorted by relative path."""
        found: list[str] = []
        start = self._start = os.fspath(folder)
        # the real folders above the start: a link to one of them is a loop
        self._walk(start, self._above(os.path.dirname(os.path.realpath(start))), found, first=True)
        return [Path(path) for path in sorted(found, key=lambda path: path.split(os.sep))]  # Path order, faster

    def _above(self, real: str) -> dict[tuple[int, int], str]:
        """The identities of ``real`` and every folder above it (kept: class folders share their parents)."""
        if real not in self._parents:
            parent = os.path.dirname(real)
            above = self._above(parent) if parent != real else {}
            try:
                above = {**above, _identity(real): real}
            except OSError:
                pass
            self._parents[real] = above
        return self._parents[real]

    def _walk(self, directory: str, ancestors: dict[tuple[int, int], str], found: list[str], first: bool) -> None:
        try:
            identity = _identity(directory)
        except OSError as error:
            _note(self.problems, directory, f"cannot read the folder: {error.strerror or error}")
            return
        if identity in ancestors:
            _note(self.problems, directory, f"a symbolic link loop (it leads back to {ancestors[identity]})",
                  loud=True)
            return
        if identity in self._walked and not first:
            _note(self.problems, directory, f"already listed as {self._walked[identity]} (a link): counted once")
            return
        self._walked[identity] = directory
        inner = {**ancestors, identity: directory}
        for entry in _scan(directory, self.problems):
            if _is_dir(entry):
                self._walk(entry.path, inner, found, first=False)
            elif is_image_file(entry.name) and _regular_image(entry, self.problems, self._files, self._start):
                found.append(entry.path)


def list_images(folder: Path, problems: Unlisted | None = None) -> list[Path]:
    """Every non-hidden image file under ``folder`` (recursively, following links, each real file once), sorted
    by relative path; see :class:`ImageWalk` for what is left out and noted in ``problems``."""
    return ImageWalk(problems).images(folder)


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
