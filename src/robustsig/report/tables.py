"""The paper's tables from result rows, as CSV, Markdown and LaTeX.

Pool tables are laid out as in the paper: one row per backbone x pretraining, one column group per model kind
(zero-shot, finetuned, supervised), the same metrics in every group. Accuracies and ER are printed in percent.

Example:
    >>> from robustsig.study.results import ModelRow, KurtosisRow
    >>> models = [ModelRow("a", "openclip:RN50@openai", "RN50", "openai", "zero-shot"),
    ...           ModelRow("b", "openclip:RN50@/ft.pt", "RN50", "openai", "finetuned")]
    >>> table = kurtosis_table(models, [KurtosisRow("a", "val", 12.25, 10, 4), KurtosisRow("b", "val", 3.5, 10, 4)],
    ...                        dataset="val")
    >>> print(to_markdown(table))
    | Backbone | Pretraining | Zero-shot Kurtosis | Finetuned Kurtosis |
    |---|---|---:|---:|
    | RN50 | openai | 12.2 | 3.5 |
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustsig._atomic import write_text_atomic
from robustsig._cells import CONTROL, csv_line, escape_cell
from robustsig.report.pool import KIND_TITLES, cells, kinds_present, layout_rows
from robustsig.study.results import (AccuracyRow, ConceptRow, ConceptTopRow, KurtosisRow, ModelRow, PrivilegedRow,
                                     RobustnessRow, WiseFtRow)

MISSING_TEXT = "–"  # shown for an empty cell in Markdown and HTML ("--" in LaTeX, "" in CSV)


@dataclass(frozen=True)
class ReportTable:
    """A table laid out for printing.

    Attributes:
        name: file stem (``accuracy`` -> ``accuracy.csv``, ``.md``, ``.tex``).
        title: one line saying what it shows.
        index: the row-label columns (``("Backbone", "Pretraining")``).
        groups: column groups ``(group title, value column labels)``; a group title ``""`` means no group header.
        rows: formatted cells, index cells first; None is an empty cell.
        caption: what the numbers mean (units, dataset, threshold).
        sources: the results tables the numbers come from (their provenance says what they were computed on).
    """

    name: str
    title: str
    index: tuple[str, ...]
    groups: tuple[tuple[str, tuple[str, ...]], ...]
    rows: tuple[tuple[str | None, ...], ...]
    caption: str = ""
    sources: tuple[str, ...] = ()

    def header(self) -> list[str]:
        """Flat column labels: the index columns, then ``"Group label"`` per value column."""
        return list(self.index) + [f"{group} {label}".strip() for group, labels in self.groups for label in labels]

    def display_rows(self) -> list[list[str | None]]:
        """Rows with a repeated first index cell blanked (the paper prints a backbone once per block)."""
        shown, previous = [], None
        for row in self.rows:
            cells_ = list(row)
            if len(self.index) > 1 and row[0] == previous:
                cells_[0] = ""
            previous = row[0]
            shown.append(cells_)
        return shown


# --------------------------------------------------------------------------- number formats

def percent(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.1f}"


def signed_percent(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:+.1f}"


def decimal(digits: int) -> Callable[[float | None], str | None]:
    return lambda value: None if value is None else f"{value:.{digits}f}"


def integer(value: int | None) -> str | None:
    return None if value is None else str(value)


# --------------------------------------------------------------------------- layouts

def pool_table(name: str, title: str, models: Sequence[ModelRow], values: Mapping[str, Sequence[str | None]],
               labels: Sequence[str], *, caption: str = "", sources: Sequence[str] = ()) -> ReportTable:
    """A table in the paper's layout: rows backbone x pretraining, a column group per model kind.

    Args:
        models: the pool (its kinds give the column groups, its backbones and tags the rows).
        values: model name -> formatted cells, one per label; models absent here get empty cells.
        labels: the value columns of each kind group.

    Returns:
        The table; rows whose cells are all empty are left out.
    """
    grid = cells(models)
    kinds = kinds_present(models)
    rows = []
    for backbone, tag in layout_rows(models):
        row: list[str | None] = [backbone, tag]
        for kind in kinds:
            model = grid.get((backbone, tag, kind))
            row += list(values.get(model.model, [None] * len(labels)) if model else [None] * len(labels))
        if any(cell is not None for cell in row[2:]):
            rows.append(tuple(row))
    groups = tuple((KIND_TITLES.get(kind, kind), tuple(labels)) for kind in kinds)
    return ReportTable(name, title, ("Backbone", "Pretraining"), groups, tuple(rows), caption, tuple(sources))


def accuracy_table(models: Sequence[ModelRow], robustness: Sequence[RobustnessRow], *,
                   shift_note: str = "") -> ReportTable:
    """Tables 1-2: in-distribution accuracy and effective robustness of every model; ``shift_note`` (what ACC(S)
    averages over, see :func:`shift_sets_note`) is added to the caption."""
    values = {row.model: (percent(row.acc_id), signed_percent(row.er)) for row in robustness}
    line = f"b1 = {robustness[0].b1:.3g}, b0 = {robustness[0].b0:.3g}" if robustness else ""
    return pool_table("accuracy", "Accuracy and effective robustness", models, values, ("ACC (%)", "ER (%)"),
                      caption="ACC: top-1 accuracy on the in-distribution set; ER: mean shift accuracy minus the "
                              f"baseline line's prediction ({line}), in percent." + (f" {shift_note}" if shift_note
                                                                                     else ""),
                      sources=("robustness",))


def shift_sets_note(parameters: Mapping[str, object]) -> str:
    """What ACC(S) averaged over (from the provenance of ``robustness.csv``): the sets and their kinds, whether
    they are the paper's five, and the classes any set was scored without (``allow_missing_classes``)."""
    sets = parameters.get("shift_sets")
    if not isinstance(sets, Mapping) or not sets:
        return ""
    listed = ", ".join(f"{name} ({kind})" for name, kind in sets.items())
    text = f"ACC(S) is the mean over {len(sets)} shift set(s): {listed}"
    text += (", the paper's five kinds." if parameters.get("paper_shift_sets") else
             "; these are not the paper's five shift sets (ImageNet-V2, -R, -Sketch, ObjectNet, -A), so ER is not "
             "comparable with the paper's numbers.")
    missing = parameters.get("missing_classes")
    if isinstance(missing, Mapping) and missing:
        text += " Scored without some of their class folders (allow_missing_classes): " + "; ".join(
            f"{name}, {len(classes)} missing ({', '.join(map(str, list(classes)[:10]))}"
            f"{', ...' if len(classes) > 10 else ''})" for name, classes in missing.items()) + "."
    return text


