"""Atomic file writes: a reader (or a rerun after a crash) sees the old file or the complete new one, never a part.

Every file robustsig writes that a later run trusts (store shards and manifests, checkpoints, cached heads and
concept matrices, result tables, the report) goes through :func:`atomic_output`: the content is written to a
temporary file in the same folder, flushed to disk, then renamed over the target, and the folder entry is synced.
Temporary files are named ``.tmp-NAME.HOST-PID.RANDOM`` (:func:`temporary_name`; ``HOST`` a short hash of the
machine's name): the first atomic write of a process into a folder deletes the temporary files there whose
writing process, on this machine, is gone (:func:`sweep_temporaries`): what a killed run left is swept by the next
run, never a file of another program, one still being written, nor one of a process on another machine sharing
the folder.
They are created with mode ``0o666`` less the process umask, as ``open()`` creates files (``mkstemp`` would
make them ``0o600``: a report or results table that only its owner can read), and keep that mode whatever writes
them: a library that replaces or re-creates the temporary file (safetensors' ``save_file`` makes its files
``0o600``) gets its mode put back before the rename. Every file robustsig writes thus has one mode rule.

The few files robustsig opens in place rather than replacing (a store's ``.lock``, a study's ``run.log``) are
opened by :func:`open_regular`: never through a symbolic link planted at their path (which would make robustsig
truncate or append to the link's target), never a FIFO (which would block), a device or a folder.

>>> import tempfile, pathlib
>>> target = pathlib.Path(tempfile.mkdtemp()) / "table.csv"
>>> write_text_atomic(target, "a,b\\n1,2\\n")
>>> target.read_text()
'a,b\\n1,2\\n'
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from robustsig.errors import InputError

TEMP_PREFIX = ".tmp-"
_TEMPORARY = re.compile(re.escape(TEMP_PREFIX) + r".+\.([0-9a-f]{6})-(\d+)\.[0-9a-f]{8}")
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]
_swept: set[str] = set()  # the folders this process has swept


def temporary_name(name: str, pid: int | None = None) -> str:
    """The name of a temporary file for the final file ``name``, written by process ``pid`` (default: this one)
    of this machine."""
    return f"{TEMP_PREFIX}{name}.{_HOST}-{os.getpid() if pid is None else pid}.{secrets.token_hex(4)}"


def temporary_writer(name: str) -> int | None:
    """The id of the process of this machine that wrote the temporary file ``name`` (see :func:`temporary_name`),
    or ``None`` when ``name`` is not a temporary file robustsig wrote on this machine."""
    match = _TEMPORARY.fullmatch(name)
    return int(match.group(2)) if match and match.group(1) == _HOST else None


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a process of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed run left in ``folder`` (not in its sub-folders): robustsig's own
    (named by :func:`temporary_name`) whose writing process is gone. Returns the files deleted.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / temporary_name("a.csv", pid=2 ** 22 + 1)).write_text("cut")  # no such process
    >>> len(sweep_temporaries(folder)), list(folder.iterdir())
    (1, [])
    """
    swept = []
    try:
        for entry in Path(folder).iterdir():
            pid = temporary_writer(entry.name)
            if pid is not None and pid != os.getpid() and not process_alive(pid) and entry.is_file():
                entry.unlink(missing_ok=True)
                swept.append(entry)
    except OSError:  # a folder we cannot list or clean: the leftovers only take space
        pass
    return swept


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
    synced and renamed over ``path``; on an error it is deleted and ``path`` is left as it was. The first call of a
    process for a folder sweeps the temporary files killed runs left there (:func:`sweep_temporaries`).

    Args:
        path: the final file (its folder is created when missing).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        folder = str(path.parent.absolute())
        if folder not in _swept:  # once per folder and process
            _swept.add(folder)
            sweep_temporaries(path.parent)
        temporary = _create_temporary(path)
        mode = stat.S_IMODE(os.stat(temporary).st_mode)
    except OSError as error:
        _raise_naming(error, path.parent)
    try:
        yield temporary
        _sync_file(temporary)
        _restore_mode(temporary, mode)
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):
            _raise_naming(error, path)
        raise
    _fsync_dir(path.parent)


def _create_temporary(path: Path) -> Path:
    """A new empty temporary file beside ``path``, mode ``0o666`` less the umask (as ``open()`` would make it)."""
    while True:
        temporary = path.parent / temporary_name(path.name)
        try:
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return temporary


