"""``robustsig study run``: validate a study config, plan its DAG, execute it, write ``results/`` and the report.

This module sits above both :mod:`robustsig.study` (the config, the plan and the analyses' steps) and
:mod:`robustsig.report` (the page), which it runs one after the other.

The run, in order:

1. the config is read and validated (keys, then every path it names), and restricted to ``only`` (analyses and/or
   models, as ``--only``);
2. ``results/models.csv``, ``datasets.csv`` and the config in ``provenance.json`` are written, rows of models or
   pairs no longer in the config are dropped, and the ER baseline line is fixed (refit from ``baseline.fit_csv``);
3. the plan (:func:`robustsig.study.registry.build_plan`) is executed task by task: extractions (each store reused,
   resumed or re-extracted, see :mod:`robustsig.study.stores`), AP matrices, analyses (each skipped when the ledger
   says it finished on the same inputs and parameters, see :mod:`robustsig.study.ledger`);
4. the HTML report is built from whatever ``results/`` holds.

A failing task (a model that cannot be built, a dataset that cannot be read) is logged with what to do; the tasks
that need its output are skipped, every other task still runs, and the run reports the failure at the end (the
command exits non-zero). Rerunning redoes nothing already done.

Example:
    >>> summary = run_study("study.yaml", only=["kurtosis"])      # doctest: +SKIP
    >>> summary.ok, summary.report                                 # doctest: +SKIP
    (True, PosixPath('out/report/report.html'))
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from robustsig._atomic import sweep_temporaries
from robustsig._locks import FileLock
from robustsig._progress import progress as progress_bar
from robustsig._progress import quiet
from robustsig.errors import DataError, InputError, RobustsigError, os_error_message
from robustsig.study import registry
from robustsig.study.config import StudyConfig, load_study_config, select
from robustsig.study.ledger import Ledger
from robustsig.study.results import DatasetRow, ModelRow, Results, study_rows
from robustsig.study.runlog import RunLog
from robustsig.study.tasks import RunContext, Task

StepStatus = Literal["done", "reused", "failed", "blocked"]
RUN_LOCK = ".run.lock"
"""The lock file in ``results/`` that a study run holds (see :mod:`robustsig._locks`)."""


@dataclass(frozen=True)
class StepRecord:
    """How one task of the plan ended.

    Attributes:
        id: the task id (``extract:MODEL:DATASET``, ``kurtosis:MODEL``...).
        tag, label: what the log line shows (``[tag] label: message``).
        status: ``done`` (computed now), ``reused`` (already done), ``failed``, or ``blocked`` (not run: a task it
            needs failed).
        seconds: wall time.
        message: the log line's text (what was computed, or what went wrong and what to do).
        models: the pool models it concerns.
    """

    id: str
    tag: str
    label: str
    status: StepStatus
    seconds: float
    message: str
    models: tuple[str, ...] = ()


@dataclass
class RunSummary:
    """What a study run did.

    Attributes:
        config: the study as run (after ``only``).
        results_dir: the ``results/`` folder.
        report: the HTML report (None when it could not be built: see ``report_error``).
        steps: every task of the plan, in execution order.
        rows: per model of the run: ``model, acc_id, acc_shift, er, kurtosis, privileged, unique_concepts`` (None
            where not computed), read back from ``results/``.
        report_error: why the report could not be built.
        seconds: wall time of the run.
    """

    config: StudyConfig
    results_dir: Path
    report: Path | None
    steps: list[StepRecord] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    report_error: str | None = None
    seconds: float = 0.0

    @property
    def failures(self) -> list[StepRecord]:
        """The tasks that failed (each names its model, dataset and what to do)."""
        return [step for step in self.steps if step.status == "failed"]

    @property
    def blocked(self) -> list[StepRecord]:
        return [step for step in self.steps if step.status == "blocked"]

    @property
    def ok(self) -> bool:
        """Every task done or reused, and the report built."""
        return not self.failures and not self.blocked and self.report is not None

    def counts(self) -> dict[str, int]:
        """Number of tasks per status."""
        return {status: sum(step.status == status for step in self.steps)
                for status in ("done", "reused", "failed", "blocked")}

    def ran(self, tag: str | None = None) -> list[str]:
        """Ids of the tasks computed in this run (of one tag: ``extract``, ``concepts``...)."""
        return [step.id for step in self.steps if step.status == "done" and tag in (None, step.tag)]

    def to_dict(self) -> dict[str, Any]:
        """JSON data (``--json``)."""
        return {"ok": self.ok, "results": str(self.results_dir), "report": str(self.report) if self.report else None,
                "report_error": self.report_error, "seconds": round(self.seconds, 3), "counts": self.counts(),
                "summary": self.rows, "failures": [asdict(step) for step in self.failures],
                "steps": [asdict(step) for step in self.steps]}


def _device(device: str | None, config: StudyConfig) -> str | None:
    """The device models run on: ``device`` (``--device``), else the config's; None for ``auto``."""
    choice = device or config.device
    if choice == "auto":
        return None
    import torch

    try:
        parsed = torch.device(choice)
    except (RuntimeError, TypeError):
        raise InputError(f"--device: expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'; got {choice!r}") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {choice!r} asked for, but torch sees no CUDA GPU here; use --device cpu")
    return choice


