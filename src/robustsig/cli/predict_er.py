"""``robustsig predict-er``: do the robustness signatures of a study's models predict their ER, leaving each model
out, and how do they compare with the label-free baselines DoC and ATC?"""

from __future__ import annotations

from pathlib import Path

import typer

from robustsig.cli._output import emit_json, format_table


def _interval(low: float | None, high: float | None) -> str:
    return "" if low is None or high is None else f"[{low:+.2f}, {high:+.2f}]"


def predict_er_command(
        results_dir: Path = typer.Argument(..., metavar="RESULTS_DIR", help="the results/ folder of a study run"),
        combination: str = typer.Option(None, "--combination", help="comma-separated signatures the ridge "
                                        "combination uses (default: every signature known for every model)"),
        resamples: int = typer.Option(2000, "--resamples", min=1, help="bootstrap resamples of the models"),
        seed: int = typer.Option(0, "--seed", help="seeds the bootstrap"),
        write: bool = typer.Option(False, "--write", help="also write signatures.csv, er_predictions.csv, "
                                   "er_predictors.csv and er_tracking.csv into RESULTS_DIR"),
        json_output: bool = typer.Option(False, "--json", help="print one JSON document")) -> None:
    """Leave-one-model-out prediction of ER from each signature (a monotone fit), a ridge combination, the mean of
    the other models (the reference) and DoC/ATC (when the study computed them): Spearman rho, Kendall tau and MAE
    with bootstrap intervals over models. Reads the tables of RESULTS_DIR; nothing is recomputed from images.

    Example: `robustsig predict-er robustsig-demo/results`.
    """
    from robustsig.errors import DataError
    from robustsig.study.analyses.predict_er import PredictErOptions, predict_er_tables
    from robustsig.study.results import Results

    if not results_dir.is_dir():
        raise DataError(f"results folder {str(results_dir)!r} does not exist; expected the results/ folder that "
                        "`robustsig study run` writes")
    chosen = [name.strip() for name in combination.split(",") if name.strip()] if combination else None
    options = PredictErOptions(combination=chosen, resamples=resamples, seed=seed)
    result = predict_er_tables(Results(results_dir), options, write=write)
    if json_output:
        emit_json(result.to_dict())
        return
    rows = [{"predictor": row.predictor, "kind": row.kind, "models": row.models,
             "rho": row.spearman, "rho 95%": _interval(row.spearman_low, row.spearman_high),
             "tau": row.kendall, "tau 95%": _interval(row.kendall_low, row.kendall_high),
             "MAE (ER points)": 100 * row.mae, "MAE 95%": f"[{100 * row.mae_low:.2f}, {100 * row.mae_high:.2f}]"}
            for row in result.evaluation.predictors]
    typer.echo(format_table(rows, floatfmt=".2f"))
    for row in result.tracking:
        typer.echo(f"Wise-FT {row.pair}: {row.signature} vs ER across {row.points} alphas: rho "
                   f"{'n/a' if row.spearman is None else f'{row.spearman:+.2f}'}, tau "
                   f"{'n/a' if row.kendall is None else f'{row.kendall:+.2f}'}")
    if result.evaluation.note:
        typer.echo(f"WARNING: {result.evaluation.note}")


def register(app: typer.Typer) -> None:
    app.command("predict-er")(predict_er_command)
