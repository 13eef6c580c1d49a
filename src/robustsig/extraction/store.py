"""The activation store on disk, and the memory-mapped reader :class:`ActivationStore`.

Layout of a store directory::

    manifest.json                   what the store holds, the key it was computed for and its shard files
                                    (written last, atomically)
    head.safetensors                the classifier's head: W (K, d) and b (K,) when the head has a bias
    shard-000000-TAG.safetensors    rows of dataset positions [0, S)       (S = shard_size)
    shard-000001-TAG.safetensors    rows of dataset positions [S, 2S) ...

A shard's ``TAG`` is a digest of what determines its rows (the settings and the ``[name, label, digest]`` of
each of its positions; for a stream, the key): an update that changes some files writes their shards under new
names beside the old ones, which the old manifest still names until the new one replaces it
(:mod:`robustsig.extraction.writer`).

Each shard holds, for the samples of its position range that decoded (corrupt images are skipped and listed in
the shard's metadata and the manifest): ``h`` (n, d), ``logits`` (n, K) or ``topk_values``/``topk_indices``
(n, k), ``labels`` (n, ...), ``ids`` (n,) the dataset positions, and ``layer.<name>`` (n, D) per layer tap.
Every file is written to a temporary name, fsync'ed and renamed, so a file under its final name is complete;
``manifest.json`` with ``"complete": true`` marks a finished store.

Shards are safetensors files (a JSON header, then raw little-endian tensors), read here by memory-mapping
the tensor bytes with ``numpy.memmap``: reading a key costs page-cache I/O, not a copy, as long as the rows
requested lie in one shard.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustsig._atomic import write_bytes_atomic
from robustsig.errors import DataError, InputError

MANIFEST = "manifest.json"
HEAD_FILE = "head.safetensors"
STORE_FORMAT = "robustsig.activation-store"
STORE_VERSION = 2
LAYER_PREFIX = "layer."
# the keys every store row has, besides the layers; top-k stores have topk_* instead of logits
ROW_KEYS = ("h", "logits", "topk_values", "topk_indices", "labels", "ids")
HEAD_KEYS = ("W", "b")

# safetensors dtype code -> (numpy dtype to memory-map the bytes as, torch dtype of the tensor)
_DTYPES: dict[str, tuple[Any, torch.dtype]] = {
    "F64": (np.float64, torch.float64), "F32": (np.float32, torch.float32), "F16": (np.float16, torch.float16),
    "BF16": (np.int16, torch.bfloat16), "I64": (np.int64, torch.int64), "I32": (np.int32, torch.int32),
    "I16": (np.int16, torch.int16), "I8": (np.int8, torch.int8), "U8": (np.uint8, torch.uint8),
    "BOOL": (np.bool_, torch.bool),
}


def shard_name(index: int, tag: str) -> str:
    """File name of shard ``index`` whose rows are determined by ``tag`` (see the module notes)."""
    return f"shard-{index:06d}-{tag}.safetensors"


def shard_index(name: str) -> int | None:
    """Inverse of :func:`shard_name` (also for the untagged names of version-1 stores); ``None`` for other
    file names.

    >>> shard_index("shard-000012-0a1b2c3d4e5f.safetensors"), shard_index("shard-000003.safetensors")
    (12, 3)
    """
    if name.startswith("shard-") and name.endswith(".safetensors"):
        digits, _, tag = name[len("shard-"):-len(".safetensors")].partition("-")
        if digits.isdigit() and (not tag or tag.isalnum()):
            return int(digits)
    return None


# --- atomic files -----------------------------------------------------------------------------------------
def write_json_atomic(path: Path, document: Mapping[str, Any]) -> None:
    write_bytes_atomic(path, (json.dumps(document, indent=1, sort_keys=True, default=str) + "\n").encode())


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {path}: {error}") from error


# --- safetensors files -----------------------------------------------------------------------------------
def safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and the byte offset where tensor data starts.

    Raises:
        DataError: the file is missing, truncated or not safetensors.
    """
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                raise ValueError("file shorter than the 8-byte header length")
            (length,) = struct.unpack("<Q", prefix)
            if length > 100_000_000:
                raise ValueError(f"header length {length} is implausible")
            raw = handle.read(length)
            if len(raw) != length:
                raise ValueError("truncated header")
            header = json.loads(raw)
            size = os.fstat(handle.fileno()).st_size
    except (OSError, ValueError) as error:
        raise DataError(f"{path} is not a readable safetensors file ({error}); delete it and rerun") from error
    data_start = 8 + length
    for name, info in header.items():
        if name != "__metadata__" and data_start + info["data_offsets"][1] > size:
            raise DataError(f"{path} is truncated (tensor {name!r} runs past the end of the file)")
    return header, data_start


