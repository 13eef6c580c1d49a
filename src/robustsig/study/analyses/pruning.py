"""Pruning curves: accuracy (and ER) after pruning a fraction of the head's least important singular directions,
per order (singular value, importance, random), on the id set and every shift set: ``pruning.csv``.

Each dataset's store is read once for all orders and fractions (:class:`robustsig.metrics.pruning.PruningCurves`
evaluates every level of every order from one projection), scored with the dataset's rule. The ``importance``
order uses the importance computed on the id set for every dataset, as the paper does. ER per fraction
(:func:`robustsig.pruning_effective_robustness`) is given when the curves cover the id set and every shift set; it
is empty at levels where the pruned id accuracy is 0 or 1.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import AfterValidator, Field

from robustsig.metrics.pruning import PruningCurves, pruning_effective_robustness
from robustsig.metrics.table import MetricTable
from robustsig.report.figures import curve_figure, order_styles
from robustsig.study.streams import BATCH_ROWS, store_bias, store_head_svd, store_importance
from robustsig.study.analysis import (Analysis, AnalysisOptions, AnalysisTask, ModelEntry, Planner, RunContext,
                                      column, has_rows, model_subject, result_table, unknown_datasets)
from robustsig.study.results import ModelRow
from robustsig.study.sections import PruningOrder, fractions_below_one, unique_values

if TYPE_CHECKING:
    from robustsig.report.page import Page
    from robustsig.study.config import StudyConfig


class PruningOptions(AnalysisOptions):
    """Accuracy and ER after pruning the least important singular directions of the head."""

    fractions: Annotated[list[float], AfterValidator(fractions_below_one)] = Field(
        default_factory=lambda: [round(0.05 * i, 2) for i in range(20)], min_length=1,
        description="fractions of directions to prune, in [0, 1)")
    orders: Annotated[list[PruningOrder], AfterValidator(unique_values)] = Field(
        default_factory=lambda: ["singular", "importance", "random"], min_length=1,
        description="pruning orders: singular (the paper's), importance, random (controls)")
    datasets: list[str] | None = Field(default=None, description="dataset names (default: id and shift sets)")
    seed: int = 0


@result_table
@dataclass(frozen=True)
class PruningRow:
    """Accuracy of a model after pruning a fraction of its head's singular directions."""

    TABLE: ClassVar[str] = "pruning"
    KEY: ClassVar[tuple[str, ...]] = ("model", "order", "fraction", "dataset")
    model: str = column("model name")
    order: str = column("singular (smallest singular values first), importance or random")
    fraction: float = column("fraction of directions pruned, in [0, 1)")
    dataset: str = column("dataset name")
    accuracy: float = column("top-1 accuracy of the pruned head")
    er: float | None = column("ER of the pruned model (the same on every dataset row of this model, order and "
                              "fraction; empty without shift sets)")


