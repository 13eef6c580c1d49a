"""Accuracy on every evaluation set and effective robustness (eq. 1): ``accuracy.csv``, ``robustness.csv``.

Accuracy is the top-1 accuracy of the stored logits with each dataset's own scoring rule (ImageNet-R/-A on their
200 classes, ObjectNet through its class map); ``num_samples`` counts the images scored and the provenance the
images skipped as undecodable. ACC(S) is the mean over the study's shift sets and ER is measured from the study's
baseline line (the paper's, the config's, or refit from ``baseline.fit_csv``). ER is undefined when ACC(I) is 0 or
1 (its logit is infinite): the model then has no ``robustness.csv`` row and the log says why.

What S is, recorded with the results (provenance of ``accuracy.csv`` and ``robustness.csv``; the report shows it next
to the table): ``shift_sets`` (name -> kind), ``paper_shift_sets`` (whether they are the paper's five kinds:
ImageNet-V2, -R, -Sketch, ObjectNet, -A; when not, ER still computes, averaged over the study's own sets), and
``missing_classes`` (dataset -> the class folders a set opened with ``allow_missing_classes`` lacks).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from robustsig.metrics.robustness import SHIFT_SETS
from robustsig.study.analyses._streams import store_accuracy
from robustsig.study.baseline import BaselineLine
from robustsig.study.config import ModelEntry, StudyConfig
from robustsig.study.plan import Planner
from robustsig.study.results import AccuracyRow, RobustnessRow
from robustsig.study.subjects import Subject, model_subject
from robustsig.study.tasks import AnalysisTask, RunContext, has_rows


def shift_robustness(acc_id: float, shift_accuracies: Mapping[str, float], baseline: BaselineLine
                     ) -> tuple[float | None, float | None]:
    """``(ACC(S), ER)`` from the in-distribution accuracy and the accuracy on each shift set; ACC(S) is None
    without shift sets, ER is None without them or when ACC(I) is 0 or 1."""
    from robustsig.metrics.robustness import effective_robustness, mean_shift_accuracy

    if not shift_accuracies:
        return None, None
    acc_shift = float(mean_shift_accuracy(shift_accuracies, sets=list(shift_accuracies)))
    if not 0.0 < acc_id < 1.0:
        return acc_shift, None
    return acc_shift, float(effective_robustness(acc_id, acc_shift, baseline.b1, baseline.b0))


def subject_accuracies(ctx: RunContext, subject: Subject, datasets: Sequence[str]) -> dict[str, float]:
    """Accuracy of ``subject`` on each dataset, from its stores."""
    return {name: store_accuracy(ctx.store(subject, name).store, ctx.dataset(name)) for name in datasets}


def shift_set_record(ctx: RunContext, shifts: Sequence[str], datasets: Sequence[str]) -> dict[str, Any]:
    """What ACC(S) averages over, and the classes any set was scored without (see the module notes)."""
    kinds = {name: ctx.config.dataset(name).kind for name in shifts}
    missing = {name: list(getattr(ctx.dataset(name), "missing_classes", None) or []) for name in datasets}
    return {"shift_sets": kinds, "paper_shift_sets": sorted(kinds.values()) == sorted(SHIFT_SETS),
            "missing_classes": {name: classes for name, classes in missing.items() if classes}}


def describe_robustness(acc_id: float, acc_shift: float | None, er: float | None) -> str:
    text = f"ACC(I) {100 * acc_id:.2f}%"
    if acc_shift is not None:
        text += f", ACC(S) {100 * acc_shift:.2f}%"
        text += (f", ER {100 * er:+.2f} points" if er is not None else
                 f", ER undefined (ACC(I) is {acc_id:g}: its logit is infinite)")
    return text


class AccuracyTask(AnalysisTask):
    """Accuracy of one model on the evaluation sets, and its ER."""

    tag = "accuracy"

    def __init__(self, model: str, datasets: Sequence[str], shifts: Sequence[str], needs: tuple[str, ...]) -> None:
        super().__init__(f"accuracy:{model}", model, needs, (model,))
        self.model = model
        self.subject = model_subject(model)
        self.datasets = list(datasets)
        self.shifts = list(shifts)

    def provenance(self, ctx: RunContext) -> dict[str, Any]:
        return {"stores": {name: ctx.store(self.subject, name).provenance for name in self.datasets},
                "shift_sets": self.shifts, "baseline": ctx.baseline.provenance()}

    def present(self, ctx: RunContext) -> bool:
        return has_rows(ctx.results, AccuracyRow, model=self.model)

    def compute(self, ctx: RunContext) -> str:
        with warnings.catch_warnings(record=True) as caught:  # an unmapped folder on an ImageNet head: logged too
            warnings.simplefilter("always", UserWarning)
            accuracies = subject_accuracies(ctx, self.subject, self.datasets)
        for warning in caught:
            ctx.log.line(self.tag, self.label, f"warning: {warning.message}")
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        records = [ctx.store(self.subject, name).record(self.model, name) for name in self.datasets]
        rows = [AccuracyRow(self.model, name, accuracies[name], record.num_samples)
                for name, record in zip(self.datasets, records)]
        ctx.results.replace(AccuracyRow, rows, model=self.model)
        sets = shift_set_record(ctx, self.shifts, self.datasets)
        ctx.results.record(AccuracyRow, records, {"missing_classes": sets["missing_classes"]})
        acc_id = accuracies[self.datasets[0]]
        acc_shift, er = shift_robustness(acc_id, {name: accuracies[name] for name in self.shifts}, ctx.baseline)
        if self.shifts:
            line = ctx.baseline
            robustness = [] if er is None else [RobustnessRow(self.model, acc_id, acc_shift, er, line.b1, line.b0)]
            ctx.results.replace(RobustnessRow, robustness, model=self.model)
            ctx.results.record(RobustnessRow, records, {**line.provenance(), **sets})
        return describe_robustness(acc_id, acc_shift, er)


def plan(planner: Planner, config: StudyConfig, entry: ModelEntry) -> None:
    """The accuracy step of ``entry`` and the extractions it needs (every evaluation set)."""
    subject = model_subject(entry.name)
    datasets = [dataset.name for dataset in config.datasets.evaluation()]
    needs = tuple(planner.store(subject, name) for name in datasets)
    planner.add(AccuracyTask(entry.name, datasets, [dataset.name for dataset in config.datasets.shift], needs))
