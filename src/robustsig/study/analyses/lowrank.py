"""A low-rank model of the whole encoder (the paper's first future-work item), per model: every linear map of the
image encoder keeps a budget of its singular directions, chosen by importance (eq. 4 against the map's own inputs,
from one calibration pass over id images), by singular value or at random: ``lowrank.csv``.

Accuracy per dataset goes through the datasets' own scoring rule (:func:`robustsig.extraction.calibrate.accuracies`,
the rule of :func:`robustsig.accuracy`), ER through the study's baseline line, when the datasets cover the id set and
every shift set. The rows also give the parameters and FLOPs left. The task reads images, not stores, but it
depends on the model's extraction steps: their key digests (weights, dataset file lists, preprocessing) are its
provenance, so a changed model or dataset reruns it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, PositiveInt

from robustsig.report.figures import curve_figure, order_styles
from robustsig.report.page import escape
from robustsig.study.analysis import (Analysis, AnalysisOptions, AnalysisTask, ModelEntry, Planner, RunContext,
                                      column, has_rows, model_subject, result_table, select_models, unknown_datasets,
                                      unknown_models)
from robustsig.study.results import ModelRow
from robustsig.study.sections import PruningOrder, fractions_below_one, unique_values

if TYPE_CHECKING:
    from robustsig.report.page import Page
    from robustsig.study.config import StudyConfig


class LowRankOptions(AnalysisOptions):
    """A low-rank model of the whole encoder: every linear map keeps its most important singular directions."""

    fractions: Annotated[list[float], AfterValidator(fractions_below_one)] = Field(
        default_factory=lambda: [0.0, 0.25, 0.5, 0.75], min_length=1,
        description="fractions removed, in [0, 1): of each map's rank (budget: rank) or of the maps' parameters")
    orders: Annotated[list[PruningOrder], AfterValidator(unique_values)] = Field(
        default_factory=lambda: ["importance", "singular", "random"], min_length=1,
        description="directions pruned first: importance (eq. 4 on each map's inputs), singular, random")
    budget: Literal["rank", "parameters"] = "rank"
    calibration_images: PositiveInt | None = Field(default=256, description="id images of the calibration pass "
                                                                            "(null: all)")
    models: list[str] | None = Field(default=None, description="model names (default: every model)")
    datasets: list[str] | None = Field(default=None, description="dataset names (default: id and shift sets)")
    seed: int = 0


@result_table
@dataclass(frozen=True)
class LowRankRow:
    """Accuracy of a low-rank model of the whole encoder (every linear map keeps a budget of its directions)."""

    TABLE: ClassVar[str] = "lowrank"
    KEY: ClassVar[tuple[str, ...]] = ("model", "order", "fraction", "dataset")
    model: str = column("model name")
    order: str = column("importance (eq. 4 on each map's inputs), singular or random: the directions pruned first")
    fraction: float = column("fraction removed: of each map's rank, or of the maps' parameters (see provenance)")
    dataset: str = column("dataset name")
    accuracy: float = column("top-1 accuracy of the low-rank model")
    er: float | None = column("ER of the low-rank model (the same on every dataset row of this model, order and "
                               "fraction; empty without shift sets)")
    parameters: int = column("parameters of the low-rank classifier (encoder and head)")
    parameter_fraction: float = column("parameters relative to the original model")
    flop_fraction: float = column("FLOPs per image relative to the original model (matrix products, convolutions, "
                                   "attention)")




class LowRankTask(AnalysisTask):
    """The low-rank curves of one model."""

    tag = "lowrank"

    def __init__(self, model: str, datasets: Sequence[str], id_name: str, shifts: Sequence[str],
                 options: LowRankOptions, needs: tuple[str, ...]) -> None:
        super().__init__(f"lowrank:{model}", model, needs, (model,))
        self.model = model
        self.subject = model_subject(model)
        self.datasets = list(dict.fromkeys([id_name, *datasets]))
        self.id_name = id_name
        self.shifts = [name for name in shifts if name in self.datasets] if set(shifts) <= set(self.datasets) else []
        self.options = options

    def provenance(self, ctx: RunContext) -> dict[str, Any]:
        config = ctx.config
        return {"stores": {name: ctx.store(self.subject, name).digest for name in self.datasets},
                "options": self.options.model_dump(mode="json"), "batch_size": config.batch_size,
                "baseline": ctx.baseline.provenance() if self.shifts else None}

    def present(self, ctx: RunContext) -> bool:
        return has_rows(ctx.results, LowRankRow, model=self.model)

    def compute(self, ctx: RunContext) -> str:
        from robustsig.extraction.calibrate import calibrate_linear_maps
        from robustsig.extraction.lowrank import low_rank_curve

        options, config = self.options, ctx.config
        classifier = ctx.classifiers.get(self.subject)
        run = {"batch_size": config.batch_size, "workers": config.workers, "device": ctx.device,
               "progress": ctx.progress}
        calibration = calibrate_linear_maps(classifier, ctx.dataset(self.id_name),
                                            images=options.calibration_images, **run)
        table = low_rank_curve(classifier, calibration, {name: ctx.dataset(name) for name in self.datasets},
                               id_name=self.id_name, shift_names=self.shifts, fractions=options.fractions,
                               orders=options.orders, budget=options.budget, seed=options.seed, b1=ctx.baseline.b1,
                               b0=ctx.baseline.b0, **run)
        rows = []
        for row in table.rows():
            er = None if row["er"] is None or math.isnan(row["er"]) else float(row["er"])
            rows.extend(LowRankRow(self.model, row["order"], float(row["fraction"]), name, float(row[f"acc:{name}"]),
                                   er, int(row["parameters"]), float(row["parameter_fraction"]),
                                   float(row["flop_fraction"]))
                        for name in self.datasets)
        ctx.results.replace(LowRankRow, rows, model=self.model)
        ctx.results.record(LowRankRow, [ctx.store(self.subject, name).record(self.model, name)
                                        for name in self.datasets],
                           {**options.model_dump(mode="json"), "calibration_dataset": self.id_name,
                            "calibration_images_used": calibration.images, "linear_maps": len(calibration.maps),
                            "flops_original": table.meta["flops_original"],
                            "parameters_original": table.meta["parameters_original"]})
        first = table.rows()
        worst = first[-1]
        return (f"{len(calibration.maps)} linear maps, calibrated on {calibration.images} images; "
                f"{worst['order']} at {worst['fraction']:g}: {100 * worst['accuracy']:.1f}% on {self.id_name} "
                f"(original {100 * first[0]['accuracy']:.1f}%), {100 * worst['parameter_fraction']:.0f}% of the "
                f"parameters, {100 * worst['flop_fraction']:.0f}% of the FLOPs")


class LowRank(Analysis):
    """A low-rank model of the whole encoder (see the module notes)."""

    name = "lowrank"
    title = "Low-rank encoder"
    Options = LowRankOptions
    tables = (LowRankRow,)

    def check(self, config: StudyConfig) -> list[str]:
        options = config.analyses.lowrank
        return (unknown_datasets(config, [(f"analyses.lowrank.datasets[{i}]", name)
                                          for i, name in enumerate(options.datasets or [])])
                + unknown_models(config, [(f"analyses.lowrank.models[{i}]", name)
                                          for i, name in enumerate(options.models or [])]))

    def select(self, section: dict[str, Any], models: set[str]) -> dict[str, Any] | None:
        return select_models(section, models)

    def plan_model(self, planner: Planner, config: StudyConfig, entry: ModelEntry) -> None:
        options = config.analyses.lowrank
        if options.models and entry.name not in options.models:
            return
        subject = model_subject(entry.name)
        id_name = config.datasets.id.name
        datasets = options.datasets or [dataset.name for dataset in config.datasets.evaluation()]
        needs = tuple(planner.store(subject, name) for name in dict.fromkeys([id_name, *datasets]))
        planner.add(LowRankTask(entry.name, datasets, id_name, [d.name for d in config.datasets.shift], options,
                                needs))

    def report(self, page: Page, models: Sequence[ModelRow]) -> str | None:
        return _report(page, models)


def _report(page: Page, models: Sequence[ModelRow]) -> str | None:
    rows = page.read(LowRankRow)
    if not rows:
        return None
    dataset = page.shown_dataset(rows)
    options = page.options("lowrank")
    budget = options.get("budget", "rank")
    xlabel = "fraction of each map's rank pruned" if budget == "rank" else "fraction of the maps' parameters removed"
    kwargs = {"title": "Low-rank encoder", "xlabel": xlabel}
    text = page.figure(lambda: curve_figure(models, rows, dataset, "accuracy", **kwargs), "lowrank_accuracy",
                       f"Accuracy on {dataset} of the low-rank model of the whole encoder: every linear map keeps its "
                       "most important singular directions ("
                       + order_styles(rows, {"importance": "importance, eq. 4 on the map's own inputs",
                                             "singular": "singular value", "random": "random"}) + ").", ["lowrank"])
    if any(row.er is not None for row in rows):
        text += page.figure(lambda: curve_figure(models, rows, dataset, "er", **kwargs), "lowrank_er",
                            "Effective robustness of the low-rank model.", ["lowrank"])
    shown = [row for row in rows if row.dataset == dataset]
    body = "".join(f"<tr><td>{escape(row.model)}</td><td>{escape(row.order)}</td><td>{row.fraction:g}</td>"
                   f"<td>{100 * row.accuracy:.1f}</td><td>{'' if row.er is None else f'{100 * row.er:.1f}'}</td>"
                   f"<td>{100 * row.parameter_fraction:.0f}%</td><td>{100 * row.flop_fraction:.0f}%</td></tr>"
                   for row in shown)
    text += (f"<table><caption>Low-rank encoder on {escape(dataset)} (results/lowrank.csv)</caption><tr><th>model</th>"
             "<th>order</th><th>fraction</th><th>accuracy (%)</th><th>ER (%)</th><th>parameters</th><th>FLOPs</th>"
             f"</tr>{body}</table>")
    return text
