"""What an activation store is keyed by, so a rerun reuses it and a changed input never reuses a stale one.

The key holds everything that determines the stored values:

- the model: its spec (``classifier.meta["spec"]``) and :meth:`~robustsig.models.classifier.Classifier.fingerprint`
  (a digest of every weight actually loaded);
- the dataset: its ``describe()`` (kind, root, number of samples, a digest of the file list and labels, and a
  digest of every file's stamp: size, mtime, ctime and inode, see :mod:`robustsig._stamps`). So an image
  rewritten in place (even with its size kept and its mtime put back) or replaced by another file never reuses a
  stale store, at the cost of one ``stat`` per image (about a second for ImageNet val's 50,000 files on a warm
  file system; ``python -m benchmarks keying`` measures it against extraction);
- the preprocessing applied to each decoded image, as its ``repr`` with memory addresses removed (torchvision
  and open_clip transforms print their parameters; give a custom callable a ``__repr__`` that does too);
- the layers read, their pooling (only when layers are read), the stored dtype, the autocast precision
  and the top-k setting of the logits.

Batch size, workers, device and shard size only change how the work is done and are not part of the key.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from robustsig.errors import InputError

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def describe_transform(transform: Any) -> str | None:
    """A stable text for a preprocessing callable: its ``repr`` without memory addresses."""
    if transform is None:
        return None
    return _ADDRESS.sub("", repr(transform))


def describe_dataset(dataset: Any) -> dict[str, Any]:
    """The dataset's ``describe()`` as plain JSON data.

    Raises:
        InputError: the dataset has no ``describe()``, so a store of it could not be told from another's.
    """
    describe = getattr(dataset, "describe", None)
    if not callable(describe):
        raise InputError(f"{type(dataset).__name__} has no describe() method; extract keys its store by the "
                         "dataset's description (use robustsig.open_dataset / ImageDataset, or add a describe() "
                         "returning a dict that identifies the data, e.g. kind, root and a digest of the files)")
    return _plain(describe())


def _plain(value: Any) -> Any:
    """JSON round trip: tuples become lists, so a key compares equal to the one read back from a manifest."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def extraction_key(*, spec: str, fingerprint: str, dataset: Mapping[str, Any], preprocess: str | None,
                   layers: Sequence[str], pooling: str, dtype: str, autocast: str | None,
                   logits_topk: int | None) -> dict[str, Any]:
    """The key of one extraction (see the module docstring), as plain JSON data."""
    return _plain({
        "model": {"spec": spec, "fingerprint": fingerprint},
        "dataset": dict(dataset),
        "preprocess": preprocess,
        "layers": list(layers),
        "pooling": pooling if layers else None,
        "dtype": dtype,
        "autocast": autocast,
        "logits_topk": logits_topk,
    })


def key_digest(key: Mapping[str, Any]) -> str:
    """A short digest of a key (recorded in every shard, so a stray shard of another key is never merged)."""
    return hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=12).hexdigest()


def key_differences(stored: Any, current: Any, prefix: str = "") -> list[str]:
    """Dotted names of the fields where two keys differ, with both values (for error messages)."""
    if isinstance(stored, dict) and isinstance(current, dict):
        out: list[str] = []
        for name in sorted(set(stored) | set(current)):
            out += key_differences(stored.get(name), current.get(name), f"{prefix}{name}.")
        return out
    if stored == current:
        return []
    return [f"{prefix.rstrip('.')}: stored {_short(stored)}, now {_short(current)}"]


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
