"""A small column table for metric results (pruning curves, ER per fraction): named 1-D columns of equal length
plus a ``meta`` dict, convertible to rows of dicts (for JSON and printing) and to CSV."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from robustsig.errors import InputError


class MetricTable:
    """Named columns of equal length.

    Args:
        columns: column name -> values (a sequence, numpy array or 1-D tensor); order is kept.
        meta: what the table was computed from (order, rank, number of samples...).

    Example:
        >>> t = MetricTable({"fraction": [0.0, 0.5], "accuracy": [0.9, 0.7]}, meta={"order": "singular"})
        >>> t["accuracy"].tolist(), len(t)
        ([0.9, 0.7], 2)
        >>> t.rows()[1]
        {'fraction': 0.5, 'accuracy': 0.7}
        >>> print(t.to_csv(), end="")
        fraction,accuracy
        0.0,0.9
        0.5,0.7
    """

    def __init__(self, columns: Mapping[str, Sequence[Any] | np.ndarray],
                 meta: Mapping[str, Any] | None = None) -> None:
        self._columns: dict[str, np.ndarray] = {}
        for name, values in columns.items():
            if hasattr(values, "detach"):
                values = values.detach().cpu().numpy()
            array = np.asarray(values)
            if array.ndim != 1:
                raise InputError(f"column {name!r} must be 1-D, got shape {array.shape}")
            self._columns[str(name)] = array
        lengths = {len(a) for a in self._columns.values()}
        if len(lengths) > 1:
            raise InputError(f"columns must have equal lengths, got {sorted(lengths)}")
        self.meta: dict[str, Any] = dict(meta or {})

    @property
    def names(self) -> list[str]:
        """Column names, in order."""
        return list(self._columns)

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self._columns[name]
        except KeyError:
            raise KeyError(f"no column {name!r}; columns are {self.names}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._columns

    def __len__(self) -> int:
        return len(next(iter(self._columns.values()))) if self._columns else 0

    def rows(self) -> list[dict[str, Any]]:
        """The table as a list of ``{column: python value}`` dicts, one per row."""
        return [{name: values[i].item() for name, values in self._columns.items()} for i in range(len(self))]

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        """The table as CSV text (floats at full precision); also written to ``path`` when given."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.names)
        for row in self.rows():
            writer.writerow([repr(v) if isinstance(v, float) else v for v in row.values()])
        text = buffer.getvalue()
        if path is not None:
            with open(path, "w", encoding="utf-8", newline="") as handle:
                handle.write(text)
        return text

    def __repr__(self) -> str:
        return f"MetricTable({len(self)} rows: {', '.join(self.names)}; meta={self.meta})"
