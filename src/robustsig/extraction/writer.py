"""Writing an activation store: claim the directory, check its key, write shards atomically, finish the manifest.

Rules for ``out_dir`` (so a researcher never silently gets stale activations):

- new or empty: a store is started there;
- holds a finished store with the same key: it is reused, nothing is recomputed;
- holds an unfinished store with the same key: the extraction resumes (complete shards are kept);
- holds a store with another key: :class:`~robustsig.errors.InputError` naming each differing field, unless
  ``overwrite=True``, which deletes the old store first (an unfinished store without any shard yet, e.g. one
  whose first batch failed, holds nothing and is replaced);
- holds other files: :class:`~robustsig.errors.InputError` (a store is never mixed into an unrelated folder). A
  store is replaced only when the folder holds nothing but robustsig's own files (manifest, head, shards, lock,
  temporary files): a file of someone else is never deleted, the replacement is refused naming it.

Temporary files left by a crash (robustsig's ``.tmp-*``) are deleted when a run starts. While a run writes, it holds an
exclusive lock on ``out_dir/.lock``, so two runs cannot write one store at once.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import safetensors.torch
import torch

from robustsig._atomic import TEMP_PREFIX, open_regular, write_bytes_atomic
from robustsig.errors import DataError, InputError
from robustsig.extraction.key import key_differences
from robustsig.extraction.store import (HEAD_FILE, LAYER_PREFIX, MANIFEST, ROW_KEYS, STORE_FORMAT, STORE_VERSION,
                                     read_json, safetensors_header, shard_index, shard_name,
                                     torch_dtype, write_json_atomic)

try:
    import fcntl
except ImportError:  # not POSIX: no inter-process lock
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


_OWN_FILES = (MANIFEST, HEAD_FILE, LOCK_FILE)
_HELD: set[str] = set()  # the lock files this process holds (a POSIX lock does not exclude its own process)
_HELD_GUARD = threading.Lock()


def _lock_holder(path: Path) -> tuple[int | None, str | None]:
    """The process id and machine name written in a lock file (``None, None`` when unreadable)."""
    try:
        pid, host = path.read_text().split(maxsplit=1)
        return int(pid), host.strip()
    except (OSError, ValueError):
        return None, None


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
        shard_size: samples per shard for a new store (a resumed store keeps the size it was started with).
        num_samples: dataset size, or ``None`` for a stream of unknown length.
    """

    def __init__(self, path: Path, key: Mapping[str, Any], digest: str, shard_size: int,
                 num_samples: int | None) -> None:
        self.path = path
        self.key = dict(key)
        self.digest = digest
        self.shard_size = shard_size
        self.num_samples = num_samples
        self._lock: Any = None

    # --- claiming the directory (rank 0 only) -----------------------------------------------------------
    def prepare(self, overwrite: bool, head: Mapping[str, torch.Tensor]) -> bool:
        """Lock the directory, remove crash leftovers, check the key and start or resume the store.

        Returns:
            ``True`` when a finished store with this key is already there (nothing to do).
        """
        self.path.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        for leftover in self.path.iterdir():  # no live process writes here while we hold the lock
            if _own_temporary(leftover.name):
                leftover.unlink(missing_ok=True)
        state = self._existing_store(overwrite)
        if state == "finished":
            return True
        if state == "none":
            others = [p.name for p in self.path.iterdir() if p.name != LOCK_FILE]
            if others:
                raise InputError(f"out_dir {self.path} is not empty and holds no activation store ({others[:3]}...); "
                                 "choose a new or empty folder")
            write_json_atomic(self.path / MANIFEST, {
                "format": STORE_FORMAT, "version": STORE_VERSION, "complete": False, "key": self.key,
                "key_digest": self.digest, "shard_size": self.shard_size, "num_samples": self.num_samples})
        if not (self.path / HEAD_FILE).is_file():  # written after the manifest: a crash in between resumes
            write_bytes_atomic(self.path / HEAD_FILE, safetensors.torch.save(
                {name: t.detach().float().cpu().contiguous() for name, t in head.items()}))
        return False

    def _existing_store(self, overwrite: bool) -> Literal["none", "unfinished", "finished"]:
        """What ``path`` holds of this key; a store of another key is refused, or cleared (then ``"none"``) when
        ``overwrite`` or when it has no shard yet."""
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            return "none"
        manifest = read_json(manifest_path)
        if manifest.get("format") != STORE_FORMAT:
            raise InputError(f"{manifest_path} is not a robustsig store manifest; choose another out_dir")
        if manifest.get("key") != self.key:
            if not overwrite and (manifest.get("complete") or self.existing_shards()):
                differences = "; ".join(key_differences(manifest.get("key"), self.key))
                raise InputError(f"{self.path} holds activations for another input ({differences}). Use a "
                                 "new out_dir, or overwrite=True (--overwrite) to replace them")
            self._clear()
            return "none"
        if manifest.get("complete"):
            return "finished"
        if manifest["shard_size"] != self.shard_size:
            warnings.warn(f"resuming {self.path} with its shard_size {manifest['shard_size']} "
                          f"(not {self.shard_size})", stacklevel=4)
            self.shard_size = int(manifest["shard_size"])
        return "unfinished"

    def _take_lock(self) -> None:
        """Lock ``.lock`` (and write this process's id and machine into it), or refuse naming the holder.

        The lock is a POSIX record lock (``lockf``): it belongs to this process alone, so processes it forks (the
        DataLoader workers) do not inherit it, and it ends with the process, however it ends. (An ``flock`` lock
        would be shared with the workers, which outlive a ``kill -9`` of the main process by seconds, and a rerun
        in that window would be refused.) Writers of one process are told apart by :data:`_HELD`."""
        if fcntl is None:
            return
        path = self.path / LOCK_FILE
        key = str(path.absolute())
        with _HELD_GUARD:
            if key in _HELD:
                raise InputError(f"this process is already writing the store in {self.path}; wait for it or use "
                                 "another out_dir")
            # never through a link planted at .lock (it would truncate the link's target), never a FIFO
            handle = os.fdopen(open_regular(path, os.O_RDWR | os.O_CREAT), "r+")  # noqa: SIM115 (release())
            try:
                fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                pid, host = _lock_holder(path)
                who = f"process {pid} on {host}" if pid is not None else "another process"
                raise InputError(f"{who} is writing the store in {self.path}; wait for it or use another "
                                 "out_dir") from None
            _HELD.add(key)
        holder = f"{os.getpid()} {socket.gethostname()}\n"
        handle.seek(0)
        if handle.read() != holder:  # a lock file is rewritten only for another holder
            handle.seek(0)
            handle.truncate()
            handle.write(holder)
            handle.flush()
        self._lock = handle

    def release(self) -> None:
        if self._lock is not None:
            with _HELD_GUARD:
                _HELD.discard(str((self.path / LOCK_FILE).absolute()))
                self._lock.close()
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
        """Other ranks: read the shard size rank 0 settled on (a resumed store keeps its own)."""
        self.shard_size = int(read_json(self.path / MANIFEST)["shard_size"])

    # --- shards -----------------------------------------------------------------------------------------
    def shard_info(self, index: int) -> dict[str, Any] | None:
        """The metadata of a complete shard of this key, or ``None`` (a shard of another key or an unreadable
        one is deleted: it will be recomputed)."""
        path = self.path / shard_name(index)
        if not path.is_file():
            return None
        try:
            metadata = safetensors_header(path)[0].get("__metadata__", {})
            if metadata.get("key_digest") == self.digest and int(metadata["index"]) == index:
                return metadata
        except (DataError, KeyError, ValueError):
            pass
        path.unlink(missing_ok=True)
        return None

    def existing_shards(self) -> list[int]:
        """Indices of the shard files present (not validated)."""
        indices = (shard_index(p.name) for p in self.path.iterdir())
        return sorted(i for i in indices if i is not None)

    def write_shard(self, index: int, start: int, stop: int, tensors: Mapping[str, torch.Tensor],
                    skipped: Sequence[Mapping[str, Any]], sample_keys: Sequence[str] | None) -> None:
        """Write shard ``index`` (positions ``[start, stop)``) atomically."""
        metadata = {"key_digest": self.digest, "index": str(index), "start": str(start), "stop": str(stop),
                    "rows": str(len(tensors["ids"]) if tensors else 0), "skipped": json.dumps(list(skipped))}
        if sample_keys is not None:
            metadata["sample_keys"] = json.dumps(list(sample_keys))
        write_bytes_atomic(self.path / shard_name(index), safetensors.torch.save(dict(tensors), metadata=metadata))

    # --- finishing (rank 0 only) ------------------------------------------------------------------------
    def finalize(self, record: Mapping[str, Any], unlisted: Sequence[Mapping[str, str]] = ()) -> None:
        """Check that the shards cover every sample, and write the finished manifest.

        Args:
            record: extra manifest fields (model, run settings, ``summary``: it gets the store's totals of
                ``images`` and ``skipped`` here).
            unlisted: files the dataset found but could not list (``{"path", "reason"}``, no ``id``): they head
                the skipped list, before the samples that could not be decoded.
        """
        indices = self.existing_shards()
        if indices != list(range(len(indices))):
            missing = sorted(set(range(max(indices, default=-1) + 1)) - set(indices))
            raise DataError(f"store {self.path} lacks shards {missing[:10]}; rerun the extraction to compute them")
        shards, tensors, position = [], {}, 0
        skipped: list[Any] = [dict(item) for item in unlisted]
        has_keys = False
        for index in indices:
            header, _ = safetensors_header(self.path / shard_name(index))
            metadata = header["__metadata__"]
            start, stop, rows = int(metadata["start"]), int(metadata["stop"]), int(metadata["rows"])
            if metadata.get("key_digest") != self.digest or start != position:
                raise DataError(f"shard {shard_name(index)} in {self.path} does not continue the store; delete it "
                                "and rerun the extraction")
            position = stop
            shards.append({"file": shard_name(index), "start": start, "stop": stop, "rows": rows})
            skipped += json.loads(metadata["skipped"])
            has_keys = has_keys or "sample_keys" in metadata
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                public = name.removeprefix(LAYER_PREFIX) if name not in ROW_KEYS else name
                entry = tensors.setdefault(public, {"dtype": dtype_name(torch_dtype(info["dtype"])),
                                                    "shape": [0, *info["shape"][1:]]})
                entry["shape"][0] += info["shape"][0]
        if position == 0:
            raise DataError(f"the dataset yielded no samples: nothing to store in {self.path}")
        if self.num_samples is not None and position != self.num_samples:
            raise DataError(f"store {self.path} covers {position} of {self.num_samples} samples; rerun to finish")
        head_header, _ = safetensors_header(self.path / HEAD_FILE)
        manifest = read_json(self.path / MANIFEST)
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
