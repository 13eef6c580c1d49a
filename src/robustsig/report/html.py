"""One self-contained HTML page with every table and figure of a study's results.

:func:`build_report` reads ``results/`` (see :mod:`robustsig.study.results`) and writes the page: the model pool,
then one section per analysis of :mod:`robustsig.study.registry`, in its order, each written by the analysis itself
(:meth:`~robustsig.study.analysis.Analysis.report`) on a :class:`~robustsig.report.page.Page`, which writes the tables
(CSV, Markdown, LaTeX) to ``tables/`` and the figures (PNG, SVG) to ``figures/`` next to the page. CSS inline,
figures inlined as base64 PNG, no scripts (a Content-Security-Policy forbids them), no external resource. Each table
and figure says what it was computed on (models, datasets, store keys, sample counts from ``provenance.json``).
Every string shown (config values, model, dataset, class and concept names) is escaped. An analysis whose results
are absent gets a note saying so instead of its section; an installed analysis whose section fails gets a note
naming it, and the rest of the page is built.

Example:
    >>> # build_report("study/results", "study/report/report.html")
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from robustsig import __version__
from robustsig._atomic import write_text_atomic
from robustsig._progress import progress
from robustsig.errors import DataError, InputError
from robustsig.report.page import Page, ReportFiles, escape
from robustsig.study import registry
from robustsig.study.analysis import Analysis
from robustsig.study.config import StudyConfig, validate_study_config
from robustsig.study.pool import KIND_TITLES
from robustsig.study.results import DatasetRow, ModelRow, Results, jsonable, package_versions, study_rows

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2.2rem; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .85rem; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: .3rem; }
th, td { border: 1px solid #d6d6d6; padding: .2rem .5rem; }
th { background: #f4f4f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption, .caption { font-size: .85rem; color: #555; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: .4rem .8rem; }
details { font-size: .8rem; margin: .3rem 0 1rem; } summary { cursor: pointer; color: #555; }
pre { background: #f6f8fa; padding: .8rem; overflow-x: auto; font-size: .8rem; }
nav ul { columns: 2; }
"""
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
REPRODUCTION_LINK = ("Which output reproduces each table and figure of the paper, by which procedure, exactly or as a "
                     "named variant: the reproduction table, section \"Reproducing the paper\" of docs/study.md in "
                     "robustsig's source.")


def _pool_section(page: Page, models: Sequence[ModelRow]) -> str:
    body = "".join(f"<tr><td>{escape(m.model)}</td><td><code>{escape(m.spec)}</code></td><td>{escape(m.backbone)}</td>"
                   f"<td>{escape(m.pretraining)}</td><td>{escape(KIND_TITLES.get(m.kind, m.kind))}</td></tr>"
                   for m in models)
    text = ("<table><caption>Models</caption><tr><th>model</th><th>spec</th><th>backbone</th><th>pretraining</th>"
            f"<th>kind</th></tr>{body}</table>")
    datasets = page.read(DatasetRow)
    if datasets:
        body = "".join(f"<tr><td>{escape(d.dataset)}</td><td>{escape(d.kind)}</td><td>{escape(d.role)}</td>"
                       f"<td><code>{escape(d.root)}</code></td></tr>" for d in datasets)
        text += ("<table><caption>Datasets</caption><tr><th>dataset</th><th>kind</th><th>role</th><th>root</th>"
                 f"</tr>{body}</table>")
    return text


def _section(page: Page, analysis: Analysis, models: Sequence[ModelRow]) -> str | None:
    """The analysis's section; for an installed analysis whose section raises, a note naming it (the error's
    traceback in the page's details) so that the rest of the report is still built."""
    if analysis.origin == "robustsig":
        return analysis.report(page, models)
    try:
        return analysis.report(page, models)
    except Exception as error:  # noqa: BLE001 (a plugin must not cost the whole report)
        return (page.note(f"The report section of {analysis.name} ({analysis.origin}) failed: "
                          f"{type(error).__name__}: {error}")
                + f"<details><summary>Traceback</summary><pre>{escape(traceback.format_exc())}</pre></details>")


