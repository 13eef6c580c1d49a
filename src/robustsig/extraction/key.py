"""What an activation store is keyed by, so a rerun reuses it and a changed input never reuses a stale one.

The key holds everything that determines the stored values, and no path:

- the model: its spec (``classifier.meta["spec"]``, a local checkpoint or model folder named by the digest of
  its bytes instead of its path: :func:`portable_spec`) and
  :meth:`~robustsig.models.classifier.Classifier.fingerprint` (a digest of every weight actually loaded);
- the dataset: its ``describe()``: kind, number of samples and classes, a digest of the file names (relative to
  the root) and labels, and a digest of every file's *bytes* (:class:`~robustsig.data.listing.FileListing`). The
  bytes are read only for files whose stat data changed since they were last hashed (:mod:`robustsig._contents`):
  a rerun on unchanged files costs one ``stat`` per image, a copy (``cp -a``, ``rsync -a``, a restore), a
  ``touch`` or a moved folder costs one read of each image and reuses the store, and a changed byte is always
  caught. ``python -m benchmarks keying`` measures both against decoding the images;
- the preprocessing applied to each decoded image, as its ``repr`` with memory addresses removed (torchvision
  and open_clip transforms print their parameters; give a custom callable a ``__repr__`` that does too);
- the layers read, their pooling (only when layers are read), the stored dtype, the autocast precision
  and the top-k setting of the logits.

Batch size, workers, device and shard size only change how the work is done and are not part of the key. Two
keys that differ only in the dataset's files (:data:`~robustsig.data.listing.PER_FILE_FIELDS`) have the same
*settings* (:func:`key_settings`): a store of one is updated into a store of the other by computing only the rows of
added or changed files (:mod:`robustsig.extraction.update`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from robustsig._contents import path_digest
from robustsig.data.listing import PER_FILE_FIELDS
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


def portable_spec(spec: str) -> str:
    """A model spec with any local checkpoint file or model folder replaced by ``content:DIGEST`` of its bytes
    (:func:`robustsig._contents.path_digest`): moving or renaming the weights keeps the key, changing them does
    not. Specs that name no local files (tags, hub names, test specs) are returned as they are.

    >>> portable_spec("openclip:ViT-B-32@openai")
    'openclip:ViT-B-32@openai'
    """
    from robustsig.models.spec import HUB_SCHEMAS, ModelSpec

    try:
        parsed = ModelSpec.parse(spec)
    except InputError:
        return spec
    if parsed.family == "hf" and os.path.isabs(parsed.name) and os.path.exists(parsed.name):
        return f"hf:content:{path_digest(parsed.name)}"
    if parsed.weights is None:
        return spec
    if parsed.weights.startswith("local-dir:"):
        return str(ModelSpec(parsed.family, parsed.name, f"local-dir:content:{path_digest(parsed.weights[10:])}"))
    if parsed.weights_kind == "path" and not parsed.weights.startswith(HUB_SCHEMAS):
        return str(ModelSpec(parsed.family, parsed.name, f"content:{path_digest(parsed.weights)}"))
    return spec


def extraction_key(*, spec: str, fingerprint: str, dataset: Mapping[str, Any], preprocess: str | None,
                   layers: Sequence[str], pooling: str, dtype: str, autocast: str | None,
                   logits_topk: int | None) -> dict[str, Any]:
    """The key of one extraction (see the module docstring), as plain JSON data."""
    return _plain({
        "model": {"spec": portable_spec(spec), "fingerprint": fingerprint},
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


_LEGACY_FILE_FIELDS = ("root", "stamps_digest")  # stores of version 1 keyed the folder's path and stamps


def key_settings(key: Mapping[str, Any]) -> dict[str, Any]:
    """The key without the fields that list the dataset's files: two stores of equal settings hold the same
    rows for the same image bytes."""
    settings = dict(key)
    dataset = settings.get("dataset")
    if isinstance(dataset, dict):
        settings["dataset"] = {name: value for name, value in dataset.items()
                               if name not in PER_FILE_FIELDS and name not in _LEGACY_FILE_FIELDS}
    return settings


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
