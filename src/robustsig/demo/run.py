"""``robustsig demo``: the whole study on the embedded demo, offline, on the CPU, in a few minutes.

The run, each stage cached so that a rerun takes seconds:

1. the demo data (:func:`~robustsig.demo.build.build_demo_data`) in ``OUT/data/``;
2. the finetuned models (:func:`~robustsig.demo.finetune.finetune_demo_model`) in ``OUT/finetune/BASE/``;
3. the Wise-FT checkpoints between each pair (:func:`~robustsig.demo.interpolations.wiseft_checkpoints`) in
   ``OUT/wiseft/``;
4. the study config (:func:`~robustsig.demo.config.demo_config`) written as ``OUT/study.yaml``, a file to read, edit
   and rerun with ``robustsig study run OUT/study.yaml``;
5. the study (:func:`~robustsig.runner.run_study`): stores in ``OUT/store/``, tables in ``OUT/results/``, the
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
from robustsig.demo.config import POOLS, PRETRAINED, DemoPool, demo_config
from robustsig.demo.finetune import DemoFinetune, finetune_demo_model
from robustsig.demo.interpolations import wiseft_checkpoints
from robustsig.demo.provenance import NO_CLAIMS
from robustsig.demo.shifts import SHIFTS
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


def pool_note(pool: DemoPool) -> str:
    """The pool's layout in words (the demo's report shows it under the data statement)."""
    names = lambda keys: ", ".join(PRETRAINED[key].backbone for key in keys)  # noqa: E731
    return (f"Pool: the zero-shot column holds {len(pool.pretrained)} real ImageNet-1k models "
            f"({names(pool.pretrained)}; weights from packages) applied to the photos without training on a demo "
            "image, and, on its own random-init row, an untrained MobileNetV2 as a control. The finetuned column holds "
            f"{names(pool.finetuned)} finetuned by robustsig's training loop on packaged photos of six other scenes "
            "(never a test photo), and the Wise-FT models between each pair (alpha "
            f"{', '.join(f'{a:g}' for a in pool.alphas)}), saved as checkpoints and listed as pool models, each on a "
            "row of its own. A model, its finetuned copy and the Wise-FT models between them share weights: "
            "predict_er leaves such a group out as a whole. No model is trained from scratch on the demo's "
            "classes, so the supervised column is empty.")


@dataclass
class DemoRun:
    """What a demo run did.

    Attributes:
        out_dir: the demo's folder.
        data: the demo data (``data.reused``: built before).
        finetunes: base model name -> its finetuned model (``reused``: trained before).
        study_file: the study config written and run.
        summary: the study run's :class:`~robustsig.runner.RunSummary`.
        timings: seconds per stage: ``data``, ``finetune``, ``wiseft`` (the checkpoints), ``extract`` (the
            study's extraction steps), ``analyses`` (its other steps), ``report`` (the rest of the study run),
            ``total``; and ``cpu_*``: the CPU seconds of this process (all its threads) in ``data``, ``finetune``,
            ``wiseft``, ``study`` and ``total``.
    """

    out_dir: Path
    data: DemoData
    finetunes: dict[str, DemoFinetune]
    study_file: Path
    summary: RunSummary
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether every study step finished and the report was built."""
        return self.summary.ok

    def statement(self) -> str:
        """What data the demo ran on, in plain words."""
        return data_statement(self.data)

    def to_dict(self) -> dict[str, Any]:
        """JSON data (``--json``)."""
        return {"ok": self.ok, "out_dir": str(self.out_dir), "study_file": str(self.study_file),
                "report": str(self.summary.report) if self.summary.report else None,
                "data": {"root": str(self.data.root), "counts": self.data.counts, "reused": self.data.reused,
                         "statement": self.statement()},
                "finetunes": {name: {"model": str(ft.model_path), "spec": ft.spec, "reused": ft.reused,
                                     "recipe": ft.recipe.to_dict(), **ft.result.summary()}
                              for name, ft in self.finetunes.items()},
                "timings": {key: round(value, 2) for key, value in self.timings.items()},
                "study": self.summary.to_dict()}


def data_statement(data: DemoData) -> str:
    """The demo data in one paragraph: what it is, the sets and their sizes, what its numbers mean."""
    counts = data.counts
    shifts = [shift for shift in SHIFTS if shift.name in counts]
    described = ", ".join(f"{shift.name} ({shift.like})" for shift in shifts)
    photos = data.provenance["photos"]
    return (f"Data: {len(photos)} real ImageNet validation photos with their true labels (foolbox's samples), in "
            f"{counts['photos']} views, as the in-distribution set, scored top-1 over the 1,000 ImageNet classes; "
            f"{len(shifts)} shifted sets of {counts[shifts[0].name]} views of the same photos ({described}); "
            f"{counts[TRAIN_SET]} crops of other packaged photos to finetune on; and {counts['concepts']} real "
            f"labelled photos (CIFAR-10, CIFAR-100, ImageNet, packaged) as a concept set in the Broden format, "
            f"with semantic concepts. {NO_CLAIMS}")


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (not (out / MARK).is_file() and any(out.iterdir()))):
        raise InputError(f"{out} exists and is not a robustsig demo folder (no {MARK}); give a new or empty folder "
                         "with --out, the demo never writes into other folders")


