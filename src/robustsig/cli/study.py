"""``robustsig study``: write a study config from a preset, validate one, run one."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from robustsig.cli._output import emit_json, format_table, run_long_command
from robustsig.errors import InputError

if TYPE_CHECKING:
    from robustsig.runner import RunSummary

study_app = typer.Typer(name="study", no_args_is_help=True, add_completion=False,
                        help="The main job: one YAML file names a model pool, datasets and analyses "
                             "(init writes one, validate checks it, run runs it).")


@study_app.command("init")
def init(preset: str = typer.Option("paper", "--preset", help="the preset to write (paper: the paper's pool)"),
         out: Path = typer.Option(Path("study.yaml"), "--out", "-o", help="the YAML file to write"),
         force: bool = typer.Option(False, "--force", help="overwrite OUT if it exists"),
         json_output: bool = typer.Option(False, "--json", help="print a JSON summary")) -> None:
    """Write a commented study config from a preset; fill in its /path/to/... placeholders."""
    from robustsig.study.config import load_study_config
    from robustsig.study.presets import preset_yaml
    from robustsig._atomic import write_text_atomic

    text = preset_yaml(preset)
    if out.exists() and not force:
        raise InputError(f"{out} already exists; pass --force to overwrite it or --out to write another file")
    write_text_atomic(out, text)
    config = load_study_config(out)
    missing = config.check_paths()
    kinds = Counter(model.kind for model in config.models)
    if json_output:
        emit_json({"path": str(out), "preset": preset, "models": [model.model_dump(mode="json") for model in
                                                                 config.models],
                   "missing_paths": [{"key": item.key, "path": str(item.path)} for item in missing]})
        return
    typer.echo(f"wrote {out}: {len(config.models)} models ({', '.join(f'{n} {k}' for k, n in kinds.items())}), "
               f"{len(config.datasets.evaluation())} evaluation datasets"
               f"{' + Broden' if config.datasets.broden else ''}, analyses: {', '.join(config.enabled_analyses())}")
    if missing:
        typer.echo(f"fill in the {len(missing)} paths still missing (the /path/to/... placeholders), then run "
                   f"`robustsig study validate {out}`")


@study_app.command("validate")
def validate(config_path: Path = typer.Argument(..., metavar="STUDY.yaml", help="the study config"),
             structure_only: bool = typer.Option(False, "--structure-only",
                                                 help="check keys and values only, not that the files exist"),
             json_output: bool = typer.Option(False, "--json", help="print a JSON summary")) -> None:
    """Check a study config: every key and value, then that every file and folder it names exists (dataset roots
    and path options such as class_map, checkpoints, class-name, template and baseline files)."""
    from robustsig.study.config import load_study_config

    config = load_study_config(config_path)
    missing = [] if structure_only else config.check_paths()
    if json_output:
        emit_json({"path": str(config_path), "valid": not missing, "models": len(config.models),
                   "datasets": [entry.name for entry in config.datasets.evaluation()],
                   "analyses": config.enabled_analyses(),
                   "missing_paths": [{"key": item.key, "path": str(item.path)} for item in missing]})
        if missing:
            raise typer.Exit(1)
        return
    if missing:
        config.require_paths()  # raises DataError listing every missing path
    checked = "structure valid (paths not checked)" if structure_only else "valid, every path exists"
    typer.echo(f"{config_path}: {checked}; {len(config.models)} models, datasets: "
               f"{', '.join(entry.name for entry in config.datasets.evaluation())}"
               f"{' + ' + config.datasets.broden.name if config.datasets.broden else ''}; "
               f"analyses: {', '.join(config.enabled_analyses())}")


@study_app.command("run")
def run(config_path: Path = typer.Argument(..., metavar="STUDY.yaml", help="the study config"),
        only: str | None = typer.Option(None, "--only", help="run only these analyses and/or models, comma-separated "
                                                             "(e.g. kurtosis,pruning or ViT-B-32-zs)"),
        device: str | None = typer.Option(None, "--device", help="where models run (cpu, cuda, cuda:1, mps, auto), "
                                                                 "instead of the config's device"),
        json_output: bool = typer.Option(False, "--json", help="print a JSON summary (no progress bars)")) -> None:
    """Extract what the activation stores lack, compute every analysis, write results/ and the HTML report.

    Rerunning redoes nothing already done; a changed setting reruns only what depends on it."""
    from robustsig.runner import run_study

    run_long_command(lambda progress: run_study(config_path, only=only, device=device, progress=progress),
                     json_output=json_output, show=_print_summary, kept="every step finished so far is")


def _percent(value: float | None) -> float | None:
    return None if value is None else 100 * value


def _print_summary(summary: RunSummary) -> None:
    """The terminal summary: one row per model, then where the report is and what failed."""
    rows = [{"model": row["model"], "ACC(I) %": _percent(row["acc_id"]), "ACC(S) %": _percent(row["acc_shift"]),
             "ER (points)": _percent(row["er"]), "kurtosis": row["kurtosis"], "#privileged": row["privileged"],
             "unique concepts": row["unique_concepts"]} for row in summary.rows]
    counts = summary.counts()
    typer.echo(format_table(rows, floatfmt=".2f"))
    typer.echo(f"{counts['done']} step(s) computed, {counts['reused']} reused in {summary.seconds:.1f} s; "
               f"results in {summary.results_dir}")
    if summary.report is not None:
        typer.echo(f"report: {summary.report}")
    else:
        typer.echo(f"the report could not be built: {summary.report_error}", err=True)
    if summary.failures or summary.blocked:
        failed = sorted({model for step in summary.failures + summary.blocked for model in step.models})
        typer.echo(f"{len(summary.failures)} step(s) failed and {len(summary.blocked)} could not run"
                   f"{' (models: ' + ', '.join(failed) + ')' if failed else ''}; the other results are complete:",
                   err=True)
        by_message: dict[str, list[str]] = {}
        for step in summary.failures:  # one model failing on every dataset: its message once
            by_message.setdefault(step.message, []).append(f"[{step.tag}] {step.label}")
        for message, labels in by_message.items():
            typer.echo(f"  {', '.join(labels)}: {message}", err=True)
        typer.echo("fix these and rerun the same command: finished steps are not redone", err=True)


def register(app: typer.Typer) -> None:
    """Add the ``study`` command group to the ``robustsig`` app."""
    app.add_typer(study_app, name="study")