def torch_dtype(code: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype code (``"F32"`` -> ``torch.float32``)."""
    return _DTYPES[code][1]


def memmap_tensor(path: Path, info: Mapping[str, Any], data_start: int) -> torch.Tensor:
    """Memory-map one tensor of a safetensors file (copy-on-write: writes never reach the file)."""
    np_dtype, torch_dtype = _DTYPES[info["dtype"]]
    shape = tuple(info["shape"])
    begin, end = info["data_offsets"]
    if begin == end:
        return torch.empty(shape, dtype=torch_dtype)
    array = np.memmap(path, dtype=np_dtype, mode="c", offset=data_start + begin, shape=shape)
    tensor = torch.from_numpy(array)
    return tensor.view(torch_dtype) if torch_dtype == torch.bfloat16 else tensor


class ActivationStore:
    """Read a finished activation store (written by :func:`robustsig.extract`), memory-mapped.

    Args:
        path: the store directory (it holds ``manifest.json``).

    Memory: opening reads only the manifest. :meth:`read` of rows inside one shard returns a tensor that views
    the memory-mapped file (no copy; pages load on access); rows spanning several shards are concatenated into
    one in-memory tensor of just that key and those rows. :meth:`batches` streams any number of rows holding
    at most one batch (plus the shard views the OS pages in) at a time.

    Raises:
        DataError: no store there, or the store is unfinished (rerun the extraction to complete it).

    Example:
        >>> store = ActivationStore("store/")                      # doctest: +SKIP
        >>> h = store.read("h")                                     # (N, d), memory-mapped  # doctest: +SKIP
        >>> for batch in store.batches(["h", "labels"], 4096):      # doctest: +SKIP
        ...     acc.update(batch["h"])
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise DataError(f"{self.path} holds no activation store (no {MANIFEST}); create one with "
                            "robustsig.extract(...) or `robustsig extract`")
        manifest = read_json(manifest_path)
        if manifest.get("format") != STORE_FORMAT:
            raise DataError(f"{manifest_path} is not a robustsig activation store manifest")
        if not manifest.get("complete"):
            written = len(list(self.path.glob("shard-*.safetensors")))
            raise DataError(f"the activation store in {self.path} is unfinished ({written} shard files so far); "
                            "rerun the same extraction to resume and finish it")
        self._manifest = manifest
        self.check: dict[str, Any] | None = None
        """What the :func:`robustsig.extract` call that returned this store found (reused, updated...: see
        :func:`robustsig.extraction.extractor.describe_check`); ``None`` for a store opened directly."""
        shards = manifest["shards"]
        self._shard_rows = [int(s["rows"]) for s in shards]
        self._shard_offsets = np.concatenate([[0], np.cumsum(self._shard_rows, dtype=np.int64)]).tolist()
        self._headers: dict[int, tuple[dict[str, Any], int]] = {}

    # --- what is stored ----------------------------------------------------------------------------------
    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest: key, shapes, dtypes, shards, skipped samples and the extraction summary."""
        return self._manifest

    @property
    def keys(self) -> list[str]:
        """Every name :meth:`read` accepts."""
        return list(self._manifest["tensors"]) + [k for k in HEAD_KEYS if k in self._manifest["head"]]

    @property
    def layers(self) -> list[str]:
        """Names of the stored layer taps."""
        return list(self._manifest["key"]["layers"])

    @property
    def num_rows(self) -> int:
        """Stored samples (dataset samples minus skipped ones)."""
        return self._shard_offsets[-1]

    def __len__(self) -> int:
        return self.num_rows

    @property
    def skipped(self) -> list[dict[str, Any]]:
        """What was skipped: the files the dataset found but could not list (``{"path", "reason"}``: an
        unreadable folder or file, a FIFO, a link loop), then the samples that could not be decoded
        (``{"id": position, "path"/"key": ..., "reason": ...}``; the reason where the dataset gives it). Paths that are not UTF-8 are kept as surrogate escapes
        (``os.fsencode`` gives the exact bytes back)."""
        return list(self._manifest["skipped"])

    @property
    def summary(self) -> dict[str, Any]:
        """The extraction summary: images, skipped, seconds, images/s, where the store is."""
        return dict(self._manifest["summary"])

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.path)!r}, rows={self.num_rows}, keys={self.keys})"

    # --- reading -----------------------------------------------------------------------------------------
    def _file_key(self, key: str) -> str:
        if key in self._manifest["tensors"]:
            return key if key in ROW_KEYS else LAYER_PREFIX + key
        if key == "logits" and "topk_values" in self._manifest["tensors"]:
            raise InputError(f"this store keeps only the top-{self._manifest['key']['logits_topk']} logits: "
                             "read 'topk_values' and 'topk_indices'")
        if not self._manifest["tensors"]:
            raise InputError(f"this store has no rows: all {self._manifest['num_samples']} samples were skipped "
                             "as undecodable (see .skipped)")
        raise InputError(f"unknown key {key!r}; this store holds {self.keys}")

    def _shard(self, index: int) -> tuple[Path, dict[str, Any], int]:
        path = self.path / self._manifest["shards"][index]["file"]
        if index not in self._headers:
            self._headers[index] = safetensors_header(path)
        header, start = self._headers[index]
        return path, header, start

    def _empty(self, key: str) -> torch.Tensor:
        info = self._manifest["tensors"][key]
        return torch.empty((0, *info["shape"][1:]), dtype=getattr(torch, info["dtype"]))

    def read(self, key: str, rows: slice | None = None) -> torch.Tensor:
        """The tensor ``key`` (``h``, ``logits``, ``labels``, ``ids``, ``topk_values``, ``topk_indices``, a
        layer name, or the head's ``W``/``b``), all rows or the contiguous ``rows`` slice (step 1).

        Returns:
            A memory-mapped view when the rows lie in one shard, else a concatenated in-memory tensor.
        """
        if key in HEAD_KEYS:
            return self._read_head(key)
        file_key = self._file_key(key)
        start, stop, step = (rows or slice(None)).indices(self.num_rows)
        if step != 1:
            raise InputError(f"rows must be a contiguous slice (step 1), got step {step}")
        parts = []
        for index, rows_in_shard in enumerate(self._shard_rows):
            lo, hi = self._shard_offsets[index], self._shard_offsets[index + 1]
            if rows_in_shard == 0 or hi <= start or lo >= stop:
                continue
            path, header, data_start = self._shard(index)
            tensor = memmap_tensor(path, header[file_key], data_start)
            parts.append(tensor[max(start, lo) - lo: min(stop, hi) - lo])
        if not parts:
            return self._empty(key)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _read_head(self, key: str) -> torch.Tensor:
        if key not in self._manifest["head"]:
            raise InputError(f"the classifier's head has no bias; this store holds {self.keys}")
        header, data_start = safetensors_header(self.path / HEAD_FILE)
        return memmap_tensor(self.path / HEAD_FILE, header[key], data_start)

    def batches(self, keys: Sequence[str] | None = None, batch_size: int = 4096
                ) -> Iterator[dict[str, torch.Tensor]]:
        """Stream rows in order as ``{key: (b, ...)}`` dicts of at most ``batch_size`` rows.

        Args:
            keys: row keys to read (default: every row key, layers included).
            batch_size: rows per batch.
        """
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        keys = list(self._manifest["tensors"]) if keys is None else list(keys)
        for key in keys:
            self._file_key(key)  # validate before streaming
        for start in range(0, self.num_rows, batch_size):
            rows = slice(start, min(start + batch_size, self.num_rows))
            yield {key: self.read(key, rows) for key in keys}

    def sample_keys(self) -> list[str] | None:
        """Per-row sample keys of a ``(key, image, label)`` stream (e.g. WebDataset ``__key__``), or ``None``
        when the dataset gave none (then ``read("ids")`` are the dataset positions)."""
        if not self._manifest.get("has_sample_keys"):
            return None
        keys: list[str] = []
        for index, rows in enumerate(self._shard_rows):
            if rows:
                keys.extend(json.loads(self._shard(index)[1]["__metadata__"]["sample_keys"]))
        return keys
