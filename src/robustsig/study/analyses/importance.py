"""Importance of the head's singular directions (eq. 4) and the privileged ones: ``importance.csv`` (one row per
direction) and ``privileged.csv`` (per model: how many are privileged, the top one, and the Spearman correlation of
singular values and importances). Computed on the configured dataset (default: the id set); a direction is
privileged when its importance is at least ``privileged_ratio`` (default 5) times the mean importance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from matplotlib.figure import Figure
from pydantic import Field

from robustsig.metrics.directions import PRIVILEGED_FACTOR, importance_spearman, privileged_directions
from robustsig.report.figures import group_panels, plain_log_axis, present_groups
from robustsig.report.tables import ReportTable, decimal, integer, pool_table
from robustsig.study.streams import store_importance
from robustsig.study.analysis import (Analysis, AnalysisOptions, AnalysisTask, ModelEntry, Planner, Results,
                                      RunContext, column, has_rows, model_subject, result_table, unknown_datasets)
from robustsig.study.pool import KIND_COLORS
from robustsig.study.results import ModelRow

if TYPE_CHECKING:
    from robustsig.report.page import Page
    from robustsig.study.config import StudyConfig


class ImportanceOptions(AnalysisOptions):
    """Importance of the head's singular directions (eq. 4) and the privileged ones."""

    dataset: str | None = Field(default=None, description="the dataset to compute it on (default: the id set)")
    privileged_ratio: float | None = Field(default=None, gt=0,
                                           description="importance / mean importance above which a direction "
                                                       "is privileged (null: robustsig's default)")


@result_table
@dataclass(frozen=True)
class ImportanceRow:
    """Importance (eq. 4) of one singular direction of the head."""

    TABLE: ClassVar[str] = "importance"
    KEY: ClassVar[tuple[str, ...]] = ("model", "direction")
    model: str = column("model name")
    direction: int = column("index of the singular direction, 0 = largest singular value")
    singular_value: float = column("singular value s_i of the head W")
    importance: float = column("s_i / sum(s) x mean_n |cos(v_i, h_n)|")
    privileged: bool = column("importance above privileged_ratio x the mean importance")


@result_table
@dataclass(frozen=True)
class PrivilegedRow:
    """Summary of a model's privileged directions."""

    TABLE: ClassVar[str] = "privileged"
    KEY: ClassVar[tuple[str, ...]] = ("model",)
    model: str = column("model name")
    num_directions: int = column("rank of the head (directions scored)")
    num_privileged: int = column("directions flagged privileged")
    top_direction: int = column("the most important direction")
    top_ratio: float = column("its importance over the mean importance")
    spearman: float = column("Spearman correlation of singular values and importances")


class ImportanceTask(AnalysisTask):
    """Direction importance and privileged directions of one model."""

    tag = "importance"

    def __init__(self, model: str, dataset: str, ratio: float, needs: tuple[str, ...]) -> None:
        super().__init__(f"importance:{model}", f"{model} on {dataset}", needs, (model,))
        self.model = model
        self.subject = model_subject(model)
        self.dataset = dataset
        self.ratio = ratio

    def provenance(self, ctx: RunContext) -> dict[str, Any]:
        return {"store": ctx.store(self.subject, self.dataset).digest, "dataset": self.dataset,
                "privileged_ratio": self.ratio}

    def present(self, ctx: RunContext) -> bool:
        return has_rows(ctx.results, PrivilegedRow, model=self.model)

    def compute(self, ctx: RunContext) -> str:
        verified = ctx.store(self.subject, self.dataset)
        svd, importance = store_importance(verified.store)
        privileged = privileged_directions(importance, self.ratio)
        flagged = set(privileged.indices.tolist())
        rows = [ImportanceRow(self.model, i, float(s), float(value), i in flagged)
                for i, (s, value) in enumerate(zip(svd.s.tolist(), importance.tolist()))]
        spearman = importance_spearman(svd.s, importance) if svd.rank >= 2 else float("nan")
        top = int(importance.argmax())
        top_ratio = float(importance[top] / importance.mean())
        record = verified.record(self.model, self.dataset)
        parameters = {"dataset": self.dataset, "privileged_ratio": self.ratio}
        ctx.results.replace(ImportanceRow, rows, model=self.model)
        ctx.results.record(ImportanceRow, [record], parameters)
        ctx.results.replace(PrivilegedRow, [PrivilegedRow(self.model, svd.rank, len(flagged), top, top_ratio,
                                                          spearman)], model=self.model)
        ctx.results.record(PrivilegedRow, [record], parameters)
        return (f"{len(flagged)} privileged of {svd.rank} directions (top: direction {top}, {top_ratio:.1f}x the "
                f"mean); Spearman(s, importance) {spearman:.3f}")


