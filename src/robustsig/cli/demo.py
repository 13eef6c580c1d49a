"""``robustsig demo``: the whole study on the embedded demo (packaged photos and weights, offline, CPU)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from robustsig.cli._output import run_long_command

if TYPE_CHECKING:
    from robustsig.demo.run import DemoRun

_SIZES = ("default", "small", "tiny")


def demo(out: Path = typer.Option(Path("robustsig-demo"), "--out", "-o", help="the demo's folder (data, finetuned "
                                  "model, study.yaml, stores, results, report)"),
         size: str = typer.Option("default", "--size", help="default (the demo, ~4 min on 2 CPU cores) | small | "
                                  "tiny (tests: 5 models, fewer images; the numbers mean even less)"),
         device: str = typer.Option("cpu", "--device", help="where the finetune and the extractions run (cpu, "
                                    "cuda, cuda:1...)"),
         json_output: bool = typer.Option(False, "--json", help="print a JSON summary (no progress bars)")) -> None:
    """Run the whole study offline on real ImageNet photos and weights from packages, with finetunes; report in
    OUT/report.

    Writes OUT/study.yaml (rerun or edit it with `robustsig study run`); a rerun reuses every finished stage."""
    from robustsig.demo.run import run_demo
    from robustsig.errors import InputError

    if size not in _SIZES:
        raise InputError(f"--size: expected one of {', '.join(_SIZES)}; got {size!r}")
    run_long_command(lambda progress: run_demo(out, size=size, device=device, progress=progress),
                     json_output=json_output, show=_print,
                     kept="the data, the finetune checkpoints and every finished study step are")


def _print(run: DemoRun) -> None:
    from robustsig.cli.study import _print_summary

    typer.echo("")
    typer.echo(textwrap.fill(run.statement(), width=110))
    for name, ft in run.finetunes.items():
        last = ft.result.history[-1] if ft.result.history else {}
        typer.echo(f"Finetuned {name} on {run.data.counts['photos-train']} training crops: {ft.result.steps} steps, "
                   f"last epoch loss {last.get('loss', float('nan')):.3f}{' (reused)' if ft.reused else ''}.")
    t = run.timings
    typer.echo(f"Time: data {t['data']:.1f} s{' (reused)' if run.data.reused else ''}, finetune {t['finetune']:.1f} s, "
               f"Wise-FT checkpoints {t['wiseft']:.1f} s, extraction {t['extract']:.1f} s, analyses "
               f"{t['analyses']:.1f} s, report {t['report']:.1f} s; total {t['total']:.1f} s.")
    typer.echo("")
    _print_summary(run.summary)
    typer.echo(f"study config: {run.study_file} (edit it and rerun with `robustsig study run {run.study_file}`)")


def register(app: typer.Typer) -> None:
    """Add ``robustsig demo`` to the app."""
    app.command("demo")(demo)