def dataset_accuracy_table(accuracy: Sequence[AccuracyRow], datasets: Sequence[str]) -> ReportTable:
    """Accuracy of every model on every dataset (one row per model)."""
    by_model: dict[str, dict[str, float]] = {}
    for row in accuracy:
        by_model.setdefault(row.model, {})[row.dataset] = row.accuracy
    rows = tuple((model, *(percent(scores.get(name)) for name in datasets)) for model, scores in by_model.items())
    return ReportTable("accuracy_by_dataset", "Accuracy per dataset", ("Model",), (("", tuple(datasets)),), rows,
                       "Top-1 accuracy (%) with each dataset's class subset or mapping applied.", ("accuracy",))


def kurtosis_table(models: Sequence[ModelRow], kurtosis: Sequence[KurtosisRow], dataset: str) -> ReportTable:
    """Activation kurtosis (eq. 2) of every model on one dataset."""
    values = {row.model: (decimal(1)(row.kurtosis),) for row in kurtosis if row.dataset == dataset}
    return pool_table("kurtosis", "Activation kurtosis", models, values, ("Kurtosis",),
                      caption=f"Mean kurtosis of the head's input activations on {dataset} (Gaussian = 3).",
                      sources=("kurtosis",))


def privileged_table(models: Sequence[ModelRow], privileged: Sequence[PrivilegedRow]) -> ReportTable:
    """Privileged directions: how many, and how far the top one stands out."""
    values = {row.model: (integer(row.num_privileged), decimal(1)(row.top_ratio), decimal(2)(row.spearman))
              for row in privileged}
    return pool_table("privileged", "Privileged directions", models, values,
                      ("Privileged", "Top ratio", "Spearman"),
                      caption="Privileged: directions whose importance exceeds the threshold times the mean; "
                              "top ratio: the largest importance over the mean; Spearman: rank correlation of "
                              "singular values and importances.", sources=("privileged",))


def concepts_table(models: Sequence[ModelRow], concepts: Sequence[ConceptRow], basis: str) -> ReportTable:
    """Tables 3 and 6 style: unique concepts and polysemanticity (the paper's, and the active-only variant) in one
    basis; the caption names the threshold and the AP orientation."""
    rows = [row for row in concepts if row.basis == basis]
    values = {row.model: (integer(row.unique_concepts), decimal(2)(row.polysemanticity),
                          decimal(2)(row.polysemanticity_active)) for row in rows}
    threshold = f" (AP >= {rows[0].threshold:g})" if rows else ""
    orientations = ", ".join(dict.fromkeys(row.orientation for row in rows)) or "not recorded"
    return pool_table(f"concepts_{basis}", f"Concepts, {basis} basis", models, values,
                      ("Unique concepts", "Polysemanticity", "Polysemanticity (active)"),
                      caption=f"Unique concepts: Broden concepts encoded{threshold} by at least one direction of "
                              f"the {basis} basis (eq. 5); polysemanticity: the paper's, mean concepts per "
                              "direction over all directions probed (Table 6); polysemanticity (active): a variant, "
                              "the mean over only the directions that encode a concept. AP orientation: "
                              f"{orientations} (both: the better side of each direction; positive: h . v_i as "
                              "the SVD's sign convention gives it).",
                      sources=("concepts",))


