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

The report draws the paper's Fig. 1: the pool on the ER plane, in front of the baseline models the paper's line was
fitted on (:func:`testbed_baseline`: the ImageNet testbed's models trained on ImageNet alone, shipped in
``robustsig/resources/imagenet_testbed.csv`` with its provenance in that folder's README), with the study's line.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, ClassVar

from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

from robustsig.errors import InputError
from robustsig.metrics.robustness import SHIFT_SETS, fit_baseline, mean_shift_accuracy
from robustsig.report.figures import MARKERS
from robustsig.report.tables import ReportTable, percent, pool_table, signed_percent
from robustsig.study.streams import store_accuracy
from robustsig.study.analysis import (Analysis, AnalysisOptions, AnalysisTask, ModelEntry, Planner, Results,
                                      RunContext, Subject, column, has_rows, model_subject, result_table)
from robustsig.study.baseline import BaselineLine
from robustsig.study.pool import KIND_COLORS
from robustsig.study.results import ModelRow

if TYPE_CHECKING:
    from robustsig.report.page import Page
    from robustsig.study.config import StudyConfig


class AccuracyOptions(AnalysisOptions):
    """Top-1 accuracy on every evaluation set, and ER (eq. 1) when shift sets are given."""


@result_table
@dataclass(frozen=True)
class AccuracyRow:
    """Top-1 accuracy of a model on a dataset (the dataset's class subset or mapping applied)."""

    TABLE: ClassVar[str] = "accuracy"
    KEY: ClassVar[tuple[str, ...]] = ("model", "dataset")
    model: str = column("model name")
    dataset: str = column("dataset name")
    accuracy: float = column("top-1 accuracy, a fraction in [0, 1]")
    num_samples: int = column("images scored (corrupt images skipped)")


@result_table
@dataclass(frozen=True)
class RobustnessRow:
    """Effective robustness (eq. 1) of a model."""

    TABLE: ClassVar[str] = "robustness"
    KEY: ClassVar[tuple[str, ...]] = ("model",)
    model: str = column("model name")
    acc_id: float = column("accuracy on the in-distribution set")
    acc_shift: float = column("mean accuracy over the shift sets")
    er: float = column("acc_shift - sigmoid(b1 logit(acc_id) + b0)")
    b1: float = column("slope of the baseline line (logit space)")
    b0: float = column("intercept of the baseline line (logit space)")


def shift_robustness(acc_id: float, shift_accuracies: Mapping[str, float], baseline: BaselineLine
                     ) -> tuple[float | None, float | None]:
    """``(ACC(S), ER)`` from the in-distribution accuracy and the accuracy on each shift set; ACC(S) is None
    without shift sets, ER is None without them or when ACC(I) is 0 or 1."""
    from robustsig.metrics.robustness import effective_robustness

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


class Accuracy(Analysis):
    """Accuracy on every evaluation set and ER (see the module notes)."""

    name = "accuracy"
    title = "Accuracy and effective robustness"
    Options = AccuracyOptions
    tables = (AccuracyRow, RobustnessRow)
    essential = ("accuracy", "robustness")

    def plan_model(self, planner: Planner, config: StudyConfig, entry: ModelEntry) -> None:
        """The accuracy step of ``entry`` and the extractions it needs (every evaluation set)."""
        subject = model_subject(entry.name)
        datasets = [dataset.name for dataset in config.datasets.evaluation()]
        needs = tuple(planner.store(subject, name) for name in datasets)
        planner.add(AccuracyTask(entry.name, datasets, [dataset.name for dataset in config.datasets.shift], needs))

    def summary(self, results: Results, config: StudyConfig) -> dict[str, dict[str, Any]]:
        """ACC(I), ACC(S) (the mean over every shift set, when the model has them all) and ER."""
        accuracy = {(row.model, row.dataset): row.accuracy for row in _rows(results, AccuracyRow)}
        er = {row.model: row.er for row in _rows(results, RobustnessRow)}
        shifts = [entry.name for entry in config.datasets.shift]
        out = {}
        for name in config.model_names():
            values = [accuracy.get((name, shift)) for shift in shifts]
            acc_shift = (math.fsum(values) / len(shifts) if shifts and all(v is not None for v in values) else None)
            out[name] = {"acc_id": accuracy.get((name, config.datasets.id.name)), "acc_shift": acc_shift,
                         "er": er.get(name)}
        return out

    def report(self, page: Page, models: Sequence[ModelRow]) -> str | None:
        return _report(page, models)


def _rows(results: Results, table: type) -> list:
    return results.read(table) if results.has(table) else []


# --------------------------------------------------------------------------- the baseline models of Fig. 1

TESTBED_FILE = "imagenet_testbed.csv"
BASELINE_TYPES = ("STANDARD", "LOW_ACCURACY_CNN")
"""The testbed's model types trained on ImageNet-1k alone, without a robustness intervention or more data: its
standard models and the ImageNet-trained CNNs of lower accuracy (early checkpoints, subsampled training sets)."""
TESTBED_COLUMNS = {"imagenet": "val", "imagenet-v2": "imagenetv2-matched-frequency-format-val",
                   "imagenet-r": "imagenet-r", "imagenet-sketch": "imagenet-sketch", "objectnet": "objectnet-1.0-beta",
                   "imagenet-a": "imagenet-a"}
"""The testbed's column of ImageNet val and of each of the paper's shift sets (top-1 in percent)."""


@dataclass(frozen=True)
class BaselineModels:
    """Accuracies of baseline models on ImageNet and its shifts.

    Attributes:
        models: the model names.
        acc_id: ACC(I), top-1 on ImageNet val (fractions).
        acc_shift: ACC(S), the mean top-1 over the paper's five shifts (ImageNet-V2 matched frequency, -R and -A on
            their 200 classes, -Sketch, ObjectNet on its 113 classes; fractions).
        source: where the accuracies come from.
    """

    models: tuple[str, ...]
    acc_id: tuple[float, ...]
    acc_shift: tuple[float, ...]
    source: str

    def fit(self) -> tuple[float, float, float]:
        """``(b1, b0, r)`` of the line fitted on these models (:func:`robustsig.fit_baseline`)."""
        return fit_baseline(list(self.acc_id), list(self.acc_shift))


@cache
def testbed_baseline() -> BaselineModels:
    """The baseline models behind the paper's line: the ImageNet testbed's (Taori et al. 2020) models of the types
    :data:`BASELINE_TYPES` with an accuracy on ImageNet val and on all five of the paper's shift sets (197 models).
    ACC(I) is the ``val`` column; ACC(S) the mean of ``imagenetv2-matched-frequency-format-val``, ``imagenet-r``,
    ``imagenet-sketch``, ``objectnet-1.0-beta`` and ``imagenet-a``, which the testbed already scores on each set's
    class subset (R and A: 200 classes; ObjectNet: its 113), as the paper's S is defined. A refit gives b1 = 0.751,
    b0 = -1.597, r = 0.994; the paper's line is b1 = 0.76, b0 = -1.49, r = 0.99."""
    text = resources.files("robustsig").joinpath("resources", TESTBED_FILE).read_text(encoding="utf-8")
    models, acc_id, acc_shift = [], [], []
    for row in csv.DictReader(io.StringIO(text)):
        cells = [row[TESTBED_COLUMNS[name]] for name in ("imagenet", *SHIFT_SETS)]
        if row["model_type"] not in BASELINE_TYPES or not all(cells):
            continue
        models.append(row["model"])
        acc_id.append(float(cells[0]) / 100)
        acc_shift.append(float(mean_shift_accuracy({name: float(cell) / 100 for name, cell in
                                                    zip(SHIFT_SETS, cells[1:])})))
    return BaselineModels(tuple(models), tuple(acc_id), tuple(acc_shift),
                          f"ImageNet testbed (Taori et al. 2020), {', '.join(BASELINE_TYPES)} models")


# --------------------------------------------------------------------------- report

_PERCENT_TICKS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98,
                  0.99, 0.995, 0.998, 0.999)
