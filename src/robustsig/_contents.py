"""What every robustsig cache key that names files is made of: the files' *contents*, with their stat data as a
cache of the content digests (the rule of git's index).

A file's digest is blake2b (16 bytes) of its bytes. Reading every image of a dataset on every run would cost a
full read of the data set each time, so each folder (a dataset's root; single files such as weights share one
scope) has a *stat cache*: for every file it hashed, its stamp (size, mtime, ctime, inode: :mod:`robustsig._stamps`)
and the digest. A file whose stamp equals the cached one is not read again; any other file is read and hashed,
and the cache refreshed. So:

- a run where no stat changed costs one ``stat`` per file (and reading the cache file);
- a copy (``cp -a``, ``rsync -a``, a restore from a backup), a ``touch`` or a move to another disk changes the
  stamps, so each file is read and hashed once; its digest is unchanged, so whatever was keyed by it is reused;
- a changed byte always changes the digest once the file is re-hashed, and a file is re-hashed whenever any
  field of its stamp changed. Writing to a file sets its ctime to the current time, and ctime cannot be set by
  a program (only by changing the system clock), so an edit in place, a same-size edit with mtime put back
  (``touch -r``, ``os.utime``), an edit through a hard link (the inode's ctime changes) and a file replaced by
  another (a new inode) are all caught.

*Racily clean* entries (git's word): a file changed right after it was hashed, within the same tick of the file
system's clock, keeps its stamp. So an entry is trusted only when the file's mtime and ctime are older than the
moment it was hashed by :data:`RACY_NS` (2 s: FAT's mtime step, and more than the clock steps of ext4, XFS, NFS);
a younger one is hashed again on the next run (and then trusted once it has aged).

What a stat cache cannot see: a file rewritten with every stamp field restored, which needs ctime set back, i.e.
the system clock turned back (or a file server whose clock lags this machine's by more than 2 s, with a write in
the same clock tick right after the hash). For those, and for a cache you do not trust, force a full re-hash:
``ROBUSTSIG_REHASH=1`` in the environment, ``robustsig extract --rehash``, ``rs.extract(..., rehash=True)`` or
``with rehashing():`` in Python: every file is read and hashed, and the cache rewritten.

The cache lives in ``$ROBUSTSIG_CACHE/contents/`` (default ``~/.cache/robustsig``), one file per folder named by
the folder's device and inode (so a folder moved or renamed on its file system keeps its cache), with entries
named by the path relative to the folder. It is written atomically and holds a checksum: a cache file that is
garbled, truncated or of another format is ignored (every file is hashed again) and rewritten. Processes that
hash the same folder at once (torchrun ranks, two runs) take turns on a lock beside the cache file, so the files
are read once; a lock that cannot be had within :data:`LOCK_WAIT_S` is passed over (only the work is repeated,
never the result). Losing the cache only costs a re-hash.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustsig._atomic import write_bytes_atomic
from robustsig._cache import default_cache_dir
from robustsig._stamps import stat_stamp

try:
    import fcntl
except ImportError:  # not POSIX: no lock, processes may hash the same files twice
    fcntl = None  # type: ignore[assignment]

DIGEST_SIZE = 16
RACY_NS = 2_000_000_000
LOCK_WAIT_S = 300.0
CACHE_FORMAT = "robustsig.contents-cache"
CACHE_VERSION = 1
_CHUNK = 1 << 20
_HASH_THREADS = 8  # hashlib and file reads release the GIL: threads overlap disk waits and use every core
_FILES_SCOPE = "files"  # the scope of files named one by one (weights, class-name files), by absolute path

log = logging.getLogger("robustsig.contents")
_REHASH: ContextVar[bool] = ContextVar("robustsig_rehash", default=False)


def rehash_forced() -> bool:
    """Whether every file must be read again, whatever the cache says (``ROBUSTSIG_REHASH=1`` or
    :func:`rehashing`)."""
    return _REHASH.get() or os.environ.get("ROBUSTSIG_REHASH", "0") not in ("", "0")


@contextmanager
def rehashing(enabled: bool = True) -> Iterator[None]:
    """Inside the block every file digest is computed from the file's bytes, not taken from the stat cache.

    >>> with rehashing():
    ...     rehash_forced()
    True
    """
    token = _REHASH.set(enabled or _REHASH.get())
    try:
        yield
    finally:
        _REHASH.reset(token)


@dataclass
class HashReport:
    """What one pass over a set of files did.

    Attributes:
        files: files looked at.
        hashed: files read and hashed (their stamp was new, changed or too young to trust, or a re-hash was forced).
        stat_only: names whose stamp changed but whose bytes did not (a copy, ``touch``, a restore): the
            first few, and ``stat_only_count`` of them in all.
        changed: names whose bytes changed since the cache saw them (first few), ``changed_count`` in all.
        unreadable: files that could not be read (their digest is ``None``).
    """

    files: int = 0
    hashed: int = 0
    stat_only: list[str] = field(default_factory=list)
    stat_only_count: int = 0
    changed: list[str] = field(default_factory=list)
    changed_count: int = 0
    unreadable: int = 0

    EXAMPLES = 5

    def note(self, name: str, before: tuple[list[int], str] | None, stamp: list[int], digest: str) -> None:
        """Record a file hashed again whose cache entry was ``before`` (its stamp and digest) and is now ``stamp``
        and ``digest``."""
        if before is None:
            return
        if before[1] == digest:
            if before[0] == stamp:
                return  # read again only because it was too young to trust, or a re-hash was forced
            self.stat_only_count += 1
            if len(self.stat_only) < self.EXAMPLES:
                self.stat_only.append(name)
        else:
            self.changed_count += 1
            if len(self.changed) < self.EXAMPLES:
                self.changed.append(name)

    def as_dict(self) -> dict[str, Any]:
        return {"files": self.files, "hashed": self.hashed, "stat_only": self.stat_only_count,
                "changed": self.changed_count, "unreadable": self.unreadable}


def digest_bytes(data: bytes) -> str:
    """The digest robustsig keys contents by (blake2b, 16 bytes, hex)."""
    return hashlib.blake2b(data, digest_size=DIGEST_SIZE).hexdigest()


def _hash_file(path: str) -> tuple[str, list[int]] | None:
    """The digest of ``path``'s bytes and its stamp, taken on the open file before and after reading; ``None``
    when it cannot be read. A file that changed while it was read is read again (up to 3 times; then its last
    digest is returned with an empty stamp, so it is not cached). Raw descriptors and one ``read`` for a small
    file: the per-file cost matters for 50,000 images."""
    for _ in range(3):
        try:
            fd = os.open(path, os.O_RDONLY)
        except (OSError, ValueError):
            return None
        try:
            before = stat_stamp(os.fstat(fd))
            digest = hashlib.blake2b(digest_size=DIGEST_SIZE)
            size = before[0] + 1 if before[0] < _CHUNK else _CHUNK  # a small file in one read, a large one by MB
            while chunk := os.read(fd, size):
                digest.update(chunk)
            after = stat_stamp(os.fstat(fd))
        except OSError:
            return None
        finally:
            os.close(fd)
        if before == after:
            return digest.hexdigest(), before
    return digest.hexdigest(), []


def _hash_files(paths: list[str]) -> list[tuple[str, list[int]] | None]:
    return [_hash_file(path) for path in paths]


def _cache_dir() -> Path:
    return default_cache_dir() / "contents"


class _Cache:
    """One scope's stat cache: ``{name: [size, mtime_ns, ctime_ns, inode, hashed_ns, digest]}`` in a JSON file."""

    def __init__(self, scope: str, label: str) -> None:
        self.path = _cache_dir() / f"{scope}.json"
        self.label = label
        self.entries: dict[str, list[Any]] = {}
        self.dirty = False

    def load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            self.entries = {}
            return
        except OSError as error:
            log.warning("cannot read the content cache %s (%s): every file is hashed again", self.path, error)
            self.entries = {}
            return
        header, _, body = raw.partition(b"\n")
        try:
            meta = json.loads(header)
            if (meta.get("format") != CACHE_FORMAT or meta.get("version") != CACHE_VERSION
                    or meta.get("checksum") != digest_bytes(body)):
                raise ValueError("not a content cache of this version, or its checksum does not match")
            entries = json.loads(body)
            if not isinstance(entries, dict) or not all(
                    type(entry) is list and len(entry) == 6 and type(entry[4]) is int and type(entry[5]) is str
                    for entry in entries.values()):
                raise ValueError("entries of another shape")
        except ValueError as error:
            log.warning("ignoring the garbled content cache %s (%s): every file is hashed again and the cache "
                        "rewritten", self.path, error)
            self.entries, self.dirty = {}, True
            return
        self.entries = entries

    def lookup(self, name: str, stamp: list[int]) -> str | None:
        """The cached digest of ``name`` when its stamp is unchanged and was old enough when hashed."""
        entry = self.entries.get(name)
        if entry is None or entry[:4] != stamp:
            return None
        trusted_before = entry[4] - RACY_NS  # racily clean: it may have changed within the tick it was hashed in
        return entry[5] if stamp[1] < trusted_before and stamp[2] < trusted_before else None

    def previous(self, name: str) -> tuple[list[int], str] | None:
        """The stamp and digest the cache holds for ``name``, trusted or not."""
        entry = self.entries.get(name)
        return None if entry is None else (entry[:4], entry[5])

    def store(self, name: str, stamp: list[int], hashed_ns: int, digest: str) -> None:
        self.entries[name] = [*stamp, hashed_ns, digest]
        self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        body = json.dumps(self.entries, separators=(",", ":")).encode()
        header = json.dumps({"format": CACHE_FORMAT, "version": CACHE_VERSION, "scope": self.label,
                             "checksum": digest_bytes(body)}).encode()
        try:
            write_bytes_atomic(self.path, header + b"\n" + body)
        except (OSError, RuntimeError) as error:  # a read-only or full cache folder: only the work is lost
            log.warning("cannot write the content cache %s (%s): files will be hashed again next time",
                        self.path, error)
        self.dirty = False

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold ``SCOPE.lock`` (opened without following a link), waiting at most :data:`LOCK_WAIT_S`."""
        handle = None
        if fcntl is not None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                handle = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            except OSError as error:
                log.warning("cannot lock the content cache %s (%s)", self.path, error)
            if handle is not None:
                deadline = time.monotonic() + LOCK_WAIT_S
                while True:
                    try:
                        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except OSError as error:
                        if error.errno not in (errno.EACCES, errno.EAGAIN) or time.monotonic() > deadline:
                            log.warning("going on without the lock of %s (%s)", self.path, error)
                            os.close(handle)
                            handle = None
                            break
                        time.sleep(0.05)
        try:
            yield
        finally:
            if handle is not None:
                os.close(handle)


def _scope_of(root: str | os.PathLike | None) -> tuple[str, str]:
    """The cache scope of a folder (by device and inode) and its label; the shared scope of single files."""
    if root is not None:
        try:
            status = os.stat(root)
            return f"dir-{status.st_dev:x}-{status.st_ino:x}", os.path.abspath(root)
        except OSError:
            pass
    return _FILES_SCOPE, "files named one by one (absolute paths)"


def cache_file(root: str | os.PathLike | None) -> Path:
    """Where the stat cache of files under ``root`` (``None``: single files) is kept."""
    return _cache_dir() / f"{_scope_of(root)[0]}.json"


def digest_files(paths: Sequence[str], root: str | os.PathLike | None = None,
                 names: Sequence[str] | None = None, *, progress_label: str = "hash"
                 ) -> tuple[list[str | None], HashReport]:
    """The content digest of every file in ``paths`` (``None`` for a file that cannot be read), reading only the
    files whose stamp the stat cache of ``root`` does not vouch for (see the module notes).

    Args:
        paths: the files (links followed).
        root: the folder whose cache serves them (a dataset's root); ``None``: the cache of single files.
        names: the cache's name of each file (default: the path relative to ``root``; the absolute path when
            ``root`` is ``None``).
        progress_label: the progress bar's label, shown when many files must be read.

    Returns:
        The digests in the order of ``paths``, and what the pass did.
    """
    with _collector_paused():
        return _digest_files(paths, root, names, progress_label)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cache of 50,000 files is 300,000 small objects, none in a cycle: the cyclic garbage collector would
    walk them again and again while they are built and compared (it made a run with nothing changed 1.7 times
    slower), so it waits for the end of the pass."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _digest_files(paths: Sequence[str], root: str | os.PathLike | None, names: Sequence[str] | None,
                  progress_label: str) -> tuple[list[str | None], HashReport]:
    scope, label = _scope_of(root)
    if names is None:
        names = relative_names(paths, root) if scope != _FILES_SCOPE else [os.path.abspath(p) for p in paths]
    cache = _Cache(scope, label)
    forced = rehash_forced()
    report = HashReport(files=len(paths))
    digests: list[str | None] = [None] * len(paths)
    stamps: list[list[int] | None] = [None] * len(paths)
    todo: list[int] = []
    if not forced:
        cache.load()
    lookup = cache.lookup
    for index, path in enumerate(paths):  # the one loop a run with nothing changed pays: keep it lean
        try:
            status = os.stat(path)
        except (OSError, ValueError):
            report.unreadable += 1
            continue
        stamps[index] = stamp = [status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino]
        cached = None if forced else lookup(names[index], stamp)
        if cached is None:
            todo.append(index)
        else:
            digests[index] = cached
    if not todo:
        if cache.dirty:
            cache.save()
        return digests, report
    with cache.locked():
        if not forced:
            cache.load()  # another process may have hashed them while we waited
            for index in list(todo):
                cached = cache.lookup(names[index], stamps[index])  # type: ignore[arg-type]
                if cached is not None:
                    digests[index] = cached
            todo = [index for index in todo if digests[index] is None]
        else:
            cache.load()
        _hash_into(paths, names, todo, digests, cache, report, progress_label)
        cache.save()
    return digests, report


def _hash_into(paths: Sequence[str], names: Sequence[str], todo: list[int], digests: list[str | None],
               cache: _Cache, report: HashReport, progress_label: str) -> None:
    from robustsig._progress import progress

    hashed_ns = time.time_ns()
    bar = progress(total=len(todo), desc=progress_label, unit="file") if len(todo) > 1000 else None
    chunks = [todo[start:start + 64] for start in range(0, len(todo), 64)]  # one task per 64 files, not per file
    threads = min(_HASH_THREADS, (os.cpu_count() or 1) * 2, len(chunks))
    try:
        with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="robustsig-hash") as pool:
            for chunk, results in zip(chunks, pool.map(_hash_files, [[paths[i] for i in chunk] for chunk in chunks])):
                if bar is not None:
                    bar.update(len(chunk))
                for index, result in zip(chunk, results):
                    if result is None:
                        report.unreadable += 1
                        continue
                    digest, stamp = result
                    report.hashed += 1
                    report.note(names[index], cache.previous(names[index]), stamp, digest)
                    digests[index] = digest
                    if stamp:
                        cache.store(names[index], stamp, hashed_ns, digest)
    finally:
        if bar is not None:
            bar.close()


def relative_names(paths: Sequence[str], root: str | os.PathLike) -> list[str]:
    """Each path relative to ``root`` (a string prefix cut where the path starts with it: ``os.path.relpath``
    costs microseconds a call, which ImageNet's 50,000 files would feel)."""
    root = os.fspath(root)
    prefix = root if root.endswith(os.sep) else root + os.sep
    cut = len(prefix)
    return [path[cut:] if path.startswith(prefix) else os.path.relpath(path, root) for path in map(os.fspath, paths)]


def relative_name(path: str | os.PathLike, root: str | os.PathLike | None) -> str:
    """The name a dataset keys ``path`` by: relative to ``root``, or the path as given when there is no root."""
    return os.fspath(path) if root is None else relative_names([path], root)[0]


def file_digest(path: str | os.PathLike) -> str | None:
    """The content digest of one file (``None`` when it cannot be read), through the cache of single files.

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile() as handle:
    ...     file_digest(handle.name) == digest_bytes(b"")
    True
    """
    return digest_files([os.fspath(path)])[0][0]


def path_digest(path: str | os.PathLike) -> str | None:
    """The content digest of a file, or of a folder (its files' names relative to it and digests, links
    followed); ``None`` when it cannot be read: what a local model folder or checkpoint is keyed by."""
    path = Path(path).expanduser()
    try:
        if not path.is_dir():
            return file_digest(path)
        files = sorted(str(item) for item in path.rglob("*") if item.is_file())
    except OSError:
        return None
    digests, _ = digest_files(files, path)
    listing = "".join(f"{name}\0{digest}\n" for name, digest in zip(relative_names(files, path), digests))
    return digest_bytes(listing.encode(errors="surrogateescape"))