def run_study(config_or_path: StudyConfig | str | os.PathLike, *, only: Iterable[str] | str | None = None,
              device: str | None = None, progress: bool = True) -> RunSummary:
    """Run a study: extract what the stores lack, compute every enabled analysis, write ``results/`` and the report.

    Args:
        config_or_path: the study YAML file, or a validated :class:`~robustsig.study.config.StudyConfig`.
        only: analyses and/or model names to run (each item may hold several, comma-separated); None: all.
        device: where models run (``cpu``, ``cuda``, ``cuda:1``...), instead of the config's ``device``.
        progress: show progress bars and log lines on stderr (the log is always appended to
            ``results/run.log``).

    Returns:
        A :class:`RunSummary`; ``summary.ok`` is False when a task failed (the others still ran).

    Raises:
        InputError: the config is invalid, ``only``/``device`` name something that does not exist, or another run
            of the same study is under way (two runs would interleave their results: the second is refused at once,
            naming the first's process).
        DataError: a path the config names does not exist.
    """
    full = config_or_path if isinstance(config_or_path, StudyConfig) else load_study_config(config_or_path)
    full.require_paths()
    if isinstance(only, str):
        only = [only]
    selected = select(full, only) if only else full
    run_device = _device(device, full)
    results = Results(full.results_dir)
    results.root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(results.root / RUN_LOCK)
    lock.acquire(f"running the study in {full.output_dir}", "give this run another output_dir")
    try:
        with (nullcontext() if progress else quiet()):
            log = RunLog(results.root / "run.log", echo=progress)
            try:
                return _run(full, selected, results, log, run_device, progress, list(only or []))
            finally:
                log.close()
    finally:
        lock.release()


