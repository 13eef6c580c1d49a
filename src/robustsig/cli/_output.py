"""Shared output helpers for the commands: ``--json`` prints one JSON document on stdout, otherwise a table."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import typer


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy / torch
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def emit_json(document: Any) -> None:
    """Print ``document`` as JSON (numpy/torch values converted, NaN/inf as null)."""
    typer.echo(json.dumps(_jsonable(document), indent=2))


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, floatfmt: str = ".4f") -> str:
    """A plain-text table (monospace columns) of ``rows``; floats formatted with ``floatfmt``."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return format(value, floatfmt)
        return "" if value is None else str(value)

    body = [[cell(row.get(col)) for col in columns] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in body)) for i, col in enumerate(columns)]
    lines = ["  ".join(col.ljust(w) for col, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(r, widths)) for r in body]
    return "\n".join(lines)


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
