"""Updating a store when a dataset's files change: what changed, and which stored rows can be kept.

Every shard of a store made from a :class:`~robustsig.data.listing.FileListing` records the ``[name, label,
digest]`` of each dataset position it covers. A rerun whose key differs from the store's only in the dataset's
files (the same *settings*: :func:`~robustsig.extraction.key.key_settings`) compares the two listings:

- :func:`listing_changes` says what changed, file by file: added, removed, bytes changed, relabelled, or moved
  (the same bytes under another name);
- :class:`Donors` finds, for each image of the new listing, a stored row computed from the same bytes with the
  same settings, in any shard file of the folder: that row is copied (with its new position and label) instead
  of being computed again. A row depends only on the image's bytes and the settings (every forward pass runs a
  full batch, padded, so a row does not depend on its batch: :mod:`robustsig.extraction.extractor`), so the
  updated store equals a fresh extraction of the new folder.

The old store stays valid until the update's manifest replaces it (see :mod:`robustsig.extraction.writer`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustsig.errors import DataError
from robustsig.extraction.store import safetensors_header, shard_index

EXAMPLES = 5


@dataclass
class Changes:
    """How a dataset's files differ from those a store was made from.

    Attributes:
        counts: ``added``, ``removed``, ``changed`` (bytes), ``relabelled``, ``moved`` (same bytes, another
            name), ``unchanged``.
        examples: per kind, the first few ``(name, detail)``.
    """

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("added", "removed", "changed", "relabelled", "moved", "unchanged"), 0))
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, text: str) -> None:
        self.counts[kind] += 1
        shown = self.examples.setdefault(kind, [])
        if len(shown) < EXAMPLES:
            shown.append(text)

    @property
    def any(self) -> bool:
        return any(count for kind, count in self.counts.items() if kind != "unchanged")

    def describe(self) -> str:
        """One line: ``2 file(s) added (a.png, b.png); 1 file(s) with changed bytes (c.png)``."""
        return describe_changes(self.counts, self.examples)


def describe_changes(counts: dict[str, int], examples: dict[str, list[str]]) -> str:
    """The line of :meth:`Changes.describe` from its counts and examples (as ``store.check`` holds them).

    >>> describe_changes({"added": 3, "removed": 0}, {"added": ["a.png", "b.png"]})
    '3 file(s) added (a.png, b.png and 1 more)'
    """
    words = {"added": "added", "removed": "removed", "changed": "with changed bytes",
             "relabelled": "relabelled", "moved": "moved or renamed (same bytes)"}
    parts = []
    for kind, word in words.items():
        count = counts.get(kind, 0)
        if count:
            shown = examples.get(kind, [])
            more = f" and {count - len(shown)} more" if count > len(shown) else ""
            parts.append(f"{count} file(s) {word} ({', '.join(shown)}{more})")
    return "; ".join(parts) if parts else "no file changed"


def _entry(item: Any) -> tuple[str, int, str | None]:
    name, label, digest = item
    return str(name), int(label), None if digest is None else str(digest)


def listing_changes(old: Sequence[Sequence[Any]], new: Sequence[Sequence[Any]]) -> Changes:
    """What changed from the ``[name, label, digest]`` entries ``old`` (a store's) to ``new`` (the dataset's).

    >>> listing_changes([["a", 0, "1"], ["b", 0, "2"]], [["a", 0, "9"], ["c", 0, "2"], ["d", 1, "3"]]).counts
    {'added': 1, 'removed': 0, 'changed': 1, 'relabelled': 0, 'moved': 1, 'unchanged': 0}
    """
    changes = Changes()
    before = {name: (label, digest) for name, label, digest in map(_entry, old)}
    after = {name: (label, digest) for name, label, digest in map(_entry, new)}
    gone: dict[str, list[str]] = {}  # digest -> the names no longer listed that had it
    for name, (_, digest) in before.items():
        if name not in after and digest is not None:
            gone.setdefault(digest, []).append(name)
    moved: set[str] = set()
    for name, (label, digest) in after.items():
        if name in before:
            old_label, old_digest = before[name]
            if old_digest != digest:
                changes.add("changed", name)
            elif old_label != label:
                changes.add("relabelled", f"{name} ({old_label} -> {label})")
            else:
                changes.counts["unchanged"] += 1
        elif gone.get(digest):
            source = gone[digest].pop(0)
            moved.add(source)
            changes.add("moved", f"{source} -> {name}")
        else:
            changes.add("added", name)
    for name in before:
        if name not in after and name not in moved:
            changes.add("removed", name)
    return changes


@dataclass(frozen=True)
class ShardRecord:
    """What a shard file says about itself: its file, settings digest, positions, listing and skipped ids."""

    path: Path
    settings: str | None
    start: int
    stop: int
    entries: list[list[Any]] | None
    skipped: set[int]

    @classmethod
    def read(cls, path: Path) -> ShardRecord | None:
        """The record of a shard file; ``None`` for one that cannot be read (a crash leftover, another format)."""
        try:
            metadata = safetensors_header(path)[0].get("__metadata__", {})
            entries = json.loads(metadata["samples"]) if "samples" in metadata else None
            skipped = {int(item["id"]) for item in json.loads(metadata["skipped"]) if "id" in item}
            return cls(path, metadata.get("settings_digest"), int(metadata["start"]), int(metadata["stop"]),
                       entries, skipped)
        except (DataError, KeyError, ValueError, TypeError):
            return None


def shard_records(folder: Path, files: Sequence[str] | None = None) -> list[ShardRecord]:
    """The readable shard files of ``folder`` (only ``files`` when given), in name order."""
    names = sorted(files) if files is not None else sorted(p.name for p in folder.iterdir()
                                                           if shard_index(p.name) is not None)
    records = (ShardRecord.read(folder / name) for name in names)
    return [record for record in records if record is not None]


def stored_listing(folder: Path, manifest: dict[str, Any]) -> list[list[Any]] | None:
    """The ``[name, label, digest]`` entries a finished store was made from (``None``: a store without them,
    made from a stream or by robustsig before content keys)."""
    if not manifest.get("complete"):
        return None
    entries: list[list[Any]] = []
    for record in shard_records(folder, [shard["file"] for shard in manifest.get("shards", [])]):
        if record.entries is None:
            return None
        entries += record.entries
    return entries


class Donors:
    """Stored rows by the digest of the image they were computed from: ``digest -> (shard file, row)``, over the
    shard files of ``folder`` made with the settings digest ``settings``."""

    def __init__(self, folder: Path, settings: str) -> None:
        self.rows: dict[str, tuple[Path, int]] = {}
        for record in shard_records(folder):
            if record.settings != settings or record.entries is None:
                continue
            row = 0
            for position, entry in zip(range(record.start, record.stop), record.entries):
                if position in record.skipped:
                    continue
                digest = entry[2]
                if digest is not None:
                    self.rows.setdefault(str(digest), (record.path, row))
                row += 1

    def find(self, digest: str | None) -> tuple[Path, int] | None:
        """The stored row of an image with these bytes, or ``None``."""
        return None if digest is None else self.rows.get(digest)