def _run(full: StudyConfig, selected: StudyConfig, results: Results, log: RunLog, device: str | None,
         progress: bool, only: list[str]) -> RunSummary:
    from robustsig.study.baseline import study_baseline
    from robustsig.study.subjects import Classifiers

    begin = time.perf_counter()
    selection = f" (--only {','.join(only)})" if only else ""
    log.write(f"=== robustsig study run: {len(selected.models)} model(s), analyses: "
              f"{', '.join(selected.enabled_analyses())}{selection}; device {device or 'auto'}; "
              f"results in {results.root} ===")
    swept = [path for folder in (results.root, full.report_dir) for path in sweep_temporaries(folder)]
    if swept:
        log.line("results", "", f"deleted {len(swept)} temporary file(s) a killed run left")
    ledger = Ledger(results.root)
    if ledger.problem:
        log.line("ledger", "", ledger.problem)
    _drop_stale_rows(results, full, log)
    models, datasets = study_rows(full)
    results.write(ModelRow, models)
    results.write(DatasetRow, datasets)
    results.set_config(full.to_dict())
    baseline = study_baseline(full.baseline)
    log.line("baseline", "", f"ER from logit(ACC(S)) = {baseline.b1:.4f} logit(ACC(I)) {baseline.b0:+.4f} "
                             f"({baseline.source}{f', r = {baseline.r:.3f}' if baseline.r is not None else ''})")
    ctx = RunContext(selected, results, ledger, log, baseline, Classifiers(full, device, log), device=device,
                     progress=progress)
    tasks = registry.build_plan(full, selected)
    steps = _execute(tasks, ctx)
    report, report_error = _report(full, results, log)
    summary = RunSummary(selected, results.root, report, steps, summary_rows(results, selected), report_error,
                         time.perf_counter() - begin)
    counts = summary.counts()
    log.write(f"=== {counts['done']} step(s) computed, {counts['reused']} reused, {counts['failed']} failed, "
              f"{counts['blocked']} not run, in {summary.seconds:.1f} s ===")
    return summary


def _execute(tasks: list[Task], ctx: RunContext) -> list[StepRecord]:
    """Run the tasks in order; a task whose needs failed is not run; a failure never stops the others."""
    status: dict[str, StepStatus] = {}
    steps: list[StepRecord] = []
    bar = progress_bar(total=len(tasks), desc="study", unit="step", leave=False)
    try:
        for task in tasks:
            begin = time.perf_counter()
            failed = [need for need in task.needs if status.get(need) in ("failed", "blocked")]
            if failed:
                step_status: StepStatus = "blocked"
                message = f"not run: it needs {failed[0]}, which did not finish (see above)"
            else:
                try:
                    outcome = task.execute(ctx)
                    step_status, message = outcome.status, outcome.message
                except KeyboardInterrupt:
                    ctx.log.line(task.tag, task.label, "interrupted; rerun the same command to resume")
                    raise
                except RobustsigError as error:
                    step_status, message = "failed", str(error)
                except OSError as error:  # a full disk, a file where a folder should be: the path and the cause
                    step_status, message = "failed", os_error_message(error)
                except Exception as error:  # noqa: BLE001 (one failing task must not lose the others' results)
                    step_status = "failed"
                    message = (f"{type(error).__name__}: {error} (an unexpected error: the traceback is in "
                               f"{ctx.log.path}; if it is a memory error, lower batch_size in the config)")
                    ctx.log.detail(traceback.format_exc())
                if step_status == "failed" and task.origin != "robustsig" and task.origin not in message:
                    message += f" (a step of the {task.tag!r} analysis from {task.origin})"
            seconds = time.perf_counter() - begin
            status[task.id] = step_status
            steps.append(StepRecord(task.id, task.tag, task.label, step_status, seconds, message, task.models))
            shown = {"failed": f"FAILED: {message}", "blocked": message}.get(step_status, message)
            ctx.log.line(task.tag, task.label, shown + (f" [{seconds:.1f} s]" if step_status == "done" else ""))
            bar.update(1)
    finally:
        bar.close()
    return steps


REPORT_KEY = ".report-key"
"""Beside report.html: the digest of everything it was built from (:func:`report_key`)."""