def _description(config: Mapping[str, Any] | None) -> str:
    """The config's ``description`` as escaped paragraphs (blank lines separate them), or nothing."""
    text = str((config or {}).get("description") or "").strip()
    paragraphs = [" ".join(part.split()) for part in text.split("\n\n") if part.strip()]
    return "".join(Page.note(paragraph) for paragraph in paragraphs)


def _config_mapping(config: StudyConfig | Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    if config is None or isinstance(config, Mapping):
        return jsonable(config) if config is not None else None
    if isinstance(config, StudyConfig):
        return config.to_dict()
    raise InputError(f"config: expected a StudyConfig or a mapping; got {type(config).__name__}")


def _models(page: Page) -> list[ModelRow]:
    models = page.read(ModelRow)
    if models:
        return models
    if page.config:
        return study_rows(validate_study_config(page.config, source="the study config of the report"))[0]
    raise DataError(f"{page.results.path(ModelRow)} is missing and no study config was given: the tables cannot be "
                    "laid out without the pool (pass the config: `robustsig report RESULTS --config study.yaml`)")


def build_report(results_dir: str | os.PathLike, out_html: str | os.PathLike, *,
                 config: StudyConfig | Mapping[str, Any] | None = None, title: str = "robustsig report") -> ReportFiles:
    """Build the HTML report of a study's results.

    Args:
        results_dir: the ``results/`` folder a study run wrote.
        out_html: the page to write; ``tables/`` and ``figures/`` are written next to it.
        config: the study config (a :class:`~robustsig.study.config.StudyConfig` or its mapping); default: the
            one recorded in ``provenance.json``.
        title: the page title.

    Returns:
        What was written (:class:`~robustsig.report.page.ReportFiles`).

    Raises:
        DataError: ``results_dir`` is missing, or holds no model pool and no config was given.
    """
    results_dir, out_html = Path(results_dir), Path(out_html)
    if not results_dir.is_dir():
        raise DataError(f"results folder {str(results_dir)!r} does not exist; expected the results/ folder that "
                        "`robustsig study run` writes")
    results = Results(results_dir)
    provenance = results.provenance()
    page = Page(results, out_html, _config_mapping(config) or provenance.get("config"))
    models = _models(page)

    nav, body = [], [f"<section id=\"pool\"><h2>Model pool and datasets</h2>{_pool_section(page, models)}</section>"]
    for analysis in progress(registry.analyses(), desc="report", unit="section"):
        name = analysis.name
        if analysis.origin != "robustsig" and name not in ((page.config or {}).get("analyses") or {}) and not any(
                page.results.has(table) for table in analysis.tables):
            continue  # an installed analysis this study does not use: no section
        content = _section(page, analysis, models)
        page.files.sections[name] = content is not None
        essential = analysis.essential or tuple(table.TABLE for table in analysis.tables[:1])
        nav.append(f"<li><a href=\"#{escape(name)}\">{escape(analysis.title)}</a>"
                   f"{'' if content is not None else ' (not run)'}</li>")
        body.append(f"<section id=\"{escape(name)}\"><h2>{escape(analysis.title)}</h2>"
                    f"{content if content is not None else page.absent(name, essential)}</section>")

    config_text = yaml.safe_dump(page.config, sort_keys=False, allow_unicode=True) if page.config else "(none recorded)"
    versions = provenance.get("versions") or {}
    rows = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in versions.items())
    body.append("<section id=\"config\"><h2>Configuration</h2>"
                f"<pre>{escape(config_text)}</pre></section>"
                "<section id=\"versions\"><h2>Versions</h2>"
                + (f"<table><caption>Packages of the run</caption>{rows}</table>" if rows else
                   Page.note("No package versions recorded with the results."))
                + Page.caption(f"Report built with robustsig {__version__} (Python {package_versions()['python']}).")
                + "</section>")
    built = datetime.now(timezone.utc).isoformat(timespec="seconds")
    document = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1><p class=\"caption\">Results: {escape(results_dir.resolve())}; built {escape(built)}. "
        "Accuracies and ER in percent.</p>"
        f"{Page.caption(REPRODUCTION_LINK)}"
        f"{_description(page.config)}"
        f"<nav><ul>{''.join(nav)}</ul></nav>{''.join(body)}</body></html>\n")
    write_text_atomic(out_html, document)
    return page.files
