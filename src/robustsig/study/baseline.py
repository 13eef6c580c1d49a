"""The effective-robustness baseline line of a study, and the accuracy tables it is refit from.

``baseline: {b1, b0}`` fixes the line; ``baseline: {fit_csv: models.csv}`` refits it with
:func:`robustsig.fit_baseline` from a CSV of baseline models (the same columns ``robustsig er`` reads:
``acc_id, acc_shift`` fractions, or imagenet-testbed's / open_clip's column names).

Example:
    >>> from robustsig.study.baseline import BaselineLine
    >>> BaselineLine(0.76, -1.49, "paper").b1
    0.76
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustsig.errors import InputError
from robustsig.study.sections import Baseline

# Column names recognised without options: ours, imagenet-testbed's robustness_top1s.csv, open_clip's results.
ID_COLUMNS = ("imagenet", "acc_id", "val", "ImageNet 1k")
SHIFT_COLUMNS = ("acc_shift", "shift")
SHIFT_SET_COLUMNS = {
    "imagenet-v2": ("imagenet-v2", "imagenetv2-matched-frequency-format-val", "ImageNet v2"),
    "imagenet-r": ("imagenet-r", "ImageNet-R"),
    "imagenet-sketch": ("imagenet-sketch", "ImageNet Sketch"),
    "objectnet": ("objectnet", "objectnet-1.0-beta", "ObjectNet"),
    "imagenet-a": ("imagenet-a", "ImageNet-A"),
}


def _listing(columns: list[str]) -> str:
    return ", ".join(columns[:15]) + (f" ... ({len(columns)} columns)" if len(columns) > 15 else "")


def _model_name(row: dict[str, str], model_column: str, line: int) -> str:
    if row.get(model_column):
        return row[model_column]
    if row.get("name"):  # open_clip's results: name + pretrained tag, as in a model spec
        return row["name"] + (f"@{row['pretrained']}" if row.get("pretrained") else "")
    return f"row {line}"


def read_accuracy_table(path: str, id_column: str | None, shift_columns: list[str] | None, model_column: str,
                     percent: bool) -> tuple[list[str], list[float], list[float], list[str]]:
    """Models, ACC(I), ACC(S) (mean of the shift columns) from a CSV of accuracies.

    Args:
        path: the CSV file.
        id_column: the in-distribution accuracy column (default: the first of :data:`ID_COLUMNS` present).
        shift_columns: the columns averaged into ACC(S) (default: a mean column of :data:`SHIFT_COLUMNS`, else the
            five shift sets under any of the names of :data:`SHIFT_SET_COLUMNS`).
        model_column: the column naming the models.
        percent: the file holds percentages.

    Returns:
        ``(models, acc_id, acc_shift, skipped)``: fractions; rows with a blank accuracy are skipped and their model
        names returned last.

    Raises:
        InputError: a missing file or column, a cell that is not an accuracy.
    """
    if not os.path.isfile(path):
        raise InputError(f"accuracy table {path!r} does not exist")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        rows = list(reader)
    if not columns:
        raise InputError(f"{path!r} is empty: expected a CSV with a header row")
    id_column = id_column or next((c for c in ID_COLUMNS if c in columns), None)
    if id_column is None or id_column not in columns:
        raise InputError(f"{path!r} has no in-distribution accuracy column (looked for "
                         f"{id_column or ', '.join(ID_COLUMNS)}); its columns are {_listing(columns)}; name it "
                         "with --id-column")
    if shift_columns is None:
        single = next((c for c in SHIFT_COLUMNS if c in columns), None)
        found = {name: next((c for c in aliases if c in columns), None) for name, aliases in SHIFT_SET_COLUMNS.items()}
        if single:
            shift_columns = [single]
        elif all(found.values()):
            shift_columns = list(found.values())
        else:
            lacking = ", ".join(name for name, column in found.items() if column is None)
            raise InputError(f"{path!r} has no mean shift accuracy column ({' or '.join(SHIFT_COLUMNS)}) and lacks the "
                             f"shift set(s) {lacking}; its columns are {_listing(columns)}; name them with "
                             "--shift-columns")
    missing = [c for c in shift_columns if c not in columns]
    if missing:
        raise InputError(f"{path!r} lacks the column(s) {', '.join(missing)} given in --shift-columns; its columns "
                         f"are {_listing(columns)}")
    scale = 100.0 if percent else 1.0
    models, acc_id, acc_shift, skipped = [], [], [], []
    for line, row in enumerate(rows, start=2):
        name = _model_name(row, model_column, line)
        cells = [row.get(c) for c in (id_column, *shift_columns)]
        if any(cell is None or not cell.strip() for cell in cells):
            skipped.append(name)
            continue
        values = []
        for column, cell in zip((id_column, *shift_columns), cells):
            try:
                value = float(cell) / scale
            except ValueError:
                raise InputError(f"{path!r} line {line}, column {column!r}: {cell!r} is not a number") from None
            if not 0 <= value <= 1 or math.isnan(value):
                hint = " (the file seems to hold percentages: pass --percent)" if not percent and value > 1 else ""
                raise InputError(f"{path!r} line {line} ({name}), column {column!r}: {cell} is not an accuracy in "
                                 f"[0, 1]{hint}")
            values.append(value)
        models.append(name)
        acc_id.append(values[0])
        acc_shift.append(sum(values[1:]) / len(shift_columns))
    if not models:
        raise InputError(f"{path!r} has no row with every accuracy filled in ({id_column}, {', '.join(shift_columns)})")
    return models, acc_id, acc_shift, skipped



@dataclass(frozen=True)
class BaselineLine:
    """The line ``logit(ACC(S)) = b1 logit(ACC(I)) + b0`` a study measures ER from.

    Attributes:
        b1, b0: slope and intercept on logit axes.
        source: ``"paper"``, ``"config"`` or the refit CSV's path.
        r: the correlation of the refit (None for a fixed line).
        digest: a digest of the refit CSV's bytes (what the line depends on), "" for a fixed line.
    """

    b1: float
    b0: float
    source: str
    r: float | None = None
    digest: str = ""

    def provenance(self) -> dict[str, Any]:
        return {"b1": self.b1, "b0": self.b0, "source": self.source, "fit_digest": self.digest}


def study_baseline(baseline: Baseline) -> BaselineLine:
    """The line of a study's ``baseline`` section: the configured ``b1, b0``, or the refit of ``fit_csv``.

    Raises:
        InputError: the CSV cannot be read or fitted (the message names the file).
    """
    if baseline.fit_csv is None:
        source = "config" if {"b1", "b0"} & baseline.model_fields_set else "paper"
        return BaselineLine(baseline.b1, baseline.b0, source)
    from robustsig.metrics.robustness import fit_baseline

    path = Path(baseline.fit_csv)
    models, acc_id, acc_shift, _ = read_accuracy_table(str(path), None, None, "model", False)
    try:
        b1, b0, r = fit_baseline(acc_id, acc_shift)
    except InputError as error:
        raise InputError(f"baseline.fit_csv {str(path)!r}: {error}") from None
    digest = hashlib.blake2b(path.read_bytes(), digest_size=12).hexdigest()
    return BaselineLine(b1, b0, str(path), r, digest)
