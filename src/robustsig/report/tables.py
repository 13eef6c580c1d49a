"""Tables laid out for printing, as CSV, Markdown and LaTeX: the shared layout and renderers; each analysis builds its
own tables in its module.

Pool tables are laid out as in the paper: one row per backbone x pretraining, one column group per model kind
(zero-shot, finetuned, supervised), the same metrics in every group. Accuracies and ER are printed in percent.

Example:
    >>> from robustsig.study.results import ModelRow
    >>> models = [ModelRow("a", "openclip:RN50@openai", "RN50", "openai", "zero-shot"),
    ...           ModelRow("b", "openclip:RN50@/ft.pt", "RN50", "openai", "finetuned")]
    >>> table = pool_table("kurtosis", "Activation kurtosis", models, {"a": ("12.2",), "b": ("3.5",)}, ("Kurtosis",))
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

from robustsig._atomic import write_text_atomic
from robustsig._cells import CONTROL, csv_line, escape_cell
from robustsig.study.pool import KIND_TITLES, cells, kinds_present, layout_rows
from robustsig.study.results import ModelRow

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
