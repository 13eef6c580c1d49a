"""``robustsig er``: effective robustness of models from their accuracies (command line or a CSV table)."""

from __future__ import annotations

from typing import Any

import typer

from robustsig.cli._output import emit_json, format_table
from robustsig.errors import InputError
from robustsig.study.baseline import read_accuracy_table


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


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
        models, ids, shifts, skipped = read_accuracy_table(table, id_column, columns, model_column, percent)
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
        fit_models, fit_ids, fit_shifts, fit_skipped = read_accuracy_table(fit, id_column, columns, model_column,
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