def _restore_mode(path: Path, mode: int) -> None:
    """Give ``path`` its creation ``mode`` again when the writer changed it (see the module notes)."""
    if stat.S_IMODE(os.stat(path).st_mode) != mode:
        os.chmod(path, mode)


def check_writable(path: str | os.PathLike) -> None:
    """Fail now, naming the place, if :func:`atomic_output` could not write ``path``: a folder at ``path``, a
    file where its folder should be, a folder without write permission, a read-only file system. A temporary file
    is created beside ``path`` and deleted (so the check is the real one, also for root and network file
    systems); the folder is created when missing, as :func:`atomic_output` would. Call it before long work
    whose result goes to ``path``.

    Raises:
        InputError: ``path`` is a folder.
        OSError: the folder cannot be created or written (it names the folder).
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give the path of a file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _create_temporary(path).unlink()
    except OSError as error:
        _raise_naming(error, path.parent)


_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def file_kind(path: str | os.PathLike, follow_links: bool = False) -> str:
    """What ``path`` is, in words: ``"a folder"``, ``"a FIFO"``, ``"a symbolic link (to TARGET)"`` (the link itself
    unless ``follow_links``; following it: ``"a symbolic link loop"``, ``"a symbolic link to nothing (TARGET)"``)."""
    try:
        mode = (os.stat if follow_links else os.lstat)(path).st_mode
    except OSError as failure:
        if follow_links and failure.errno == errno.ELOOP:
            return "a symbolic link loop"
        if follow_links and os.path.islink(path):
            return f"a symbolic link to nothing ({os.readlink(path)})"
        return "not a regular file"
    if stat.S_ISREG(mode):
        return "a regular file"
    kind = next((name for test, name in _KINDS if test(mode)), "a special file")
    if stat.S_ISLNK(mode):
        try:
            kind += f" (to {os.readlink(path)})"
        except OSError:
            pass
    return kind


def open_regular(path: str | os.PathLike, flags: int, *, follow_links: bool = False, expected: str = "",
                 error: type[Exception] = InputError) -> int:
    """``os.open(path, flags)`` of a regular file only (created, with ``O_CREAT``, with mode ``0o666`` less the
    umask): never through a symbolic link at ``path`` (unless ``follow_links``), never a FIFO (opened non-blocking,
    so it cannot hang), a socket, a device or a folder.

    Args:
        path: the file.
        flags: ``os.O_*`` flags.
        follow_links: open the file a symbolic link at ``path`` points to (for files the user names, such as a
            class map; never for files robustsig writes in place).
        expected: what the message says belongs there (default: that robustsig writes the file itself).
        error: the exception class raised for a path that is not a regular file.

    Returns:
        the file descriptor, in blocking mode.

    Raises:
        ``error``: ``path`` is a symbolic link (not followed), a link loop, a FIFO, a socket, a device or a folder;
            the message names it and says what it is.
        OSError: any other failure (missing folder, permission), naming ``path``.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> (folder / "log").symlink_to(folder / "elsewhere")
    >>> open_regular(folder / "log", os.O_WRONLY | os.O_CREAT)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    robustsig.errors.InputError: .../log is a symbolic link (to .../elsewhere), not a regular file; ...
    """
    path = os.fspath(path)
    extra = os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | (0 if follow_links else getattr(os, "O_NOFOLLOW", 0))
    advice = expected or ("robustsig writes this file itself and never through a link or into a special file: "
                          "remove what is there and rerun")
    try:
        fd = os.open(path, flags | extra, 0o666)
    except OSError as failure:
        # ELOOP: a link with O_NOFOLLOW, or a link loop; ENXIO: a FIFO without reader; EISDIR: a folder
        if failure.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR, errno.ENODEV, errno.EOPNOTSUPP):
            raise error(f"{path} is {file_kind(path, follow_links)}, not a regular file; {advice}") from None
        raise
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise error(f"{path} is {file_kind(path, follow_links)}, not a regular file; {advice}")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _sync_file(path: Path) -> None:
    """Flush ``path``'s content to disk (where a full disk shows at the latest)."""
    with open(path, "rb+") as stream:
        os.fsync(stream.fileno())


def _raise_naming(error: OSError, path: Path) -> None:
    """Raise ``error``, as an error naming ``path`` when it names no file (that of a write or a flush names none;
    ``OSError(errno, ...)`` keeps its subclass: ``PermissionError``, ...)."""
    if error.filename is not None:
        raise error
    raise OSError(error.errno, error.strerror or str(error), str(path)) from error


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as temporary:
        temporary.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as temporary, open(temporary, "w", encoding="utf-8", newline="") as stream:
        stream.write(text)
