"""The files of a map-style dataset as a store keys them: per position, the file's name relative to the dataset's
root, its label and the digest of its bytes (:mod:`robustsig._contents`).

The dataset's description (:meth:`FileListing.describe`, what :meth:`ImageDataset.describe
<robustsig.data.base.ImageDataset.describe>` returns) digests the whole listing; an activation store also keeps the
listing of every shard, so a rerun on a changed folder tells which files were added, removed or changed and
computes only their rows (:mod:`robustsig.extraction.update`). Where the folder lies is in neither: a dataset moved,
renamed or copied elsewhere keeps its description.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from robustsig._contents import HashReport, digest_files, relative_name, relative_names

PER_FILE_FIELDS = ("num_samples", "num_unlisted", "files_digest", "contents_digest")
"""The fields of a description that list the files; the others (kind, classes) say what the files are read as."""


@dataclass(frozen=True)
class FileListing:
    """Names (relative to the root), labels and content digests of a dataset's samples, and the files it found
    but could not list (``unlisted``: ``(name, reason)``).

    Attributes:
        kind, num_classes: what the dataset is.
        names, labels, digests: per sample, in dataset order (a digest is ``None`` for a file that cannot be read).
        unlisted: files found but not listed as samples, with the reason.
        report: what hashing the files took (files read again, stamps changed without a changed byte...).
        settings: the dataset's settings that decide which images decode (a non-default ``max_pixels``): part of
            the description, so a store of one setting is not reused for another.
    """

    kind: str
    num_classes: int
    names: list[str]
    labels: list[int]
    digests: list[str | None]
    unlisted: list[tuple[str, str]]
    report: HashReport
    settings: dict[str, Any] = field(default_factory=dict)

    def entries(self, start: int = 0, stop: int | None = None) -> list[list[Any]]:
        """``[name, label, digest]`` of the samples at positions ``[start, stop)``: what a shard records."""
        stop = len(self.names) if stop is None else stop
        return [[self.names[i], self.labels[i], self.digests[i]] for i in range(start, stop)]

    def describe(self) -> dict[str, Any]:
        """Kind, number of samples and classes, ``files_digest`` (names and labels) and ``contents_digest``
        (names, labels and the bytes of every file; and the files left unlisted with the reasons)."""
        lines = [os.fsencode(name) + f"\t{label}".encode() for name, label in zip(self.names, self.labels)]
        files = hashlib.blake2b(b"".join(line + b"\n" for line in lines), digest_size=16)
        contents = hashlib.blake2b(b"".join(line + f"\t{digest}\n".encode()
                                            for line, digest in zip(lines, self.digests)), digest_size=16)
        for name, reason in self.unlisted:
            contents.update(b"unlisted\t" + os.fsencode(name) + f"\t{reason}\n".encode(errors="surrogateescape"))
        return {"kind": self.kind, "num_samples": len(self.names), "num_classes": self.num_classes,
                "num_unlisted": len(self.unlisted), "files_digest": files.hexdigest(),
                "contents_digest": contents.hexdigest(), **self.settings}


def list_files(samples: Sequence[tuple[str, int]], root: str | None, unlisted: Sequence[dict[str, str]], *,
               kind: str, num_classes: int, settings: dict[str, Any] | None = None) -> FileListing:
    """The :class:`FileListing` of ``(path, label)`` samples under ``root`` (one ``stat`` per file; a file is
    read only when its stamp is not in the stat cache)."""
    paths = [path for path, _ in samples]
    names = relative_names(paths, root) if root is not None else list(paths)
    digests, report = digest_files(paths, root, names if root is not None else None, progress_label="hash images")
    return FileListing(kind=kind, num_classes=num_classes, names=names, labels=[label for _, label in samples],
                       digests=digests, report=report,
                       unlisted=[(relative_name(item["path"], root), item["reason"]) for item in unlisted],
                       settings=dict(settings or {}))
