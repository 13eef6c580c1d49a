"""Shared output helpers for the commands: ``--json`` prints one JSON document on stdout, otherwise a table."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
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


def printable(text: str) -> str:
    r"""``text`` safe to print anywhere: the bytes of a non-UTF-8 file name (kept by Python as surrogate escapes)
    shown as ``\xe9``.

    >>> printable("caf" + chr(0xDCE9) + ".jpg")
    'caf\\xe9.jpg'
    """
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


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


def run_long_command(work: Callable[[bool], Any], *, json_output: bool, show: Callable[[Any], None],
                     kept: str) -> None:
    """Run a long resumable job the way every such command does: ``work(progress)`` returns a result with
    ``to_dict()`` and ``ok``; with ``--json`` it runs quietly and the result is printed as JSON, else ``show``
    prints it. Ctrl-C exits with 130 saying what is ``kept``; a result that is not ``ok`` exits with 1."""
    from robustsig._progress import quiet

    try:
        if json_output:
            with quiet():
                result = work(False)
            emit_json(result.to_dict())
        else:
            result = work(True)
            show(result)
    except KeyboardInterrupt:
        typer.echo(f"interrupted: {kept} kept; rerun the same command to resume", err=True)
        raise typer.Exit(130) from None
    if not result.ok:
        raise typer.Exit(1)