_MAX_TICKS = 12
"""A logit axis keeps a tick only when it is at least 1/12 of the axis (in logit units) past the last one kept."""
_CLIP = 1e-3


def _clip(p: float) -> float:
    """An accuracy kept inside the drawn logit axes (0 and 1 have no logit)."""
    return min(max(p, _CLIP), 1 - _CLIP)


def _logit(p: float) -> float:
    p = _clip(p)
    return math.log(p / (1 - p))


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))



def _percent_axis(axis, low: float, high: float) -> None:
    ticks: list[float] = []
    spacing = (_logit(high) - _logit(low)) / _MAX_TICKS
    for tick in (tick for tick in _PERCENT_TICKS if low <= tick <= high):
        if not ticks or _logit(tick) - _logit(ticks[-1]) >= spacing:
            ticks.append(tick)
    ticks = ticks or [low, high]
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{100 * value:g}%"))
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def robustness_figure(models: Sequence[ModelRow], robustness: Sequence[RobustnessRow],
                      baseline: BaselineModels | None = None) -> Figure:
    """The paper's Fig. 1: ACC(S) against ACC(I) on logit axes: the baseline models as a grey cloud (default: the
    ImageNet testbed's, :func:`testbed_baseline`), the study's baseline line drawn across them, and the pool (color:
    kind; marker: backbone)."""
    if not robustness:
        raise InputError("robustness_figure needs at least one row of robustness.csv")
    baseline = testbed_baseline() if baseline is None else baseline
    meta = {model.model: model for model in models}
    backbones = list(dict.fromkeys(meta[row.model].backbone if row.model in meta else "?" for row in robustness))
    figure = Figure(figsize=(6.4, 5.2), layout="constrained")
    ax = figure.subplots()
    ax.set_xscale("logit")
    ax.set_yscale("logit")
    values = [_clip(v) for row in robustness for v in (row.acc_id, row.acc_shift)]
    values += [_clip(v) for v in (*baseline.acc_id, *baseline.acc_shift)]
    low = _sigmoid(_logit(min(values)) - 0.4)
    high = _sigmoid(_logit(max(values)) + 0.4)
    if baseline.models:
        ax.scatter([_clip(v) for v in baseline.acc_id], [_clip(v) for v in baseline.acc_shift], color="0.72", s=10,
                   linewidth=0, zorder=1, label=f"baseline models ({len(baseline.models)}, trained on ImageNet)")
    b1, b0 = robustness[0].b1, robustness[0].b0
    xs = [_sigmoid(_logit(low) + (_logit(high) - _logit(low)) * i / 100) for i in range(101)]
    ax.plot(xs, [_sigmoid(b1 * _logit(x) + b0) for x in xs], color="black", linewidth=1.2, zorder=2,
            label=f"baseline: logit(y) = {b1:.3g} logit(x) {'+' if b0 >= 0 else '-'} {abs(b0):.3g}")
    ax.plot(xs, xs, color="grey", linewidth=0.8, linestyle=":", label="y = x")
    seen: set[tuple[str, str]] = set()
    for row in robustness:
        model = meta.get(row.model)
        kind = model.kind if model else "?"
        backbone = model.backbone if model else "?"
        label = f"{kind}, {backbone}" if (kind, backbone) not in seen else None
        seen.add((kind, backbone))
        ax.scatter([_clip(row.acc_id)], [_clip(row.acc_shift)],
                   color=KIND_COLORS.get(kind, "#7f7f7f"), marker=MARKERS[backbones.index(backbone) % len(MARKERS)],
                   s=40, edgecolor="black", linewidth=0.4, zorder=3, label=label)
    ax.set_xlim(low, high)
    ax.set_ylim(min(low, _sigmoid(b1 * _logit(low) + b0)), high)
    _percent_axis(ax.xaxis, *ax.get_xlim())
    _percent_axis(ax.yaxis, *ax.get_ylim())
    ax.set_xlabel("ACC(I): in-distribution accuracy (logit scale)")
    ax.set_ylabel("ACC(S): mean shift accuracy (logit scale)")
    ax.grid(True, linewidth=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return figure


def robustness_caption(robustness: Sequence[RobustnessRow], baseline: BaselineModels, paper_shifts: bool) -> str:
    """The caption of Fig. 1: what the cloud and the line are, and the line refitted on the cloud."""
    b1, b0, r = baseline.fit()
    text = (f"Fig. 1: ACC(I) vs ACC(S) on logit axes. Grey: {len(baseline.models)} baseline models, "
            f"{baseline.source} (trained on ImageNet alone), on ImageNet val and the paper's five shifts; refitted on "
            f"them, the line is b1 = {b1:.3f}, b0 = {b0:.3f} (r = {r:.3f}), the paper's b1 = 0.76, b0 = -1.49. Black: "
            f"the study's line (b1 = {robustness[0].b1:.3g}, b0 = {robustness[0].b0:.3g}); a model above it is "
            "effectively robust.")
    if not paper_shifts:
        text += (" The pool's ACC(S) averages the study's own shift sets, not the paper's five: its points are not "
                 "comparable with the grey ones.")
    return text


UNDEFINED_ER = "undefined"
"""The ER cell of a model whose ACC(I) is 0 or 1: eq. 1 takes its logit, which is infinite."""


def accuracy_table(models: Sequence[ModelRow], robustness: Sequence[RobustnessRow], *,
                   id_accuracy: Mapping[str, float] | None = None, shift_note: str = "") -> ReportTable:
    """The paper's Tables 4 (ACC) and 1 (ER) side by side: in-distribution accuracy and effective robustness of
    every model; a model of ``id_accuracy`` (model -> ACC(I)) without a robustness row (its ACC(I) is 0 or 1, such
    as a random-init control's) is shown with its accuracy and ER undefined. ``shift_note`` (what ACC(S) averages
    over, see :func:`shift_sets_note`) is added to the caption."""
    values = {model: (percent(accuracy), UNDEFINED_ER) for model, accuracy in (id_accuracy or {}).items()}
    values.update({row.model: (percent(row.acc_id), signed_percent(row.er)) for row in robustness})
    line = f"b1 = {robustness[0].b1:.3g}, b0 = {robustness[0].b0:.3g}" if robustness else ""
    undefined = (f" ER {UNDEFINED_ER}: ACC(I) is 0 or 1, where eq. 1's logit is infinite."
                 if any(cells[1] == UNDEFINED_ER for cells in values.values()) else "")
    return pool_table("accuracy", "Accuracy (Table 4) and effective robustness (Table 1)", models, values,
                      ("ACC (%)", "ER (%)"),
                      caption="ACC: top-1 accuracy on the in-distribution set (the paper's Table 4: ImageNet val); "
                              "ER: mean shift accuracy minus the baseline line's prediction (eq. 1, "
                              f"{line}), in percent (the paper's Table 1)." + undefined
                              + (f" {shift_note}" if shift_note else ""),
                      sources=("robustness",))


def shift_sets_note(parameters: Mapping[str, object]) -> str:
    """What ACC(S) averaged over (from the provenance of ``robustness.csv``): the sets and their kinds, whether
    they are the paper's five, and the classes any set was scored without (``allow_missing_classes``)."""
    sets = parameters.get("shift_sets")
    if not isinstance(sets, Mapping) or not sets:
        return ""
    listed = ", ".join(f"{name} ({kind})" for name, kind in sets.items())
    text = f"ACC(S) is the mean over {len(sets)} shift set(s): {listed}"
    text += (", the paper's five kinds." if parameters.get("paper_shift_sets") else
             "; these are not the paper's five shift sets (ImageNet-V2, -R, -Sketch, ObjectNet, -A), so ER is not "
             "comparable with the paper's numbers.")
    missing = parameters.get("missing_classes")
    if isinstance(missing, Mapping) and missing:
        text += " Scored without some of their class folders (allow_missing_classes): " + "; ".join(
            f"{name}, {len(classes)} missing ({', '.join(map(str, list(classes)[:10]))}"
            f"{', ...' if len(classes) > 10 else ''})" for name, classes in missing.items()) + "."
    return text


def dataset_accuracy_table(accuracy: Sequence[AccuracyRow], datasets: Sequence[str]) -> ReportTable:
    """Accuracy of every model on every dataset (one row per model)."""
    by_model: dict[str, dict[str, float]] = {}
    for row in accuracy:
        by_model.setdefault(row.model, {})[row.dataset] = row.accuracy
    rows = tuple((model, *(percent(scores.get(name)) for name in datasets)) for model, scores in by_model.items())
    return ReportTable("accuracy_by_dataset", "Accuracy per dataset", ("Model",), (("", tuple(datasets)),), rows,
                       "Top-1 accuracy (%) with each dataset's class subset or mapping applied.", ("accuracy",))


def _report(page: Page, models: Sequence[ModelRow]) -> str | None:
    accuracy, robustness = page.read(AccuracyRow), page.read(RobustnessRow)
    if not accuracy and not robustness:
        return None
    text = ""
    parameters = page.parameters("robustness")
    note = shift_sets_note(parameters)
    if note and (not parameters.get("paper_shift_sets") or parameters.get("missing_classes")):
        text += page.note(note)  # a study that departs from the paper's S says so first
    id_set = page.id_dataset(accuracy)
    id_accuracy = {row.model: row.accuracy for row in accuracy if row.dataset == id_set}
    if robustness or (note and id_accuracy):  # a model with ER undefined is shown too (the random control)
        text += page.table(accuracy_table(models, robustness, id_accuracy=id_accuracy, shift_note=note))
    if robustness:
        text += page.figure(lambda: robustness_figure(models, robustness), "fig1_robustness",
                            robustness_caption(robustness, testbed_baseline(),
                                               bool(parameters.get("paper_shift_sets"))), ["robustness"])
    elif note:
        text += page.note("No model has an effective robustness: eq. 1 is undefined where ACC(I) is 0 or 1 (its "
                          "logit is infinite), and that holds for every model here.")
    else:
        text += page.note("No results/robustness.csv: effective robustness needs shift sets, and the study had "
                          "none.")
    if accuracy:
        names = list(dict.fromkeys(row.dataset for row in accuracy))
        text += page.table(dataset_accuracy_table(accuracy, names))
    return text
