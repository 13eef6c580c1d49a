"""``robustsig report``: the HTML report (tables, figures) of a study's results folder."""

from __future__ import annotations

from pathlib import Path

import typer

from robustsig.cli._output import emit_json


def report(results_dir: Path = typer.Argument(..., metavar="RESULTS_DIR", help="the results/ folder of a study run"),
           out: Path | None = typer.Option(None, "--out", "-o",
                                           help="the HTML page (default: RESULTS_DIR/../report/report.html)"),
           config: Path | None = typer.Option(None, "--config",
                                              help="the study YAML (default: the config recorded in the results)"),
           title: str = typer.Option("robustsig report", "--title", help="the page title"),
           json_output: bool = typer.Option(False, "--json", help="print a JSON summary")) -> None:
    """Write one self-contained HTML page with every table and figure (tables as CSV, Markdown, LaTeX and figures
    as PNG, SVG are written next to it)."""
    from robustsig._progress import quiet
    from robustsig.report.html import build_report
    from robustsig.study.config import load_study_config

    study = load_study_config(config) if config is not None else None
    out = out if out is not None else results_dir.parent / "report" / "report.html"
    if json_output:
        with quiet():
            files = build_report(results_dir, out, config=study, title=title)
        emit_json({"html": str(files.html), "tables": [str(p) for p in files.tables],
                   "figures": [str(p) for p in files.figures], "sections": files.sections})
        return
    files = build_report(results_dir, out, config=study, title=title)
    absent = [name for name, shown in files.sections.items() if not shown]
    typer.echo(f"report: {files.html} ({len(files.tables) // 3} tables, {len(files.figures) // 2} figures)"
               + (f"; not run: {', '.join(absent)}" if absent else ""))


def register(app: typer.Typer) -> None:
    """Add ``robustsig report`` to the app."""
    app.command("report")(report)
