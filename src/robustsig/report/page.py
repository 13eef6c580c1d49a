"""The report page an analysis writes its section on: :class:`Page` reads the results tables and their provenance,
writes each table (CSV, Markdown, LaTeX under ``tables/``) and figure (PNG, SVG under ``figures/``) and returns the
escaped HTML that shows it, with a collapsible block saying what it was computed on. :func:`escape` escapes any
other text an analysis puts on the page (model, dataset, class and concept names, config values).

Example:
    >>> escape("<b>RN50</b> & co")
    '&lt;b&gt;RN50&lt;/b&gt; &amp; co'
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustsig.report import figures, tables
from robustsig.study.results import DatasetRow, Results


def escape(value: Any) -> str:
    """Escape any value for HTML text or a quoted attribute."""
    return html.escape(str(value), quote=True)


def _blank_none(value: Any) -> Any:
    return "" if value is None else value


@dataclass
class ReportFiles:
    """What :func:`robustsig.report.html.build_report` wrote.

    Attributes:
        html: the page.
        tables: the table files (CSV, Markdown, LaTeX).
        figures: the figure files (PNG, SVG).
        sections: analysis name -> whether its results were found and shown.
    """

    html: Path
    tables: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    sections: dict[str, bool] = field(default_factory=dict)


class Page:
    """The report being built: the results it shows and the files written for it.

    Args:
        results: the results folder.
        out_html: the page's path (``tables/`` and ``figures/`` go next to it).
        config: the study config as JSON data (None when none is known).
    """

    def __init__(self, results: Results, out_html: Path, config: Mapping[str, Any] | None) -> None:
        self.results = results
        self.provenance = results.provenance()
        self.config = config
        self.tables_dir = out_html.parent / "tables"
        self.figures_dir = out_html.parent / "figures"
        self.files = ReportFiles(out_html)

    # ---- reading
    def read(self, table: type) -> list:
        """The rows of ``table`` (none when it was not computed)."""
        return self.results.read(table) if self.results.has(table) else []

    def parameters(self, table: str) -> dict[str, Any]:
        """The parameters recorded in the provenance of ``results/TABLE.csv``."""
        return dict(self.provenance.get("tables", {}).get(table, {}).get("parameters") or {})

    def options(self, analysis: str) -> dict[str, Any]:
        """The config's section of ``analysis`` as JSON data (empty when absent)."""
        return dict(((self.config or {}).get("analyses") or {}).get(analysis) or {})

    def id_dataset(self, rows: Sequence[Any] = ()) -> str | None:
        """The study's in-distribution set (from datasets.csv), else the first dataset of ``rows``."""
        for row in self.read(DatasetRow):
            if row.role == "id":
                return row.dataset
        return rows[0].dataset if rows else None

    def shown_dataset(self, rows: Sequence[Any]) -> str:
        """The id set when ``rows`` cover it, else the first dataset of ``rows``."""
        dataset = self.id_dataset(rows)
        return dataset if dataset in {row.dataset for row in rows} else rows[0].dataset

    # ---- blocks
    def sources(self, names: Sequence[str]) -> str:
        """A collapsible block saying what the named results tables were computed on."""
        parts = []
        for name in names:
            entry = self.provenance.get("tables", {}).get(name)
            if not entry:
                parts.append(f"<p>results/{escape(name)}.csv: no provenance recorded.</p>")
                continue
            parameters = entry.get("parameters") or {}
            text = ", ".join(f"{escape(key)} = {escape(value)}" for key, value in parameters.items())
            parts.append(f"<p>results/{escape(name)}.csv, updated {escape(entry.get('updated'))}"
                         + (f"; parameters: {text}" if text else "") + "</p>")
            inputs = entry.get("inputs") or []
            if inputs:
                body = "".join(f"<tr><td>{escape(item.get('model'))}</td><td>{escape(item.get('dataset'))}</td>"
                               f"<td><code>{escape(item.get('store_key') or '')}</code></td>"
                               f"<td class=\"num\">{escape(_blank_none(item.get('num_samples')))}</td>"
                               f"<td class=\"num\">{escape(_blank_none(item.get('skipped')))}</td></tr>"
                               for item in inputs)
                parts.append("<table><tr><th>model</th><th>dataset</th><th>store key</th><th>samples</th>"
                             f"<th>skipped images</th></tr>{body}</table>")
        return f"<details class=\"provenance\"><summary>Computed on</summary>{''.join(parts)}</details>"

    def table(self, table: tables.ReportTable) -> str:
        """Write ``table`` (CSV, Markdown, LaTeX) and return its HTML, caption and sources."""
        self.files.tables += tables.write_table(table, self.tables_dir)
        index = len(table.index)
        if any(group for group, _ in table.groups):
            head = "<tr>" + "".join(f"<th rowspan=\"2\">{escape(label)}</th>" for label in table.index)
            head += "".join(f"<th colspan=\"{len(labels)}\">{escape(group)}</th>" for group, labels in table.groups)
            head += "</tr><tr>" + "".join(f"<th>{escape(label)}</th>" for _, labels in table.groups
                                          for label in labels) + "</tr>"
        else:
            head = "<tr>" + "".join(f"<th>{escape(label)}</th>" for label in table.header()) + "</tr>"
        body = ""
        for row in table.display_rows():
            body += "<tr>" + "".join(
                f"<td>{escape(cell)}</td>" if i < index else
                f"<td class=\"num\">{escape(tables.MISSING_TEXT if cell is None else cell)}</td>"
                for i, cell in enumerate(row)) + "</tr>"
        caption = f"<p class=\"caption\">{escape(table.caption)}</p>" if table.caption else ""
        return (f"<table id=\"table-{escape(table.name)}\"><caption>{escape(table.title)}</caption>"
                f"<thead>{head}</thead><tbody>{body}</tbody></table>{caption}{self.sources(table.sources)}")

    def figure(self, make: Callable[[], Any], stem: str, caption: str, sources: Sequence[str]) -> str:
        """Draw ``make()`` (a matplotlib figure), write it (PNG, SVG) and return its HTML (the PNG inlined), caption
        and sources."""
        png, svg = figures.save_figure(make(), self.figures_dir, stem)
        self.files.figures += [png, svg]
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        return (f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{escape(caption)}\">"
                f"<figcaption>{escape(caption)}</figcaption></figure>{self.sources(sources)}")

    @staticmethod
    def note(text: str) -> str:
        """A highlighted note (escaped)."""
        return f"<p class=\"note\">{escape(text)}</p>"

    @staticmethod
    def caption(text: str) -> str:
        """A caption-styled paragraph (escaped)."""
        return f"<p class=\"caption\">{escape(text)}</p>"

    def absent(self, analysis: str, files: Sequence[str]) -> str:
        """The note shown instead of a section whose results are absent: not part of the study, or not finished."""
        enabled = bool(self.config and (self.config.get("analyses") or {}).get(analysis) is not None
                       and (self.config["analyses"][analysis] or {}).get("enabled", True))
        names = " and ".join(f"results/{name}.csv" for name in files)
        why = ("although the study config enables it: the run did not finish it; rerun `robustsig study run` "
               "to complete it" if enabled else f"the {analysis} analysis was not part of this study")
        return self.note(f"Not run: {names} absent ({why}).")
