"""Wise-FT sweeps (App. G): for each pair and alpha, the model ``(1 - alpha) theta_zero_shot + alpha
theta_finetuned`` (:func:`robustsig.interpolate`) is extracted like a pool model, and its accuracy, ER, kurtosis
and unique concepts are computed from its stores.

Tables:

- ``wiseft.csv``: one row per pair and alpha: ACC(I), ACC(S), ER, the activation kurtosis on the id set (what the
  ER tracking of ``predict_er`` reads) and the unique concepts on Broden.
- ``wiseft_signatures.csv``: one row per pair, alpha and evaluation set: the activation kurtosis (eq. 2) of the
  point's ``h`` on the id set and on each shift set, as App. G computes it ("for both ImageNet tests and ImageNet
  shifts", Figs. 15-16). A long table (a ``dataset`` column) rather than a column per set: the sets are the
  study's own, and ``wiseft.csv`` stays one readable row per point.

Each sweep point has its own stores (``STORE_DIR/PAIR@alpha=A/DATASET``), reused by later runs; alpha 0 and 1 are
the pool models themselves, whose stores are shared. A point needs the id set (accuracy, kurtosis), the shift sets
(ACC(S), ER and their kurtosis, when the study has shift sets) and Broden (unique concepts in the singular basis,
when ``concepts`` is on; the AP matrix is saved like a model's, and the threshold is the concepts analysis's).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from pydantic import AfterValidator, Field, model_validator

from robustsig.errors import InputError
from robustsig.metrics.concepts import concept_summary
from robustsig.report.figures import grid, in_order
from robustsig.report.tables import ReportTable, decimal, integer, percent, signed_percent
from robustsig.study.streams import store_kurtosis
from robustsig.study.analyses.accuracy import shift_robustness, subject_accuracies
from robustsig.study.analyses.concepts.ap import ap_task, load_ap
from robustsig.study.analyses.concepts.options import options_of as concepts_options
from robustsig.study.analysis import (Analysis, AnalysisOptions, AnalysisTask, Planner, RunContext, Section, Subject,
                                      column, has_rows, result_table, unknown_models)
from robustsig.study.results import ModelRow
from robustsig.study.sections import Name, interpolation_weights
from robustsig.study.subjects import wiseft_subject

if TYPE_CHECKING:
    from robustsig.report.page import Page
    from robustsig.study.config import StudyConfig


class WiseFtPair(Section):
    name: Name = Field(description="the pair's name in wiseft.csv (defaults to the zero-shot model's)")
    zero_shot: str = Field(description="the model at alpha = 0")
    finetuned: str = Field(description="the model at alpha = 1")

    @model_validator(mode="before")
    @classmethod
    def _name_from_zero_shot(cls, data: Any) -> Any:
        if isinstance(data, dict) and "name" not in data and isinstance(data.get("zero_shot"), str):
            data = {**data, "name": data["zero_shot"]}
        return data


class WiseFtOptions(AnalysisOptions):
    """Wise-FT sweeps: ACC, ER, kurtosis and unique concepts of (1 - alpha) theta0 + alpha theta1."""

    pairs: list[WiseFtPair] = Field(min_length=1, description="a list of {zero_shot, finetuned}")
    alphas: Annotated[list[float], AfterValidator(interpolation_weights)] = Field(
        default_factory=lambda: [round(0.1 * i, 1) for i in range(11)], min_length=1,
        description="interpolation weights in [0, 1]")
    kurtosis: bool = True
    concepts: bool = Field(default=True, description="unique concepts per alpha (needs datasets.broden)")


@result_table
@dataclass(frozen=True)
class WiseFtRow:
    """One point of a Wise-FT sweep (weights (1 - alpha) theta_zero_shot + alpha theta_finetuned)."""

    TABLE: ClassVar[str] = "wiseft"
    KEY: ClassVar[tuple[str, ...]] = ("pair", "alpha")
    pair: str = column("Wise-FT pair name")
    alpha: float = column("interpolation weight: 0 = zero-shot, 1 = finetuned")
    acc_id: float = column("accuracy on the in-distribution set")
    acc_shift: float | None = column("mean accuracy over the shift sets")
    er: float | None = column("effective robustness")
    kurtosis: float | None = column("activation kurtosis on the id set (every set: wiseft_signatures.csv)")
    unique_concepts: int | None = column("unique concepts (singular basis, Broden; the concepts analysis's threshold and "
                                         "orientation, see provenance)")


@result_table
@dataclass(frozen=True)
class WiseFtSignatureRow:
    """The activation kurtosis of one Wise-FT point on one evaluation set (App. G, Figs. 15-16)."""

    TABLE: ClassVar[str] = "wiseft_signatures"
    KEY: ClassVar[tuple[str, ...]] = ("pair", "alpha", "dataset")
    pair: str = column("Wise-FT pair name")
    alpha: float = column("interpolation weight: 0 = zero-shot, 1 = finetuned")
    dataset: str = column("the evaluation set: the id set, then each shift set")
    kurtosis: float = column("activation kurtosis (eq. 2) of h on that set")
    num_samples: int = column("activation vectors averaged")


BASIS = "singular"


class WiseFtTask(AnalysisTask):
    """The sweep of one pair."""

    tag = "wiseft"

    def __init__(self, pair: WiseFtPair, options: WiseFtOptions, datasets: list[str], shifts: list[str],
                 threshold: float | None, orientation: str | None, ap_tasks: dict[float, str],
                 needs: tuple[str, ...]) -> None:
        super().__init__(f"wiseft:{pair.name}", f"{pair.name} ({pair.zero_shot} -> {pair.finetuned})", needs,
                         (pair.zero_shot, pair.finetuned))
        self.pair = pair
        self.options = options
        self.datasets = datasets
        self.shifts = shifts
        self.threshold = threshold
        self.orientation = orientation
        self.ap_tasks = ap_tasks

    def _points(self) -> list[tuple[float, Subject]]:
        return [(float(alpha), wiseft_subject(self.pair, alpha)) for alpha in self.options.alphas]

    def provenance(self, ctx: RunContext) -> dict[str, Any]:
        return {"points": {repr(alpha): {"stores": {name: ctx.store(subject, name).provenance
                                                    for name in self.datasets},
                                         "ap": ctx.ledger.digest(self.ap_tasks[alpha]) if self.ap_tasks else None}
                           for alpha, subject in self._points()},
                "kurtosis": self.options.kurtosis, "threshold": self.threshold, "orientation": self.orientation,
                "shift_sets": self.shifts,
                "baseline": ctx.baseline.provenance() if self.shifts else None}

    def present(self, ctx: RunContext) -> bool:
        return has_rows(ctx.results, WiseFtRow, pair=self.pair.name) and (
            not self.options.kurtosis or has_rows(ctx.results, WiseFtSignatureRow, pair=self.pair.name))

    def compute(self, ctx: RunContext) -> str:
        id_name = self.datasets[0]
        rows, signatures = [], []
        for alpha, subject in self._points():
            accuracies = subject_accuracies(ctx, subject, [id_name, *self.shifts])
            acc_id = accuracies[id_name]
            acc_shift, er = shift_robustness(acc_id, {name: accuracies[name] for name in self.shifts}, ctx.baseline)
            stores = [ctx.store(subject, name).store for name in self.datasets] if self.options.kurtosis else []
            point = [WiseFtSignatureRow(self.pair.name, alpha, name, store_kurtosis(store).compute(), store.num_rows)
                     for name, store in zip(self.datasets, stores)]  # the id set, then each shift set (App. G)
            signatures += point
            kurtosis = point[0].kurtosis if point else None
            unique = None
            if self.ap_tasks:
                ap, names, _ = load_ap(ctx.results.root, subject.name, BASIS, self.orientation)
                unique = concept_summary(ap, self.threshold, names).unique_concepts
            rows.append(WiseFtRow(self.pair.name, alpha, acc_id, acc_shift, er, kurtosis, unique))
        inputs = [ctx.store(subject, name).record(subject.name, name)
                  for _, subject in self._points() for name in self.datasets]
        ctx.results.replace(WiseFtRow, rows, pair=self.pair.name)
        ctx.results.record(WiseFtRow, inputs, {"alphas": self.options.alphas, "threshold": self.threshold,
                                               "orientation": self.orientation,
                                               "kurtosis_dataset": id_name,
                                               **(ctx.baseline.provenance() if self.shifts else {})})
        ctx.results.replace(WiseFtSignatureRow, signatures, pair=self.pair.name)
        ctx.results.record(WiseFtSignatureRow, inputs, {"alphas": self.options.alphas, "datasets": self.datasets})
        ends = (rows[0], rows[-1]) if len(rows) > 1 else rows
        return ", ".join(f"alpha {row.alpha:g}: ACC(I) {100 * row.acc_id:.1f}%"
                         + (f", ER {100 * row.er:+.1f}" if row.er is not None else "")
                         + (f", kurtosis {row.kurtosis:.1f}" if row.kurtosis is not None else "")
                         + (f", {row.unique_concepts} concepts" if row.unique_concepts is not None else "")
                         for row in ends) + f" ({len(rows)} points)"


class WiseFt(Analysis):
    """Wise-FT sweeps (see the module notes)."""

    name = "wiseft"
    title = "Wise-FT"
    Options = WiseFtOptions
    tables = (WiseFtRow, WiseFtSignatureRow)

    def check(self, config: StudyConfig) -> list[str]:
        options = config.analyses.wiseft
        problems: list[str] = []
        if options.enabled and options.concepts and config.datasets.broden is None:
            problems.append("datasets.broden: required by analyses.wiseft.concepts; expected "
                            "{root: /path/to/broden1_224}")
        names: set[str] = set()
        for i, pair in enumerate(options.pairs):
            problems += unknown_models(config, [(f"analyses.wiseft.pairs[{i}].zero_shot", pair.zero_shot),
                                                (f"analyses.wiseft.pairs[{i}].finetuned", pair.finetuned)])
            if pair.zero_shot == pair.finetuned:
                problems.append(f"analyses.wiseft.pairs[{i}]: expected two different models; got "
                                f"{pair.zero_shot!r} twice")
            if pair.name in names:
                problems.append(f"analyses.wiseft.pairs[{i}].name: expected a unique pair name; got {pair.name!r} "
                                "again (set `name:`)")
            names.add(pair.name)
        return problems

    def select(self, section: dict[str, Any], models: set[str]) -> dict[str, Any] | None:
        pairs = [pair for pair in section["pairs"] if pair["zero_shot"] in models and pair["finetuned"] in models]
        return {**section, "pairs": pairs} if pairs else None

    def plan_pool(self, planner: Planner, config: StudyConfig) -> None:
        options = config.analyses.wiseft
        shifts = [dataset.name for dataset in config.datasets.shift]
        datasets = [config.datasets.id.name, *shifts]
        with_concepts = options.concepts and config.datasets.broden is not None
        threshold = concepts_options(config).threshold if with_concepts else None
        orientation = concepts_options(config).orientation if with_concepts else None
        for pair in options.pairs:
            needs: list[str] = []
            ap_tasks: dict[float, str] = {}
            for alpha in options.alphas:
                subject = wiseft_subject(pair, alpha)
                needs += [planner.store(subject, name) for name in datasets]
                if with_concepts:
                    ap_tasks[float(alpha)] = ap_task(planner, config, subject, BASIS)
                    needs.append(ap_tasks[float(alpha)])
            planner.add(WiseFtTask(pair, options, datasets, shifts, threshold, orientation, ap_tasks, tuple(needs)))

    def keeps(self, row: Any, config: StudyConfig) -> bool:
        """A row of a pair the config still has."""
        options = self.options(config)
        return options is not None and row.pair in {pair.name for pair in options.pairs}

    def report(self, page: Page, models: Sequence[ModelRow]) -> str | None:
        rows = page.read(WiseFtRow)
        if not rows:
            return None
        shifts = shift_kurtosis(page.read(WiseFtSignatureRow), page.id_dataset())
        return (page.figure(lambda: wiseft_figure(rows, shifts), "wiseft_sweeps",
                            "Wise-FT sweeps against alpha, every pair in one panel per metric; solid: the id set, "
                            "dashed: the shift sets (accuracy: ACC(S); kurtosis: its mean over the shift sets, as "
                            "Figs. 15-16 draw it). The paper's Figs. 11-18 draw these metrics pair by pair (11-12: "
                            "accuracy on ImageNet and the shifts, 13-14: ER, 15-16: kurtosis, 17-18: unique "
                            "concepts).", ["wiseft", "wiseft_signatures"] if shifts else ["wiseft"])
                + page.table(wiseft_table(rows, shifts)))


def shift_kurtosis(signatures: Sequence[WiseFtSignatureRow], id_set: str | None) -> dict[tuple[str, float], float]:
    """``(pair, alpha) -> the mean activation kurtosis over the shift sets`` (every dataset of ``signatures`` but
    ``id_set``; default: the first dataset, the one each step writes first)."""
    if not signatures:
        return {}
    id_set = id_set if id_set is not None else signatures[0].dataset
    values: dict[tuple[str, float], list[float]] = {}
    for row in signatures:
        if row.dataset != id_set:
            values.setdefault((row.pair, row.alpha), []).append(row.kurtosis)
    return {point: sum(kurtosis) / len(kurtosis) for point, kurtosis in values.items()}


def wiseft_figure(wiseft: Sequence[WiseFtRow], shifts: Mapping[tuple[str, float], float] | None = None) -> Figure:
    """The metrics of Figs. 11-18: accuracy, ER, kurtosis and unique concepts against alpha, one color per pair;
    accuracy and kurtosis on the id set solid and on the shift sets dashed (ACC(S); ``shifts``, the mean kurtosis
    over the shift sets per ``(pair, alpha)``, from :func:`shift_kurtosis`); a panel only for the metrics that were
    computed."""
    if not wiseft:
        raise InputError("wiseft_figure needs at least one row of wiseft.csv")
    shifts = shifts or {}
    panels = [("accuracy (%)", "acc_id", "acc_shift"), ("ER (%)", "er", None), ("kurtosis", "kurtosis", "shifts"),
              ("unique concepts", "unique_concepts", None)]
    panels = [panel for panel in panels if panel[1] == "acc_id" or any(getattr(row, panel[1]) is not None
                                                                        for row in wiseft)]
    figure, axes = grid(len(panels), columns=len(panels))
    figure.suptitle("Wise-FT: (1 - alpha) zero-shot + alpha finetuned")
    colors = itertools.cycle(f"C{i}" for i in range(10))
    for pair, color in zip(in_order([row.pair for row in wiseft]), colors):
        rows = sorted((row for row in wiseft if row.pair == pair), key=lambda row: row.alpha)
        for ax, (name, key, shift) in zip(axes, panels):
            scale = 100 if key in ("acc_id", "er") else 1
            points = [(row.alpha, scale * getattr(row, key)) for row in rows if getattr(row, key) is not None]
            if shift == "shifts":
                dashed = [(row.alpha, shifts[(pair, row.alpha)]) for row in rows if (pair, row.alpha) in shifts]
            elif shift is not None:
                dashed = [(row.alpha, 100 * getattr(row, shift)) for row in rows if getattr(row, shift) is not None]
            else:
                dashed = []
            if points:
                ax.plot(*zip(*points), color=color, marker=".", label=f"{pair} (I)" if shift else pair)
            if dashed:
                ax.plot(*zip(*dashed), color=color, marker=".", linestyle="--", label=f"{pair} (S)")
    for ax, (name, key, _) in zip(axes, panels):
        if key == "unique_concepts":
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("alpha")
        ax.set_ylabel(name)
        ax.grid(True, linewidth=0.3)
        ax.legend(fontsize=6)
    return figure


def wiseft_table(wiseft: Sequence[WiseFtRow], shifts: Mapping[tuple[str, float], float] | None = None
                 ) -> ReportTable:
    """Wise-FT sweeps: every metric at every alpha; the mean kurtosis over the shift sets (``shifts``, from
    :func:`shift_kurtosis`) in its own column when known."""
    shifts = shifts or {}
    labels = ("ACC(I) (%)", "ACC(S) (%)", "ER (%)", "Kurtosis (I)", *(("Kurtosis (S)",) if shifts else ()),
              "Unique concepts")
    rows = tuple((row.pair, f"{row.alpha:g}", percent(row.acc_id), percent(row.acc_shift), signed_percent(row.er),
                  decimal(1)(row.kurtosis), *((decimal(1)(shifts.get((row.pair, row.alpha))),) if shifts else ()),
                  integer(row.unique_concepts)) for row in wiseft)
    caption = "Weights (1 - alpha) x zero-shot + alpha x finetuned. Kurtosis (I): on the id set"
    caption += ("; Kurtosis (S): its mean over the shift sets (each set: results/wiseft_signatures.csv)" if shifts
                else "")
    return ReportTable("wiseft", "Wise-FT sweeps", ("Pair", "alpha"), (("", labels),), rows,
                       caption + ". Unique concepts: on Broden, singular basis.",
                       ("wiseft", "wiseft_signatures") if shifts else ("wiseft",))
