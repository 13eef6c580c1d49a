"""Reading user arrays for the commands: ``.npy`` (memory-mapped) and ``.safetensors`` (sliced lazily), never
pickles. A file argument is ``PATH`` or ``PATH:KEY`` (``KEY`` picks a tensor inside a ``.safetensors`` file)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from robustsig.errors import InputError

SUFFIXES = (".npy", ".safetensors")


class SafetensorsArray:
    """One tensor of a ``.safetensors`` file, read row slice by row slice (``shape``, ``x[a:b]``, ``len``)."""

    def __init__(self, path: str, key: str) -> None:
        from safetensors import safe_open

        self.path, self.key = path, key
        self._file = safe_open(path, framework="pt")
        self._slice = self._file.get_slice(key)
        self.shape = tuple(self._slice.get_shape())

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> torch.Tensor:
        return self._slice[index]


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"PATH"`` or ``"PATH:KEY"`` -> ``(path, key)`` (a path that exists as given wins over a split)."""
    if os.path.exists(spec) or ":" not in spec:
        return spec, None
    path, key = spec.rsplit(":", 1)
    return path, key or None


def open_array(spec: str, role: str, default_keys: Sequence[str] = ()) -> Any:
    """Open the array named by ``spec`` for reading in row chunks.

    Args:
        spec: ``PATH`` or ``PATH:KEY``; ``.npy`` or ``.safetensors``.
        role: what the array is for, used in messages (``"activations"``).
        default_keys: keys tried, in order, in a ``.safetensors`` file with several tensors and no ``KEY``.

    Returns:
        A memory-mapped numpy array or a :class:`SafetensorsArray`.
    """
    path, key = split_spec(spec)
    if not os.path.isfile(path):
        raise InputError(f"{role} file {path!r} does not exist")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".npy":
        if key is not None:
            raise InputError(f"{role} file {path!r} is a .npy array: it has no key {key!r}")
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as error:
            raise InputError(f"{role} file {path!r} is not a numeric .npy array (pickled objects are never "
                             f"loaded): {error}") from error
        except OSError as error:
            raise InputError(f"{role} file {path!r} is not a readable .npy file: {error}") from error
    if suffix == ".safetensors":
        return _open_safetensors(path, key, role, default_keys)
    raise InputError(f"{role} file {path!r} must be .npy or .safetensors, got {suffix or 'no extension'!r}")


def _open_safetensors(path: str, key: str | None, role: str, default_keys: Sequence[str]) -> SafetensorsArray:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            keys = list(handle.keys())
    except Exception as error:  # safetensors raises its own error types for a corrupt header
        raise InputError(f"{role} file {path!r} is not a valid .safetensors file: {error}") from error
    if key is None:
        if len(keys) == 1:
            key = keys[0]
        else:
            key = next((k for k in default_keys if k in keys), None)
            if key is None:
                raise InputError(f"{role} file {path!r} holds {len(keys)} tensors ({', '.join(sorted(keys))}); pick "
                                 f"one as {path}:KEY")
    elif key not in keys:
        raise InputError(f"{role} file {path!r} has no tensor {key!r}; it holds {', '.join(sorted(keys))}")
    return SafetensorsArray(path, key)


def safetensors_keys(path: str) -> list[str]:
    """Tensor names in a ``.safetensors`` file (empty for other files)."""
    if not path.lower().endswith(".safetensors"):
        return []
    from safetensors import safe_open

    with safe_open(path, framework="pt") as handle:
        return list(handle.keys())


def read_all(array: Any) -> torch.Tensor:
    """The whole array as a tensor (for small inputs: labels, a head)."""
    data = array[:]
    return data if isinstance(data, torch.Tensor) else torch.from_numpy(np.array(data))


def describe(spec: str, array: Any) -> dict[str, Any]:
    """Where an input came from and its shape, for reports."""
    return {"file": spec, "shape": list(array.shape)}
