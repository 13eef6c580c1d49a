"""``robustsig er``: effective robustness of models from their accuracies (command line or a CSV table)."""

from __future__ import annotations

import csv
import math
import os
from typing import Any

import typer

from robustsig.cli._output import emit_json, format_table
from robustsig.errors import InputError

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


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


def _listing(columns: list[str]) -> str:
    return ", ".join(columns[:15]) + (f" ... ({len(columns)} columns)" if len(columns) > 15 else "")


def _model_name(row: dict[str, str], model_column: str, line: int) -> str:
    if row.get(model_column):
        return row[model_column]
    if row.get("name"):  # open_clip's results: name + pretrained tag, as in a model spec
        return row["name"] + (f"@{row['pretrained']}" if row.get("pretrained") else "")
    return f"row {line}"


def _read_accuracies(path: str, id_column: str | None, shift_columns: list[str] | None, model_column: str,
                     percent: bool) -> tuple[list[str], list[float], list[float], list[str]]:
    """Models, ACC(I), ACC(S) (mean of the shift columns) from a CSV; rows with a blank accuracy are skipped
    (returned last, by model name)."""
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


def er_command(
    table: str = typer.Argument(None, help="CSV of models: a model column, the ImageNet accuracy and either a mean "
                                           "shift accuracy column or the five shift-set columns."),
    acc_id: list[float] = typer.Option(None, "--id", help="ImageNet accuracy (fraction); repeat for several models."),
    acc_shift: list[float] = typer.Option(None, "--shift", help="Mean shift accuracy ACC(S) (fraction), one per --id."),
    fit: str = typer.Option(None, "--fit", help="Refit the baseline line on this CSV of baseline models (same "
                                                "column options)."),
    b1: float = typer.Option(None, help="Slope of the baseline line on logit axes (default: paper, 0.76)."),
    b0: float = typer.Option(None, help="Intercept of the baseline line (default: paper, -1.49)."),
    percent: bool = typer.Option(False, "--percent", help="TABLE holds percentages, not fractions."),
    fit_percent: bool = typer.Option(False, "--fit-percent", help="The --fit table holds percentages "
                                                                  "(imagenet-testbed's does)."),
    id_column: str = typer.Option(None, help="In-distribution accuracy column of both tables (default: imagenet, "
                                             "acc_id, val or 'ImageNet 1k')."),
    shift_columns: str = typer.Option(None, help="Comma-separated shift accuracy columns averaged into ACC(S), in "
                                                 "both tables (default: acc_shift or shift, else the five shift sets "
                                                 "under our, imagenet-testbed's or open_clip's names)."),
    model_column: str = typer.Option("model", help="Column naming the models."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document instead of a table."),
) -> None:
    """Effective robustness: ER = ACC(S) - sigmoid(b1 * logit(ACC(I)) + b0).

    Examples: `robustsig er --id 0.76 --shift 0.55`;
    `robustsig er models.csv --fit robustness_top1s.csv --fit-percent`.
    """
    from robustsig.metrics.robustness import PAPER_B0, PAPER_B1, baseline_prediction, effective_robustness, fit_baseline

    columns = _split(shift_columns)
    skipped: list[str] = []
    if table is not None:
        if acc_id or acc_shift:
            raise InputError("give either a CSV table or --id/--shift accuracies, not both")
        models, ids, shifts, skipped = _read_accuracies(table, id_column, columns, model_column, percent)
    else:
        ids, shifts = list(acc_id or []), list(acc_shift or [])
        if not ids or len(ids) != len(shifts):
            raise InputError("give a CSV table, or one --shift accuracy for every --id accuracy "
                             f"(got {len(ids)} --id and {len(shifts)} --shift)")
        models = [f"model {i + 1}" for i in range(len(ids))]

    baseline: dict[str, Any] = {"b1": PAPER_B1, "b0": PAPER_B0, "source": "paper"}
    if fit is not None:
        if b1 is not None or b0 is not None:
            raise InputError("--fit refits b1 and b0: do not also give --b1/--b0")
        fit_models, fit_ids, fit_shifts, fit_skipped = _read_accuracies(fit, id_column, columns, model_column,
                                                                        fit_percent)
        fb1, fb0, r = fit_baseline(fit_ids, fit_shifts)
        baseline = {"b1": fb1, "b0": fb0, "r": r, "source": fit, "models": len(fit_models),
                    "skipped": len(fit_skipped)}
    elif b1 is not None or b0 is not None:
        baseline = {"b1": PAPER_B1 if b1 is None else b1, "b0": PAPER_B0 if b0 is None else b0, "source": "options"}

    er = effective_robustness(ids, shifts, baseline["b1"], baseline["b0"])
    predicted = baseline_prediction(ids, baseline["b1"], baseline["b0"])
    rows = [{"model": m, "acc_id": a, "acc_shift": s, "baseline": float(p), "er": float(e)}
            for m, a, s, p, e in zip(models, ids, shifts, predicted, er)]
    if as_json:
        emit_json({"baseline": baseline, "models": rows, "skipped": skipped})
        return
    line = f"baseline: b1={baseline['b1']:.4f}, b0={baseline['b0']:.4f}"
    if fit is not None:
        line += f" (refit on {baseline['models']} models of {fit}, r={baseline['r']:.4f})"
    else:
        line += f" ({baseline['source']})"
    typer.echo(line)
    printed = [{"model": r["model"], "ACC(I) %": 100 * r["acc_id"], "ACC(S) %": 100 * r["acc_shift"],
                "line %": 100 * r["baseline"], "ER (points)": 100 * r["er"]} for r in rows]
    typer.echo(format_table(printed, floatfmt=".2f"))
    if skipped:
        typer.echo(f"skipped {len(skipped)} row(s) with a blank accuracy: {', '.join(skipped[:10])}"
                   + (" ..." if len(skipped) > 10 else ""), err=True)


def register(app: typer.Typer) -> None:
    app.command("er")(er_command)
