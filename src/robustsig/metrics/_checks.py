"""Input validation and conversion shared by the metrics: every public metric turns its arguments into
tensors here, so a bad shape, dtype or value fails at the edge with a message naming the argument.

Array-likes are torch tensors, numpy arrays (memory-mapped ones included), nested lists, or any object with
``shape`` and row slicing (a lazily read file): :func:`iter_rows` reads those in row chunks, so a metric never
loads more than one chunk of a large activation file at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from robustsig.errors import InputError

#: Rows per chunk when a metric streams over an array-like (bounded memory for stores bigger than RAM).
CHUNK_ROWS = 8192


def to_tensor(x: Any, name: str) -> torch.Tensor:
    """``x`` as a tensor (numpy arrays shared, not copied, unless read-only or with negative strides), or an
    :class:`InputError` naming ``name``."""
    if isinstance(x, torch.Tensor):
        return x
    try:
        array = np.asarray(x)
    except (TypeError, ValueError) as error:
        raise InputError(f"{name} must be an array of numbers, got {type(x).__name__}: {error}") from error
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise InputError(f"{name} must be an array of numbers, got an array of dtype {array.dtype}")
    if not array.flags.writeable or any(stride < 0 for stride in array.strides):
        # torch wants writable memory (read-only memory maps) and no negative strides (x[::-1]): copy this chunk
        array = array.copy()  # C order: positive strides
    return torch.from_numpy(array)


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 when any input is float64, else float32 (heavy math in float32, as the model runs)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def as_matrix(x: Any, name: str, *, dtype: torch.dtype | None = None, min_rows: int = 1,
              columns: int | None = None, finite: bool = True) -> torch.Tensor:
    """Validate a 2-D floating-point matrix.

    Args:
        x: array-like of shape ``(rows, columns)``.
        name: what the argument is, used in error messages (``"h (activations, samples x features)"``).
        dtype: convert to this dtype; default float64 if ``x`` is float64, else float32.
        min_rows: fewest rows accepted.
        columns: the required number of columns, when fixed by another argument.
        finite: reject NaN and infinite values.

    Returns:
        The tensor, on the device it came on.
    """
    t = to_tensor(x, name)
    if t.ndim != 2:
        raise InputError(f"{name} must be a 2-D array, got shape {tuple(t.shape)}")
    if t.shape[0] < min_rows:
        raise InputError(f"{name} needs at least {min_rows} rows, got {t.shape[0]}")
    if columns is not None and t.shape[1] != columns:
        raise InputError(f"{name} must have {columns} columns, got shape {tuple(t.shape)}")
    if t.is_complex():
        raise InputError(f"{name} must be real-valued, got dtype {t.dtype}")
    if dtype is not None:
        t = t.to(dtype)
    elif not t.is_floating_point() or t.dtype in (torch.float16, torch.bfloat16):
        t = t.to(torch.float32)
    if finite and not bool(torch.isfinite(t).all()):
        bad = (~torch.isfinite(t)).nonzero()[0].tolist()
        raise InputError(f"{name} contains NaN or infinite values (first at row {bad[0]}, column {bad[1]})")
    return t


def as_vector(x: Any, name: str, *, length: int | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Validate a 1-D array (``length`` entries when given) and convert it to ``dtype``."""
    t = to_tensor(x, name)
    if t.ndim != 1:
        raise InputError(f"{name} must be a 1-D array, got shape {tuple(t.shape)}")
    if length is not None and t.shape[0] != length:
        raise InputError(f"{name} must have {length} entries, got {t.shape[0]}")
    if dtype.is_floating_point:
        t = t.to(dtype)
        if not bool(torch.isfinite(t).all()):
            raise InputError(f"{name} contains NaN or infinite values")
    return t


def as_labels(x: Any, name: str, *, length: int) -> torch.Tensor:
    """Validate integer class labels (``length`` of them) as an int64 tensor."""
    t = to_tensor(x, name)
    if t.ndim != 1 or t.shape[0] != length:
        raise InputError(f"{name} must be a 1-D array of {length} integer labels (one per row of the "
                         f"activations), got shape {tuple(t.shape)}")
    if t.is_floating_point():
        if not bool((t == t.round()).all()):
            raise InputError(f"{name} must hold integer class labels, got non-integer values")
    elif t.dtype == torch.bool:
        raise InputError(f"{name} must hold integer class labels, got booleans")
    return t.to(torch.int64)


def num_rows(x: Any, name: str) -> int:
    """Number of rows of an array-like without reading it."""
    shape = getattr(x, "shape", None)
    if shape is None:
        x = to_tensor(x, name)
        shape = x.shape
    if len(shape) != 2:
        raise InputError(f"{name} must be a 2-D array, got shape {tuple(shape)}")
    return int(shape[0])


def iter_rows(x: Any, chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[int, Any]]:
    """Yield ``(start, x[start:start + chunk_rows])`` over the rows of an array-like, reading one chunk at a time
    (a memory-mapped array or a lazily read file is never loaded whole)."""
    if not hasattr(x, "shape") or not hasattr(x, "__getitem__"):
        x = to_tensor(x, "array")
    n = int(x.shape[0])
    for start in range(0, n, chunk_rows):
        yield start, x[start:start + chunk_rows]