def concept_top_table(top: Sequence[ConceptTopRow]) -> ReportTable:
    """The top concepts of each model's most privileged direction, with their AP."""
    grouped: dict[tuple[str, str, int], list[ConceptTopRow]] = {}
    for row in top:
        grouped.setdefault((row.model, row.basis, row.direction), []).append(row)
    width = max((len(rows) for rows in grouped.values()), default=0)
    rows = []
    for (model, basis, direction), entries in grouped.items():
        ranked = [f"{row.concept} ({row.ap:.2f})" for row in sorted(entries, key=lambda row: row.rank)]
        rows.append((model, basis, str(direction), *ranked, *[None] * (width - len(ranked))))
    return ReportTable("concept_top", "Top concepts of the most privileged direction", ("Model", "Basis", "Direction"),
                       (("", tuple(f"Top-{i + 1}" for i in range(width))),), tuple(rows),
                       "Concept (AP) ranked by average precision.", ("concept_top",))


def wiseft_table(wiseft: Sequence[WiseFtRow]) -> ReportTable:
    """Wise-FT sweeps: every metric at every alpha."""
    rows = tuple((row.pair, f"{row.alpha:g}", percent(row.acc_id), percent(row.acc_shift), signed_percent(row.er),
                  decimal(1)(row.kurtosis), integer(row.unique_concepts)) for row in wiseft)
    return ReportTable("wiseft", "Wise-FT sweeps", ("Pair", "alpha"),
                       (("", ("ACC(I) (%)", "ACC(S) (%)", "ER (%)", "Kurtosis", "Unique concepts")),), rows,
                       "Weights (1 - alpha) x zero-shot + alpha x finetuned.", ("wiseft",))