def _mark(out: Path, record: dict[str, Any]) -> None:
    write_text_atomic(out / MARK, json.dumps({"robustsig_demo": 1, **record}, indent=1) + "\n")


class _Clock:
    """Wall and CPU seconds of each stage."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        self._begin = self._wall, self._cpu

    def stage(self, name: str) -> None:
        """Close the stage ``name``: the time since the last stage."""
        wall, cpu = time.perf_counter(), time.process_time()
        self.timings[name] = wall - self._wall
        self.timings[f"cpu_{name}"] = cpu - self._cpu
        self._wall, self._cpu = wall, cpu

    def total(self) -> None:
        self.timings["total"] = time.perf_counter() - self._begin[0]
        self.timings["cpu_total"] = time.process_time() - self._begin[1]


def run_demo(out_dir: str | os.PathLike = "robustsig-demo", *, size: str | DemoSize = "default",
             device: str = "cpu", progress: bool = True) -> DemoRun:
    """Build the demo data, finetune the models, write their Wise-FT checkpoints and ``OUT/study.yaml``, and run it
    (each stage reused when done).

    Args:
        out_dir: the demo's folder; absent, empty, or written by an earlier demo run.
        size: ``default`` (the demo), ``small`` or ``tiny`` (tests: fewer images and a 5-model pool, the same code
            path), or a :class:`~robustsig.demo.build.DemoSize` (with the default pool).
        device: where the finetunes and the extractions run (``cpu``, ``cuda``...).
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
    pool: DemoPool = POOLS.get(size_name, POOLS["default"])
    _mark(out, {"size": size_name, "device": device, "finished": False})
    clock = _Clock()
    data = build_demo_data(out / "data", size=size)
    clock.stage("data")
    finetunes = {base: finetune_demo_model(data, out / "finetune" / base, base=PRETRAINED[base].spec, device=device)
                 for base in pool.finetuned}
    clock.stage("finetune")
    interpolated = {(base, alpha): path for base in pool.finetuned
                    for alpha, path in wiseft_checkpoints(PRETRAINED[base].spec, finetunes[base].model_path,
                                                          pool.alphas, out / "wiseft", name=base).items()}
    clock.stage("wiseft")
    study_file = out / STUDY_FILE
    config = demo_config(data, out, pool=pool, finetuned={base: ft.model_path for base, ft in finetunes.items()},
                         interpolated=interpolated, device=device,
                         description=f"{data_statement(data)}\n\n{pool_note(pool)}")
    write_text_atomic(study_file, _HEADER.format(path=study_file)
                      + yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=110))
    summary = run_study(study_file, device=device, progress=progress)
    clock.stage("study")
    clock.total()
    steps = {"extract": 0.0, "analyses": 0.0}
    for step in summary.steps:
        steps["extract" if step.tag == "extract" else "analyses"] += step.seconds
    timings = {**clock.timings, **steps, "report": max(clock.timings["study"] - sum(steps.values()), 0.0)}
    run = DemoRun(out, data, finetunes, study_file, summary, timings)
    _mark(out, {"size": size_name, "device": device, "finished": True, "ok": run.ok,
                "timings": {key: round(value, 2) for key, value in timings.items()},
                "report": str(summary.report) if summary.report else None})
    return run