def report_key(config: StudyConfig, results: Results) -> str:
    """A digest of everything the report is built from: the config, the content of every results file (provenance.json
    without its run timestamps; run.log and the ledger left out), the package versions and robustsig's own source
    files (their stamps), and the installed analyses with their versions. A run that changed none of them reuses the
    report instead of drawing every figure again."""
    import hashlib
    import json

    import robustsig
    from robustsig._stamps import stat_stamp
    from robustsig.study.results import package_versions

    digest = hashlib.blake2b(digest_size=16)
    source = Path(robustsig.__file__).parent
    digest.update(json.dumps([config.to_dict(), package_versions(),
                              [(analysis.name, analysis.origin) for analysis in registry.analyses()],
                              [(str(path.relative_to(source)), stat_stamp(path.stat()))
                               for path in sorted(source.rglob("*.py"))]], sort_keys=True, default=str).encode())
    for path in sorted(p for p in results.root.rglob("*") if p.is_file()):
        name = path.relative_to(results.root).as_posix()
        if name in ("run.log", Ledger.FILE) or name.startswith("."):
            continue
        data = path.read_bytes()
        if name == Results.PROVENANCE:
            document = json.loads(data)
            document.pop("created", None)
            document.pop("updated", None)
            data = json.dumps(document, sort_keys=True).encode()
        digest.update(name.encode() + b"\0" + data + b"\0")
    return digest.hexdigest()


def _report(config: StudyConfig, results: Results, log: RunLog) -> tuple[Path | None, str | None]:
    from robustsig._atomic import write_text_atomic
    from robustsig.report.html import build_report

    html, stamp = config.report_dir / "report.html", config.report_dir / REPORT_KEY
    key = report_key(config, results)
    if html.is_file() and stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == key:
        log.line("report", "", f"{html} reused (no result, config or robustsig file changed since it was built)")
        return html, None
    try:
        files = build_report(results.root, html, config=config, title=f"robustsig study: {config.output_dir.name}")
    except RobustsigError as error:
        log.line("report", "", f"FAILED: {error}")
        return None, str(error)
    write_text_atomic(stamp, key + "\n")
    absent = [name for name, shown in files.sections.items() if not shown]
    log.line("report", "", f"{files.html} ({len(files.tables) // 3} tables, {len(files.figures) // 2} figures"
                           f"{'; no results for ' + ', '.join(absent) if absent else ''})")
    return files.html, None


def _drop_stale_rows(results: Results, config: StudyConfig, log: RunLog) -> None:
    """Drop the rows of models and pairs that are no longer in the config (the config is the source of truth; each
    analysis says which of its rows still belong, :meth:`~robustsig.study.analysis.Analysis.keeps`); a table written
    by another robustsig version is deleted (it is recomputed)."""
    for analysis in registry.analyses():
        for table in analysis.tables:
            if not results.has(table):
                continue
            try:
                rows = results.read(table)
            except DataError as error:
                results.path(table).unlink()
                log.line("results", "", f"{error}; deleted, it will be recomputed")
                continue
            keep = [row for row in rows
                    if registry.guarded(analysis, "keeps", lambda row=row: analysis.keeps(row, config), True)]
            if len(keep) < len(rows):
                results.write(table, keep)
                log.line("results", "", f"dropped {len(rows) - len(keep)} row(s) of {results.path(table).name} for "
                                        "models or pairs no longer in the config")


def summary_rows(results: Results, config: StudyConfig) -> list[dict[str, Any]]:
    """The terminal summary: per model, the columns each analysis contributes
    (:meth:`~robustsig.study.analysis.Analysis.summary`: ACC(I), ACC(S), ER, kurtosis, privileged directions,
    unique concepts in the singular basis, else the neuron one), read from ``results/``; None where not computed."""
    columns: dict[str, dict[str, Any]] = {name: {} for name in config.model_names()}
    for analysis in registry.analyses():
        for model, values in registry.guarded(analysis, "summary", lambda a=analysis: a.summary(results, config),
                                              {}).items():
            if model in columns:
                columns[model].update(values)
    names = ("acc_id", "acc_shift", "er", "kurtosis", "privileged", "unique_concepts")
    return [{"model": model, **{name: values.get(name) for name in names},
             **{name: value for name, value in values.items() if name not in names}}
            for model, values in columns.items()]
