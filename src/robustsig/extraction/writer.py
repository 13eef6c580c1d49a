"""Writing an activation store: claim the directory, check its key, write shards atomically, finish the manifest.

Rules for ``out_dir`` (so a researcher never silently gets stale activations):

- new or empty: a store is started there;
- holds a finished store with the same key: it is reused, nothing is recomputed;
- holds an unfinished store with the same key: the extraction resumes (complete shards are kept);
- holds a store whose key differs only in the dataset's files (images added, removed, changed, relabelled or
  moved; the same model and settings): the store is *updated*: shards whose positions hold the same files are
  kept, the others are written under new names (:func:`~robustsig.extraction.store.shard_name`), copying the
  stored rows of unchanged images and computing only the rest (:mod:`robustsig.extraction.update`). The old
  manifest and shards are left untouched until the new manifest replaces them in one rename, so a run killed at
  any point leaves the old store readable and valid (and the next run takes the update up where it stopped);
  then the shard files the new manifest does not name are deleted;
- holds a store with other settings: :class:`~robustsig.errors.InputError` naming each differing field (and the
  files that differ), unless ``overwrite=True``, which deletes the old store first (an unfinished store without
  any shard yet, e.g. one whose first batch failed, holds nothing and is replaced);
- holds other files: :class:`~robustsig.errors.InputError` (a store is never mixed into an unrelated folder). A
  store is replaced only when the folder holds nothing but robustsig's own files (manifest, head, shards, lock,
  temporary files): a file of someone else is never deleted, the replacement is refused naming it.

Temporary files left by a crash (robustsig's ``.tmp-*``) are deleted when a run starts. While a run writes, it holds an
exclusive lock on ``out_dir/.lock``, so two runs cannot write one store at once.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import safetensors.torch
import torch

from robustsig._atomic import TEMP_PREFIX, write_bytes_atomic
from robustsig._locks import FileLock
from robustsig.errors import DataError, InputError
from robustsig.data.listing import FileListing
from robustsig.extraction.key import key_differences, key_digest, key_settings
from robustsig.extraction.store import (HEAD_FILE, LAYER_PREFIX, MANIFEST, ROW_KEYS, STORE_FORMAT, STORE_VERSION,
                                     read_json, safetensors_header, shard_index, shard_name,
                                     torch_dtype, write_json_atomic)
from robustsig.extraction.update import Changes, listing_changes, stored_listing

LOCK_FILE = ".lock"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


_OWN_FILES = (MANIFEST, HEAD_FILE, LOCK_FILE)
def _own_temporary(name: str) -> bool:
    """Whether ``name`` is a temporary file robustsig writes in a store (of its manifest, head or a shard)."""
    rest = name.removeprefix(TEMP_PREFIX)
    return rest != name and rest.startswith((MANIFEST + ".", HEAD_FILE + ".", "shard-"))


def _own_file(name: str) -> bool:
    """Whether ``name`` is a file robustsig writes in a store."""
    return name in _OWN_FILES or shard_index(name) is not None or _own_temporary(name)


class StoreWriter:
    """Owns one store directory for the length of a run (see the module docstring for the rules).

    Args:
        path: the store directory.
        key: the extraction key; ``digest`` its digest.
        shard_size: samples per shard for a new store (a resumed or updated store keeps the size it was started
            with).
        num_samples: dataset size, or ``None`` for a stream of unknown length.
        listing: the dataset's files (map-style datasets that list them): recorded in each shard, so a later run
            on changed files can update the store.
    """

    def __init__(self, path: Path, key: Mapping[str, Any], digest: str, shard_size: int,
                 num_samples: int | None, listing: FileListing | None = None) -> None:
        self.path = path
        self.key = dict(key)
        self.digest = digest
        self.shard_size = shard_size
        self.num_samples = num_samples
        self.listing = listing
        self.settings = key_digest(key_settings(key)) if listing is not None else None
        self.mode: Literal["new", "resume", "update", "finished"] = "new"
        self.changes: Changes | None = None
        """In an update: how the dataset's files differ from the old store's (``None`` when it did not say)."""
        self._tags: dict[int, str] = {}
        self._lock: Any = None

    @property
    def num_shards(self) -> int | None:
        return None if self.num_samples is None else math.ceil(self.num_samples / self.shard_size)

    def tag(self, index: int) -> str:
        """What determines shard ``index``'s rows, as the 12 hex digits of its file name: the settings, the shard
        size and the ``[name, label, digest]`` of its positions; for a dataset without a listing, the key."""
        if index not in self._tags:
            digest = hashlib.blake2b(digest_size=16)
            if self.listing is not None:
                start = index * self.shard_size
                stop = min(start + self.shard_size, len(self.listing.names))
                digest.update(f"{self.settings}\t{self.shard_size}\t{index}\n".encode())
                digest.update(json.dumps(self.listing.entries(start, stop)).encode())
            else:
                digest.update(f"{self.digest}\t{self.shard_size}\t{index}\n".encode())
            self._tags[index] = digest.hexdigest()[:12]
        return self._tags[index]

    # --- claiming the directory (rank 0 only) -----------------------------------------------------------
    def prepare(self, overwrite: bool, head: Mapping[str, torch.Tensor]) -> bool:
        """Lock the directory, remove crash leftovers, check the key and start, resume or update the store.

        Returns:
            ``True`` when a finished store with this key is already there (nothing to do).
        """
        self.path.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        for leftover in self.path.iterdir():  # no live process writes here while we hold the lock
            if _own_temporary(leftover.name):
                leftover.unlink(missing_ok=True)
        self.mode = self._existing_store(overwrite)
        if self.mode == "finished":
            self._delete_unnamed_shards(read_json(self.path / MANIFEST))  # an update killed after its manifest
            return True
        if self.mode == "new":
            others = [p.name for p in self.path.iterdir() if p.name != LOCK_FILE]
            if others:
                raise InputError(f"out_dir {self.path} is not empty and holds no activation store ({others[:3]}...); "
                                 "choose a new or empty folder")
            self._write_unfinished_manifest()
        if not (self.path / HEAD_FILE).is_file():  # written after the manifest: a crash in between resumes
            write_bytes_atomic(self.path / HEAD_FILE, safetensors.torch.save(
                {name: t.detach().float().cpu().contiguous() for name, t in head.items()}))
        return False

    def _write_unfinished_manifest(self) -> None:
        write_json_atomic(self.path / MANIFEST, {
            "format": STORE_FORMAT, "version": STORE_VERSION, "complete": False, "key": self.key,
            "key_digest": self.digest, "shard_size": self.shard_size, "num_samples": self.num_samples})

    def _existing_store(self, overwrite: bool) -> Literal["new", "resume", "update", "finished"]:
        """What ``path`` holds for this key; a store of other settings is refused, or cleared (then ``"new"``)
        when ``overwrite`` or when it has no shard yet."""
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            return "new"
        manifest = read_json(manifest_path)
        if manifest.get("format") != STORE_FORMAT:
            raise InputError(f"{manifest_path} is not a robustsig store manifest; choose another out_dir")
        if manifest.get("key") == self.key:
            if manifest.get("complete"):
                return "finished"
            self._adopt(manifest, warn=True)
            return "resume"
        stored = manifest.get("key")
        if self.listing is not None and isinstance(stored, dict) and key_settings(stored) == key_settings(self.key):
            old = stored_listing(self.path, manifest)
            self.changes = listing_changes(old, self.listing.entries()) if old is not None else None
            self._adopt(manifest, warn=False)
            if not manifest.get("complete"):  # nothing valid to keep readable: record what is being built
                self._write_unfinished_manifest()
            return "update"
        if not overwrite and (manifest.get("complete") or self.existing_shards()):
            differences = "; ".join(key_differences(key_settings(stored) if isinstance(stored, dict) else stored,
                                                    key_settings(self.key)))
            files = self._file_changes(manifest)
            raise InputError(f"{self.path} holds activations for another input ({differences}{files}). Use a "
                             "new out_dir, or overwrite=True (--overwrite) to replace them")
        self._clear()
        return "new"

    def _file_changes(self, manifest: dict[str, Any]) -> str:
        """``; files: 2 added (...)`` when the stored store and the dataset both list their files and differ."""
        old = stored_listing(self.path, manifest) if self.listing is not None else None
        if old is None:
            return ""
        changes = listing_changes(old, self.listing.entries())
        return f"; files: {changes.describe()}" if changes.any else ""

    def _adopt(self, manifest: Mapping[str, Any], warn: bool) -> None:
        """Keep the shard size the store was started with."""
        size = int(manifest.get("shard_size") or self.shard_size)
        if size != self.shard_size:
            if warn:
                warnings.warn(f"resuming {self.path} with its shard_size {size} (not {self.shard_size})",
                              stacklevel=5)
            self.shard_size = size
            self._tags.clear()

    def _take_lock(self) -> None:
        """Lock ``.lock`` (:class:`robustsig._locks.FileLock`: this process's id and machine written in it, gone
        with the process however it ends), or refuse naming the holder."""
        self._lock = FileLock(self.path / LOCK_FILE)
        self._lock.acquire(f"writing the store in {self.path}", "use another out_dir")

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _clear(self) -> None:
        """Delete the old store; refused, with nothing deleted, when the folder holds anything robustsig did not
        write."""
        entries = list(self.path.iterdir())
        foreign = sorted(entry.name for entry in entries if entry.is_dir() or not _own_file(entry.name))
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise InputError(f"{self.path} holds a store to replace, but also files robustsig did not write "
                             f"({shown}); nothing was deleted. Move them out of the folder, or use another out_dir")
        for entry in entries:
            if entry.name != LOCK_FILE:
                entry.unlink(missing_ok=True)

    def adopt_shard_size(self) -> None:
        """Other ranks: read the shard size rank 0 settled on (a resumed or updated store keeps its own)."""
        size = int(read_json(self.path / MANIFEST)["shard_size"])
        if size != self.shard_size:
            self.shard_size = size
            self._tags.clear()

    # --- shards -----------------------------------------------------------------------------------------
    def shard_path(self, index: int) -> Path:
        return self.path / shard_name(index, self.tag(index))

    def shard_info(self, index: int) -> dict[str, Any] | None:
        """The metadata of shard ``index`` as this run wants it (its tag), or ``None`` when it is not there (an
        unreadable file under its name is deleted: it will be recomputed)."""
        path = self.shard_path(index)
        if not path.is_file():
            return None
        try:
            metadata = safetensors_header(path)[0].get("__metadata__", {})
            if metadata.get("tag") == self.tag(index) and int(metadata["index"]) == index:
                return metadata
        except (DataError, KeyError, ValueError):
            pass
        path.unlink(missing_ok=True)
        return None

    def existing_shards(self) -> list[int]:
        """Indices of the shard files present, of any tag (not validated)."""
        indices = (shard_index(p.name) for p in self.path.iterdir())
        return sorted(i for i in indices if i is not None)

    def write_shard(self, index: int, start: int, stop: int, tensors: Mapping[str, torch.Tensor],
                    skipped: Sequence[Mapping[str, Any]], sample_keys: Sequence[str] | None) -> None:
        """Write shard ``index`` (positions ``[start, stop)``) atomically, under its tagged name."""
        metadata = {"key_digest": self.digest, "tag": self.tag(index), "index": str(index), "start": str(start),
                    "stop": str(stop), "rows": str(len(tensors["ids"]) if tensors else 0),
                    "skipped": json.dumps(list(skipped))}
        if self.listing is not None:
            metadata["settings_digest"] = str(self.settings)
            metadata["samples"] = json.dumps(self.listing.entries(start, stop))
        if sample_keys is not None:
            metadata["sample_keys"] = json.dumps(list(sample_keys))
        write_bytes_atomic(self.shard_path(index), safetensors.torch.save(dict(tensors), metadata=metadata))

    # --- finishing (rank 0 only) ------------------------------------------------------------------------
    def finalize(self, record: Mapping[str, Any], unlisted: Sequence[Mapping[str, str]] = ()) -> None:
        """Check that this run's shards cover every sample, write the finished manifest (the one rename that
        replaces an updated store), then delete the shard files it does not name.

        Args:
            record: extra manifest fields (model, run settings, ``summary``: it gets the store's totals of
                ``images`` and ``skipped`` here).
            unlisted: files the dataset found but could not list (``{"path", "reason"}``, no ``id``): they head
                the skipped list, before the samples that could not be decoded.
        """
        shards, tensors, position = [], {}, 0
        skipped: list[Any] = [dict(item) for item in unlisted]
        has_keys = False
        index = 0
        while self.num_shards is None or index < self.num_shards:
            metadata = self.shard_info(index)
            if metadata is None:
                if self.num_shards is None:
                    break
                missing = [k for k in range(index, self.num_shards) if self.shard_info(k) is None]
                raise DataError(f"store {self.path} lacks shards {missing[:10]}; rerun the extraction to compute them")
            name = self.shard_path(index).name
            header, _ = safetensors_header(self.path / name)
            start, stop, rows = int(metadata["start"]), int(metadata["stop"]), int(metadata["rows"])
            if start != position:
                raise DataError(f"shard {name} in {self.path} does not continue the store; delete it and rerun "
                                "the extraction")
            position = stop
            shards.append({"file": name, "start": start, "stop": stop, "rows": rows})
            skipped += json.loads(metadata["skipped"])
            has_keys = has_keys or "sample_keys" in metadata
            for tensor_name, info in header.items():
                if tensor_name == "__metadata__":
                    continue
                public = tensor_name.removeprefix(LAYER_PREFIX) if tensor_name not in ROW_KEYS else tensor_name
                entry = tensors.setdefault(public, {"dtype": dtype_name(torch_dtype(info["dtype"])),
                                                    "shape": [0, *info["shape"][1:]]})
                entry["shape"][0] += info["shape"][0]
            index += 1
        if position == 0:
            raise DataError(f"the dataset yielded no samples: nothing to store in {self.path}")
        if self.num_samples is not None and position != self.num_samples:
            raise DataError(f"store {self.path} covers {position} of {self.num_samples} samples; rerun to finish")
        head_header, _ = safetensors_header(self.path / HEAD_FILE)
        manifest: dict[str, Any] = {"format": STORE_FORMAT, "version": STORE_VERSION, "key": self.key,
                                    "key_digest": self.digest, "shard_size": self.shard_size}
        manifest.update(record)
        manifest.setdefault("summary", {}).update(images=sum(s["rows"] for s in shards), skipped=len(skipped))
        manifest.update({
            "complete": True, "num_samples": position,
            "rows": sum(s["rows"] for s in shards), "shards": shards, "tensors": tensors,
            "head": {name: {"dtype": dtype_name(torch_dtype(info["dtype"])), "shape": info["shape"]}
                     for name, info in head_header.items() if name != "__metadata__"},
            "num_skipped": len(skipped), "skipped": skipped, "has_sample_keys": has_keys,
        })
        write_json_atomic(self.path / MANIFEST, manifest)
        self._delete_unnamed_shards(manifest)

    def _delete_unnamed_shards(self, manifest: Mapping[str, Any]) -> None:
        """Delete the shard files a finished manifest does not name: the replaced store's, and stray ones of
        interrupted updates."""
        kept = {shard["file"] for shard in manifest.get("shards", [])}
        for entry in self.path.iterdir():
            if shard_index(entry.name) is not None and entry.name not in kept:
                entry.unlink(missing_ok=True)