class PruningTask(AnalysisTask):
    """The pruning curves of one model."""

    tag = "pruning"

    def __init__(self, model: str, datasets: Sequence[str], id_name: str, shifts: Sequence[str],
                 options: PruningOptions, needs: tuple[str, ...]) -> None:
        super().__init__(f"pruning:{model}", model, needs, (model,))
        self.model = model
        self.subject = model_subject(model)
        self.datasets = list(datasets)
        self.id_name = id_name
        self.shifts = list(shifts)
        self.options = options

    @property
    def _with_er(self) -> bool:
        return bool(self.shifts) and self.id_name in self.datasets and set(self.shifts) <= set(self.datasets)

    def provenance(self, ctx: RunContext) -> dict[str, Any]:
        names = list(dict.fromkeys([self.id_name, *self.datasets]))
        return {"stores": {name: ctx.store(self.subject, name).provenance for name in names},
                "fractions": self.options.fractions, "orders": self.options.orders, "seed": self.options.seed,
                "importance_dataset": self.id_name,
                "baseline": ctx.baseline.provenance() if self._with_er else None}

    def present(self, ctx: RunContext) -> bool:
        return has_rows(ctx.results, PruningRow, model=self.model)

    def compute(self, ctx: RunContext) -> str:
        from robustsig.data.scoring import pruning_scoring

        options = self.options
        id_store = ctx.store(self.subject, self.id_name).store
        if "importance" in options.orders:
            svd, importance = store_importance(id_store)
        else:
            svd, importance = store_head_svd(id_store), None
        bias = store_bias(id_store)
        curves: dict[str, dict[str, MetricTable]] = {}
        for name in self.datasets:
            scoring = pruning_scoring(ctx.dataset(name))
            accumulator = PruningCurves(svd, bias, options.fractions, options.orders, importance=importance,
                                        seed=options.seed, **scoring)
            for batch in ctx.store(self.subject, name).store.batches(["h", "labels"], BATCH_ROWS):
                accumulator.update(batch["h"], batch["labels"])
            curves[name] = accumulator.compute()

        er: dict[str, list[float | None]] = {}
        undefined = 0
        for order in options.orders:
            if not self._with_er:
                er[order] = [None] * len(options.fractions)
                continue
            with warnings.catch_warnings():  # levels with an id accuracy of 0 or 1: counted and logged instead
                warnings.simplefilter("ignore", RuntimeWarning)
                table = pruning_effective_robustness(curves[self.id_name][order],
                                                     {name: curves[name][order] for name in self.shifts},
                                                     ctx.baseline.b1, ctx.baseline.b0)
            er[order] = [None if math.isnan(value) else float(value) for value in table["er"]]
            undefined += sum(value is None for value in er[order])

        rows = [PruningRow(self.model, order, float(fraction), name, float(curves[name][order]["accuracy"][i]),
                           er[order][i])
                for order in options.orders for i, fraction in enumerate(options.fractions) for name in self.datasets]
        ctx.results.replace(PruningRow, rows, model=self.model)
        ctx.results.record(PruningRow, [ctx.store(self.subject, name).record(self.model, name)
                                        for name in dict.fromkeys([self.id_name, *self.datasets])],
                           {"orders": options.orders, "fractions": options.fractions, "seed": options.seed,
                            "importance_dataset": self.id_name})
        first = curves[self.datasets[0]][options.orders[0]]
        text = (f"{len(options.orders)} order(s) x {len(options.fractions)} fractions on {len(self.datasets)} "
                f"dataset(s) (rank {first.meta['rank']}); {options.orders[0]} on {self.datasets[0]}: "
                f"{100 * first['accuracy'][0]:.1f}% -> {100 * first['accuracy'][-1]:.1f}%")
        if undefined:
            text += f"; ER undefined at {undefined} level(s) where the pruned id accuracy is 0 or 1"
        return text


class Pruning(Analysis):
    """Pruning curves of the head (see the module notes)."""

    name = "pruning"
    title = "Pruning singular directions"
    Options = PruningOptions
    tables = (PruningRow,)

    def check(self, config: StudyConfig) -> list[str]:
        return unknown_datasets(config, [(f"analyses.pruning.datasets[{i}]", name)
                                         for i, name in enumerate(config.analyses.pruning.datasets or [])])

    def plan_model(self, planner: Planner, config: StudyConfig, entry: ModelEntry) -> None:
        options = config.analyses.pruning
        subject = model_subject(entry.name)
        datasets = options.datasets or [dataset.name for dataset in config.datasets.evaluation()]
        id_name = config.datasets.id.name
        needs = tuple(planner.store(subject, name) for name in dict.fromkeys([id_name, *datasets]))
        planner.add(PruningTask(entry.name, datasets, id_name, [d.name for d in config.datasets.shift], options,
                                needs))

    def report(self, page: Page, models: Sequence[ModelRow]) -> str | None:
        rows = page.read(PruningRow)
        if not rows:
            return None
        dataset = page.shown_dataset(rows)
        text = page.figure(lambda: curve_figure(models, rows, dataset, "accuracy"), "pruning_accuracy",
                           f"Accuracy on {dataset} after pruning the least important singular directions of W ("
                           + order_styles(rows, {"singular": "by increasing singular value, the paper's order",
                                                 "importance": "by importance", "random": "random"})
                           + "), one panel per backbone and pretraining: the ACC panels of the paper's Figs. 3 "
                           "(OpenAI), 8 (LAION-400M, LAION-2B, DataComp) and 9 (YFCC-15M, CC-12M).", ["pruning"])
        if any(row.er is not None for row in rows):
            text += page.figure(lambda: curve_figure(models, rows, dataset, "er"), "pruning_er",
                                "Effective robustness after pruning the least important singular directions of W "
                                "(line styles as above): the ER panels of the paper's Figs. 3, 8 and 9.", ["pruning"])
        return text