# --------------------------------------------------------------------------- renderers

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"\textless{}", ">": r"\textgreater{}"}
_LATEX_PATTERN = re.compile("|".join(re.escape(char) for char in _LATEX_SPECIAL))
_MARKDOWN_PATTERN = re.compile(r"([\\|*`<>\[\]])")


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (``50% of a_b`` -> ``50\\% of a\\_b``)."""
    return _LATEX_PATTERN.sub(lambda match: _LATEX_SPECIAL[match.group(0)], text)


def _control_escape(character: str) -> str:
    """A line break or control character as visible text (``\\n``, ``\\x07``, ``\\u2028``)."""
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    code = ord(character)
    return named.get(character) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def markdown_escape(text: str) -> str:
    """``text`` safe inside a Markdown table cell (pipes, backslashes, emphasis, code and HTML characters; a line
    break or control character, which would end the row, shown as its escape: ``a\\nb``)."""
    shown = CONTROL.sub(lambda match: _control_escape(match.group(0)), text)
    return _MARKDOWN_PATTERN.sub(r"\\\1", shown)


def to_csv(table: ReportTable) -> str:
    """The table as CSV: flat header, every cell (index cells repeated), empty cells empty; a text cell a
    spreadsheet would run as a formula is written with a leading apostrophe (:mod:`robustsig._cells`)."""
    lines = [csv_line([escape_cell(label) for label in table.header()])]
    lines += [csv_line(["" if cell is None else escape_cell(cell) for cell in row]) for row in table.rows]
    return "".join(lines)


def to_markdown(table: ReportTable) -> str:
    """The table as a GitHub-flavoured Markdown table (flat header)."""
    lines = ["| " + " | ".join(markdown_escape(label) for label in table.header()) + " |",
             "|" + "---|" * len(table.index) + "---:|" * (len(table.header()) - len(table.index))]
    for row in table.display_rows():
        lines.append("| " + " | ".join(MISSING_TEXT if cell is None else markdown_escape(cell) for cell in row)
                     + " |")
    return "\n".join(lines)


def to_latex(table: ReportTable) -> str:
    """The table as a LaTeX ``table`` with a ``booktabs`` tabular, group headers over their columns."""
    width = len(table.index)
    count = sum(len(labels) for _, labels in table.groups)
    lines = [r"\begin{table}[t]", r"\centering",
             r"\caption{" + latex_escape(table.title + (f". {table.caption}" if table.caption else "")) + "}",
             r"\label{tab:" + table.name + "}",
             r"\begin{tabular}{" + "l" * width + "r" * count + "}", r"\toprule"]
    if any(group for group, _ in table.groups):
        heads, rules, column = [""] * width, [], width + 1
        for group, labels in table.groups:
            heads.append(r"\multicolumn{" + str(len(labels)) + "}{c}{" + latex_escape(group) + "}")
            rules.append(r"\cmidrule(lr){" + f"{column}-{column + len(labels) - 1}" + "}")
            column += len(labels)
        lines += [" & ".join(heads) + r" \\", " ".join(rules)]
    labels = list(table.index) + [label for _, group_labels in table.groups for label in group_labels]
    lines += [" & ".join(latex_escape(label) for label in labels) + r" \\", r"\midrule"]
    for row in table.display_rows():
        lines.append(" & ".join("--" if cell is None else latex_escape(cell) for cell in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def write_table(table: ReportTable, directory: str | Path) -> list[Path]:
    """Write ``NAME.csv``, ``NAME.md`` and ``NAME.tex`` into ``directory``; returns their paths."""
    directory = Path(directory)
    paths = []
    for suffix, render in ((".csv", to_csv), (".md", to_markdown), (".tex", to_latex)):
        path = directory / f"{table.name}{suffix}"
        text = render(table)
        write_text_atomic(path, text if text.endswith("\n") else text + "\n")
        paths.append(path)
    return paths


def _interval_text(low: float | None, high: float | None, scale: float = 1.0, fmt: str = "+.2f") -> str | None:
    return None if low is None or high is None else f"[{scale * low:{fmt}}, {scale * high:{fmt}}]"


def significance_table(models: Sequence[ModelRow], rows: Sequence[Any], basis: str) -> ReportTable:
    """Unique concepts raw, their chance level, and the count significant under Benjamini-Hochberg."""
    chosen = [row for row in rows if row.basis == basis]
    values = {row.model: (integer(row.unique_concepts), decimal(1)(row.chance_unique),
                          integer(row.significant_concepts)) for row in chosen}
    detail = (f" (AP >= {chosen[0].threshold:g}, {chosen[0].permutations} label permutations per concept, FDR "
              f"{chosen[0].alpha:g}, {chosen[0].orientation} orientation)") if chosen else ""
    return pool_table(f"concept_significance_{basis}", f"Unique concepts against chance, {basis} basis", models,
                      values, ("Raw", "Chance level", "Significant"),
                      caption=f"Raw: eq. 5{detail}; chance level: the raw count expected when every concept's labels "
                              "are permuted inside its balanced set; significant: raw concepts whose max AP over "
                              "directions is significant under Benjamini-Hochberg.", sources=("concept_significance",))


def predictors_table(rows: Sequence[Any]) -> ReportTable:
    """Leave-one-model-out ER prediction: each signature, the combination, the reference and DoC/ATC."""
    body = tuple((row.predictor, row.kind, str(row.models), decimal(2)(row.spearman),
                  _interval_text(row.spearman_low, row.spearman_high), decimal(2)(row.kendall),
                  _interval_text(row.kendall_low, row.kendall_high), f"{100 * row.mae:.2f}",
                  _interval_text(row.mae_low, row.mae_high, 100, ".2f")) for row in rows)
    return ReportTable("er_predictors", "Signatures as ER predictors, leaving each model out", ("Predictor", "Kind"),
                       (("", ("Models", "Spearman", "95% interval", "Kendall", "95% interval", "MAE (ER points)",
                              "95% interval")),), body,
                       "A signature: rho and tau of the signature itself with ER (every increasing map ranks the "
                       "models alike), MAE of the monotone fit on the other models; the combination: ridge on the "
                       "other models, its held-out predictions ranked; mean of others: the reference a fit must "
                       "beat on MAE (its rho is -1 by construction); doc, atc-*: label-free predicted ER from the "
                       "unlabelled shift images, no fit. Intervals: percentile bootstrap over models.",
                       ("er_predictors", "er_predictions", "signatures", "label_free"))


def tracking_table(rows: Sequence[Any]) -> ReportTable:
    """Rank correlation of each signature with ER along each Wise-FT sweep."""
    body = tuple((row.pair, row.signature, str(row.points), decimal(2)(row.spearman), decimal(2)(row.kendall))
                 for row in rows)
    return ReportTable("er_tracking", "Do the signatures track ER along Wise-FT sweeps?", ("Pair", "Signature"),
                       (("", ("Alphas", "Spearman", "Kendall")),), body,
                       "Rank correlation across alpha of the signature and ER of the interpolated models.",
                       ("er_tracking",))