def dataset_of(config: StudyConfig) -> str:
    """The dataset importance is computed on (also where the concepts analysis finds the top direction)."""
    options = config.analyses.importance
    return (options.dataset if options is not None and options.dataset else None) or config.datasets.id.name


def ratio_of(config: StudyConfig) -> float:
    options = config.analyses.importance
    return options.privileged_ratio if options is not None and options.privileged_ratio else PRIVILEGED_FACTOR


class Importance(Analysis):
    """Direction importance and privileged directions (see the module notes)."""

    name = "importance"
    title = "Importance and privileged directions"
    Options = ImportanceOptions
    tables = (ImportanceRow, PrivilegedRow)
    essential = ("importance", "privileged")

    def check(self, config: StudyConfig) -> list[str]:
        return unknown_datasets(config, [("analyses.importance.dataset", config.analyses.importance.dataset)])

    def plan_model(self, planner: Planner, config: StudyConfig, entry: ModelEntry) -> None:
        dataset = dataset_of(config)
        planner.add(ImportanceTask(entry.name, dataset, ratio_of(config),
                                   (planner.store(model_subject(entry.name), dataset),)))

    def summary(self, results: Results, config: StudyConfig) -> dict[str, dict[str, Any]]:
        rows = results.read(PrivilegedRow) if results.has(PrivilegedRow) else []
        return {row.model: {"privileged": row.num_privileged} for row in rows}

    def report(self, page: Page, models: Sequence[ModelRow]) -> str | None:
        importance, privileged = page.read(ImportanceRow), page.read(PrivilegedRow)
        if not importance and not privileged:
            return None
        text = ""
        if importance:
            text += page.figure(lambda: importance_figure(models, importance), "fig2_importance",
                                "Figs. 2 and 7: importance (eq. 4) of the head's singular directions, one panel per "
                                "backbone and pretraining, drawn ranked from the most important on a log scale (x: "
                                "privileged). The paper shows the OpenAI models' zero-shot, finetuned and supervised "
                                "models in Fig. 2 and the other pretraining sets' zero-shot and finetuned models in "
                                "Fig. 7.", ["importance"])
        if privileged:
            text += page.table(privileged_table(models, privileged))
        return text


def importance_figure(models: Sequence[ModelRow], importance: Sequence[ImportanceRow]) -> Figure:
    """Figs. 2 and 7: importance of each singular direction, ranked from the most important, log scale; privileged
    directions marked. One panel per backbone x pretraining, its models colored by kind."""
    by_model: dict[str, list[ImportanceRow]] = {}
    for row in importance:
        by_model.setdefault(row.model, []).append(row)
    groups = present_groups(models, set(by_model))
    figure, axes = group_panels(groups, "Importance of singular directions")
    for ax, group in zip(axes, groups):
        for model in group.members:
            rows = sorted(by_model[model.model], key=lambda row: -row.importance)
            ranks = range(len(rows))
            ax.plot(ranks, [max(row.importance, 1e-12) for row in rows], color=KIND_COLORS.get(model.kind),
                    linewidth=1.2, label=f"{model.kind} ({model.model})")
            marked = [(rank, row.importance) for rank, row in zip(ranks, rows) if row.privileged]
            if marked:
                ax.scatter(*zip(*marked), color=KIND_COLORS.get(model.kind), marker="x", s=25, zorder=3)
        ax.set_yscale("log")
        plain_log_axis(ax.yaxis)
        ax.set_title(group.title, fontsize=9)
        ax.set_xlabel("direction rank (by importance)")
        ax.set_ylabel("importance")
        ax.legend(fontsize=6)
    return figure


def privileged_table(models: Sequence[ModelRow], privileged: Sequence[PrivilegedRow]) -> ReportTable:
    """Privileged directions: how many, and how far the top one stands out."""
    values = {row.model: (integer(row.num_privileged), decimal(1)(row.top_ratio), decimal(2)(row.spearman))
              for row in privileged}
    return pool_table("privileged", "Privileged directions", models, values,
                      ("Privileged", "Top ratio", "Spearman"),
                      caption="Privileged: directions whose importance exceeds the threshold times the mean; "
                              "top ratio: the largest importance over the mean; Spearman: rank correlation of "
                              "singular values and importances.", sources=("privileged",))
