"""The predict_er section of the report: each signature against ER, the predictors' table, and the Wise-FT
tracking."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure

from robustsig.errors import InputError
from robustsig.report.figures import grid, in_order
from robustsig.report.tables import ReportTable, decimal
from robustsig.study.analyses.predict_er.tables import SIGNATURES, ErPredictorRow, ErTrackingRow, SignatureRow
from robustsig.study.analyses.wiseft import WiseFtRow
from robustsig.study.pool import KIND_COLORS
from robustsig.study.results import ModelRow

if TYPE_CHECKING:
    from robustsig.report.page import Page


def predict_er_section(page: Page, models: Sequence[ModelRow]) -> str | None:
    """The section of the report (None without signatures.csv)."""
    signatures, predictors = page.read(SignatureRow), page.read(ErPredictorRow)
    if not signatures:
        return None
    notes = {row.note for row in predictors if row.note}
    provenance = page.parameters("er_predictors")
    notes |= {provenance["note"]} if provenance.get("note") and not predictors else set()
    text = "".join(page.note(note) for note in sorted(notes))
    if any(row.er is not None for row in signatures):
        text += page.figure(lambda: signature_scatter_figure(models, signatures, SIGNATURES),
                            "signatures_vs_er", "Each signature (computed on in-distribution data only) against "
                            "ER, one point per model (color: kind).", ["signatures"])
    if predictors:
        text += page.table(predictors_table(predictors, provenance.get("groups")))
    tracking, wiseft = page.read(ErTrackingRow), page.read(WiseFtRow)
    if tracking:
        text += page.figure(lambda: tracking_figure(wiseft), "er_tracking",
                            "Wise-FT: ER and the signatures against alpha, each rescaled over its sweep.",
                            ["wiseft", "er_tracking"])
        text += page.table(tracking_table(tracking))
    return text


def signature_scatter_figure(models: Sequence[ModelRow], signatures: Sequence[Any],
                             columns: Mapping[str, str]) -> Figure:
    """Each signature (a panel per column of ``columns`` with values) against ER, one point per model (color:
    kind), for the rows of signatures.csv."""
    rows = [row for row in signatures if row.er is not None]
    panels = [(name, title) for name, title in columns.items() if any(getattr(row, name) is not None for row in rows)]
    if not panels:
        raise InputError("signature_scatter_figure: no model has both an ER and a signature")
    kinds = {model.model: model.kind for model in models}
    figure, axes = grid(len(panels), panel=(3.2, 2.6))
    figure.suptitle("Signatures (in-distribution only) against effective robustness")
    for ax, (name, title) in zip(axes, panels):
        for row in rows:
            value = getattr(row, name)
            if value is not None:
                kind = kinds.get(row.model, "?")
                ax.scatter([value], [100 * row.er], color=KIND_COLORS.get(kind, "#7f7f7f"), s=30, edgecolor="black",
                           linewidth=0.4, zorder=3)
                ax.annotate(row.model, (value, 100 * row.er), fontsize=5, xytext=(2, 2), textcoords="offset points")
        ax.set_xlabel(textwrap.fill(title, 36), fontsize=7)
        ax.set_ylabel("ER (%)")
        ax.grid(True, linewidth=0.3)
    return figure


def tracking_figure(wiseft: Sequence[WiseFtRow]) -> Figure:
    """Along each Wise-FT sweep, ER and each measured signature against alpha, each rescaled to [0, 1] over the
    sweep (so that tracking shows as curves that move together)."""
    pairs = in_order([row.pair for row in wiseft])
    if not pairs:
        raise InputError("tracking_figure needs at least one row of wiseft.csv")
    figure, axes = grid(len(pairs), panel=(4.2, 3.0), columns=3)
    for ax, pair in zip(axes, pairs):
        rows = sorted((row for row in wiseft if row.pair == pair), key=lambda row: row.alpha)
        for column, style in (("er", "-"), ("kurtosis", "--"), ("unique_concepts", ":")):
            points = [(row.alpha, getattr(row, column)) for row in rows if getattr(row, column) is not None]
            if len(points) < 2:
                continue
            values = [value for _, value in points]
            low, span = min(values), (max(values) - min(values)) or 1.0
            ax.plot([a for a, _ in points], [(value - low) / span for value in values], linestyle=style, marker=".",
                    label=column.replace("_", " "))
        ax.set_title(pair, fontsize=9)
        ax.set_xlabel("alpha")
        ax.set_ylabel("rescaled to [0, 1] over the sweep")
        ax.grid(True, linewidth=0.3)
        ax.legend(fontsize=6)
    return figure


def _interval_text(low: float | None, high: float | None, scale: float = 1.0, fmt: str = "+.2f") -> str | None:
    return None if low is None or high is None else f"[{scale * low:{fmt}}, {scale * high:{fmt}}]"


def predictors_table(rows: Sequence[Any], groups: Sequence[Sequence[str]] | None = None) -> ReportTable:
    """Leave-one-model-out ER prediction: each signature, the combination, the reference and DoC/ATC; leave one
    group out when ``groups`` (lists of models that share weights) were used."""
    held_out = "leaving each model out"
    grouped = ""
    if groups:
        held_out = "leaving each group of models that share weights out"
        grouped = (" Groups (models that share weights, predicted only by fits on the other groups; the bootstrap "
                   "draws whole groups): " + "; ".join(", ".join(group) for group in groups)
                   + "; every other model is a group of its own.")
    body = tuple((row.predictor, row.kind, str(row.models), decimal(2)(row.spearman),
                  _interval_text(row.spearman_low, row.spearman_high), decimal(2)(row.kendall),
                  _interval_text(row.kendall_low, row.kendall_high), f"{100 * row.mae:.2f}",
                  _interval_text(row.mae_low, row.mae_high, 100, ".2f")) for row in rows)
    return ReportTable("er_predictors", f"Signatures as ER predictors, {held_out}", ("Predictor", "Kind"),
                       (("", ("Models", "Spearman", "95% interval", "Kendall", "95% interval", "MAE (ER points)",
                              "95% interval")),), body,
                       "A signature: rho and tau of the signature itself with ER (every increasing map ranks the "
                       "models alike), MAE of the monotone fit on the other models; the combination: ridge on the "
                       "other models, its held-out predictions ranked; mean of others: the reference a fit must "
                       "beat on MAE (its rho is negative by construction, -1 when no two models share weights); "
                       "doc, atc-*: label-free predicted ER from the unlabelled shift images, no fit. Intervals: "
                       "percentile bootstrap over models." + grouped,
                       ("er_predictors", "er_predictions", "signatures", "label_free"))


def tracking_table(rows: Sequence[Any]) -> ReportTable:
    """Rank correlation of each signature with ER along each Wise-FT sweep."""
    body = tuple((row.pair, row.signature, str(row.points), decimal(2)(row.spearman), decimal(2)(row.kendall))
                 for row in rows)
    return ReportTable("er_tracking", "Do the signatures track ER along Wise-FT sweeps?", ("Pair", "Signature"),
                       (("", ("Alphas", "Spearman", "Kendall")),), body,
                       "Rank correlation across alpha of the signature and ER of the interpolated models.",
                       ("er_tracking",))
