"""Wise-FT sweeps: for each pair and alpha, the model ``(1 - alpha) theta_zero_shot + alpha theta_finetuned``
(:func:`robustsig.interpolate`) is extracted like a pool model, and its accuracy, ER, kurtosis and unique concepts
are computed from its stores: ``wiseft.csv``.

Each sweep point has its own stores (``STORE_DIR/PAIR@alpha=A/DATASET``), reused by later runs; alpha 0 and 1 are
the pool models themselves, whose stores are shared. A point needs the id set (accuracy, kurtosis), the shift sets
(ACC(S) and ER, when the study has shift sets) and Broden (unique concepts in the singular basis, when ``concepts``
is on; the AP matrix is saved like a model's, and the threshold is the concepts analysis's).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
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
    kurtosis: float | None = column("activation kurtosis")
    unique_concepts: int | None = column("unique concepts (singular basis)")




BASIS = "singular"


class WiseFtTask(AnalysisTask):
    """The sweep of one pair."""

    tag = "wiseft"

    def __init__(self, pair: WiseFtPair, options: WiseFtOptions, datasets: list[str], shifts: list[str],
                 threshold: float | None, ap_tasks: dict[float, str], needs: tuple[str, ...]) -> None:
        super().__init__(f"wiseft:{pair.name}", f"{pair.name} ({pair.zero_shot} -> {pair.finetuned})", needs,
                         (pair.zero_shot, pair.finetuned))
        self.pair = pair
        self.options = options
        self.datasets = datasets
        self.shifts = shifts
        self.threshold = threshold
        self.ap_tasks = ap_tasks

    def _points(self) -> list[tuple[float, Subject]]:
        return [(float(alpha), wiseft_subject(self.pair, alpha)) for alpha in self.options.alphas]

    def provenance(self, ctx: RunContext) -> dict[str, Any]:
        return {"points": {repr(alpha): {"stores": {name: ctx.store(subject, name).provenance
                                                    for name in self.datasets},
                                         "ap": ctx.ledger.digest(self.ap_tasks[alpha]) if self.ap_tasks else None}
                           for alpha, subject in self._points()},
                "kurtosis": self.options.kurtosis, "threshold": self.threshold, "shift_sets": self.shifts,
                "baseline": ctx.baseline.provenance() if self.shifts else None}

    def present(self, ctx: RunContext) -> bool:
        return has_rows(ctx.results, WiseFtRow, pair=self.pair.name)

    def compute(self, ctx: RunContext) -> str:
        id_name = self.datasets[0]
        rows = []
        for alpha, subject in self._points():
            accuracies = subject_accuracies(ctx, subject, [id_name, *self.shifts])
            acc_id = accuracies[id_name]
            acc_shift, er = shift_robustness(acc_id, {name: accuracies[name] for name in self.shifts}, ctx.baseline)
            kurtosis = store_kurtosis(ctx.store(subject, id_name).store).compute() if self.options.kurtosis else None
            unique = None
            if self.ap_tasks:
                ap, names, _ = load_ap(ctx.results.root, subject.name, BASIS)
                unique = concept_summary(ap, self.threshold, names).unique_concepts
            rows.append(WiseFtRow(self.pair.name, alpha, acc_id, acc_shift, er, kurtosis, unique))
        ctx.results.replace(WiseFtRow, rows, pair=self.pair.name)
        ctx.results.record(WiseFtRow, [ctx.store(subject, name).record(subject.name, name)
                                       for _, subject in self._points() for name in self.datasets],
                           {"alphas": self.options.alphas, "threshold": self.threshold,
                            **(ctx.baseline.provenance() if self.shifts else {})})
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
    tables = (WiseFtRow,)

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
        for pair in options.pairs:
            needs: list[str] = []
            ap_tasks: dict[float, str] = {}
            for alpha in options.alphas:
                subject = wiseft_subject(pair, alpha)
                needs += [planner.store(subject, name) for name in datasets]
                if with_concepts:
                    ap_tasks[float(alpha)] = ap_task(planner, config, subject, BASIS)
                    needs.append(ap_tasks[float(alpha)])
            planner.add(WiseFtTask(pair, options, datasets, shifts, threshold, ap_tasks, tuple(needs)))

    def keeps(self, row: Any, config: StudyConfig) -> bool:
        """A row of a pair the config still has."""
        options = self.options(config)
        return options is not None and row.pair in {pair.name for pair in options.pairs}

    def report(self, page: Page, models: Sequence[ModelRow]) -> str | None:
        rows = page.read(WiseFtRow)
        if not rows:
            return None
        return (page.figure(lambda: wiseft_figure(rows), "wiseft_sweeps", "Wise-FT sweeps against alpha, every pair "
                            "in one panel per metric; the paper's Figs. 11-18 draw these metrics pair by pair (11-12: "
                            "accuracy on ImageNet and the shifts, 13-14: ER, 15-16: kurtosis, 17-18: unique "
                            "concepts).", ["wiseft"])
                + page.table(wiseft_table(rows)))


def wiseft_figure(wiseft: Sequence[WiseFtRow]) -> Figure:
    """The metrics of Figs. 11-18: accuracy (in-distribution solid, shift dashed), ER, kurtosis and unique concepts
    against alpha, one color per pair; a panel only for the metrics that were computed."""
    if not wiseft:
        raise InputError("wiseft_figure needs at least one row of wiseft.csv")
    panels = [("accuracy (%)", None), ("ER (%)", "er"), ("kurtosis", "kurtosis"),
              ("unique concepts", "unique_concepts")]
    panels = [(name, key) for name, key in panels
              if key is None or any(getattr(row, key) is not None for row in wiseft)]
    figure, axes = grid(len(panels), columns=len(panels))
    figure.suptitle("Wise-FT: (1 - alpha) zero-shot + alpha finetuned")
    colors = itertools.cycle(f"C{i}" for i in range(10))
    for pair, color in zip(in_order([row.pair for row in wiseft]), colors):
        rows = sorted((row for row in wiseft if row.pair == pair), key=lambda row: row.alpha)
        alphas = [row.alpha for row in rows]
        for ax, (name, key) in zip(axes, panels):
            if key is None:
                ax.plot(alphas, [100 * row.acc_id for row in rows], color=color, marker=".", label=f"{pair} (I)")
                shift = [(row.alpha, 100 * row.acc_shift) for row in rows if row.acc_shift is not None]
                if shift:
                    ax.plot(*zip(*shift), color=color, marker=".", linestyle="--", label=f"{pair} (S)")
            else:
                scale = 100 if key == "er" else 1
                points = [(row.alpha, scale * getattr(row, key)) for row in rows if getattr(row, key) is not None]
                if points:
                    ax.plot(*zip(*points), color=color, marker=".", label=pair)
    for ax, (name, key) in zip(axes, panels):
        if key == "unique_concepts":
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("alpha")
        ax.set_ylabel(name)
        ax.grid(True, linewidth=0.3)
        ax.legend(fontsize=6)
    return figure


def wiseft_table(wiseft: Sequence[WiseFtRow]) -> ReportTable:
    """Wise-FT sweeps: every metric at every alpha."""
    rows = tuple((row.pair, f"{row.alpha:g}", percent(row.acc_id), percent(row.acc_shift), signed_percent(row.er),
                  decimal(1)(row.kurtosis), integer(row.unique_concepts)) for row in wiseft)
    return ReportTable("wiseft", "Wise-FT sweeps", ("Pair", "alpha"),
                       (("", ("ACC(I) (%)", "ACC(S) (%)", "ER (%)", "Kurtosis", "Unique concepts")),), rows,
                       "Weights (1 - alpha) x zero-shot + alpha x finetuned.", ("wiseft",))
