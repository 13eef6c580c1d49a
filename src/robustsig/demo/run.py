"""``robustsig demo``: the whole study on the embedded demo, offline, on the CPU, in a few minutes.

The run, each stage cached so that a rerun takes seconds:

1. the demo data (:func:`~robustsig.demo.build.build_demo_data`) in ``OUT/data/``;
2. the finetuned MobileNetV2 (:func:`~robustsig.demo.finetune.finetune_demo_model`) in ``OUT/finetune/``;
3. the study config (:func:`~robustsig.demo.config.demo_config`) written as ``OUT/study.yaml``, a file to read, edit
   and rerun with ``robustsig study run OUT/study.yaml``;
4. the study (:func:`~robustsig.runner.run_study`): stores in ``OUT/store/``, tables in ``OUT/results/``, the
   report in ``OUT/report/report.html``.

>>> run = run_demo("robustsig-demo")          # doctest: +SKIP
>>> run.ok, run.summary.report                # doctest: +SKIP
(True, PosixPath('robustsig-demo/report/report.html'))
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from robustsig.demo.build import SIZES, TRAIN_SET, DemoData, DemoSize, build_demo_data
from robustsig.demo.config import POOL_NOTE, demo_config
from robustsig.demo.finetune import DemoFinetune, finetune_demo_model
from robustsig.demo.provenance import NO_CLAIMS
from robustsig.demo.shifts import SHIFTS
from robustsig.demo.sources import DEMO_CLASSES
from robustsig.errors import InputError
from robustsig._atomic import write_text_atomic
from robustsig.runner import RunSummary, run_study

MARK = "demo.json"
"""Written in the output folder: marks it as the demo's (a folder holding other files is refused) and records the
last run's stages and timings."""
STUDY_FILE = "study.yaml"
_HEADER = """\
# The study `robustsig demo` ran: the embedded demo's model pool on its data (see data/provenance.md).
# Edit it and rerun it with `robustsig study run {path}`: only what an edit changes is recomputed.
# `robustsig demo` writes this file again on every run (keep your edits under another name).
"""


@dataclass
class DemoRun:
    """What a demo run did.

    Attributes:
        out_dir: the demo's folder.
        data: the demo data (``data.reused``: built before).
        finetune: the finetuned model (``finetune.reused``: trained before).
        study_file: the study config written and run.
        summary: the study run's :class:`~robustsig.runner.RunSummary`.
        timings: seconds per stage: ``data``, ``finetune``, ``extract`` (the study's extraction steps),
            ``analyses`` (its other steps), ``report`` (the rest of the study run), ``total``.
    """

    out_dir: Path
    data: DemoData
    finetune: DemoFinetune
    study_file: Path
    summary: RunSummary
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether every study step finished and the report was built."""
        return self.summary.ok

    def statement(self) -> str:
        """What data the demo ran on, in plain words (no ImageNet claims)."""
        return data_statement(self.data)

    def to_dict(self) -> dict[str, Any]:
        """JSON data (``--json``)."""
        return {"ok": self.ok, "out_dir": str(self.out_dir), "study_file": str(self.study_file),
                "report": str(self.summary.report) if self.summary.report else None,
                "data": {"root": str(self.data.root), "counts": self.data.counts, "reused": self.data.reused,
                         "statement": self.statement()},
                "finetune": {"model": str(self.finetune.model_path), "spec": self.finetune.spec,
                             "reused": self.finetune.reused, "recipe": self.finetune.recipe.to_dict(),
                             **self.finetune.result.summary()},
                "timings": {key: round(value, 2) for key, value in self.timings.items()},
                "study": self.summary.to_dict()}


def data_statement(data: DemoData) -> str:
    """The demo data in one paragraph: what it is cut from, the sets and their sizes, what its numbers mean."""
    counts = data.counts
    shifts = ", ".join(f"{shift.name} (like {shift.like})" for shift in SHIFTS)
    classes = ", ".join(c.name for c in DEMO_CLASSES)
    return (f"Data: a few real photos that ship inside Python packages (scikit-image, scikit-learn, "
            f"conformal-clip-data), cut by seeded crops into {counts['photos']} in-distribution images of "
            f"{len(DEMO_CLASSES)} classes ({classes}), scored on the models' ImageNet-1k heads through a class map; "
            f"{len(SHIFTS)} shifted sets of {counts[SHIFTS[0].name]} images made by image processing ({shifts}); "
            f"{counts[TRAIN_SET]} other crops to finetune MobileNetV2 on; and {counts['concepts']} concept images "
            f"in the Broden format. {NO_CLAIMS}")


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (not (out / MARK).is_file() and any(out.iterdir()))):
        raise InputError(f"{out} exists and is not a robustsig demo folder (no {MARK}); give a new or empty folder "
                         "with --out, the demo never writes into other folders")


def _mark(out: Path, record: dict[str, Any]) -> None:
    write_text_atomic(out / MARK, json.dumps({"robustsig_demo": 1, **record}, indent=1) + "\n")


def run_demo(out_dir: str | os.PathLike = "robustsig-demo", *, size: str | DemoSize = "default",
             device: str = "cpu", progress: bool = True) -> DemoRun:
    """Build the demo data, finetune MobileNetV2, write ``OUT/study.yaml`` and run it (each stage reused when done).

    Args:
        out_dir: the demo's folder; absent, empty, or written by an earlier demo run.
        size: ``default`` (the demo: about 3 minutes on 2 CPU cores), ``small`` or ``tiny`` (tests), or a
            :class:`~robustsig.demo.build.DemoSize`.
        device: where the finetune and the extractions run (``cpu``, ``cuda``...).
        progress: progress bars and the study's log lines on stderr.

    Returns:
        The :class:`DemoRun`; ``run.ok`` is False when a study step failed.

    Raises:
        InputError: ``out_dir`` holds other files, or an unknown size.
        DataError: a package holding the demo's images or weights is missing (the message names it).
    """
    if isinstance(size, str) and size not in SIZES:
        raise InputError(f"unknown demo size {size!r}; expected one of {', '.join(SIZES)}")
    out = Path(out_dir).expanduser().absolute()
    _check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    size_name = size if isinstance(size, str) else "custom"
    _mark(out, {"size": size_name, "device": device, "finished": False})
    timings: dict[str, float] = {}
    begin = time.perf_counter()
    data = build_demo_data(out / "data", size=size)
    timings["data"] = time.perf_counter() - begin
    started = time.perf_counter()
    finetune = finetune_demo_model(data, out / "finetune", device=device)
    timings["finetune"] = time.perf_counter() - started
    study_file = out / STUDY_FILE
    config = demo_config(data, out, finetuned=finetune.model_path, device=device,
                         description=f"{data_statement(data)}\n\n{POOL_NOTE}")
    write_text_atomic(study_file, _HEADER.format(path=study_file)
                      + yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=110))
    summary = run_study(study_file, device=device, progress=progress)
    steps = {"extract": 0.0, "analyses": 0.0}
    for step in summary.steps:
        steps["extract" if step.tag == "extract" else "analyses"] += step.seconds
    timings.update(steps, report=max(summary.seconds - sum(steps.values()), 0.0))
    timings["total"] = time.perf_counter() - begin
    run = DemoRun(out, data, finetune, study_file, summary, timings)
    _mark(out, {"size": size_name, "device": device, "finished": True, "ok": run.ok,
                "timings": {key: round(value, 2) for key, value in timings.items()},
                "report": str(summary.report) if summary.report else None})
    return run
