"""Importance of the head's singular directions (eq. 4) and the privileged ones: ``importance.csv`` (one row per
direction) and ``privileged.csv`` (per model: how many are privileged, the top one, and the Spearman correlation of
singular values and importances). Computed on the configured dataset (default: the id set); a direction is
privileged when its importance is at least ``privileged_ratio`` (default 5) times the mean importance."""

from __future__ import annotations

from typing import Any

from robustsig.metrics.directions import PRIVILEGED_FACTOR, importance_spearman, privileged_directions
from robustsig.study.analyses._streams import store_importance
from robustsig.study.config import ModelEntry, StudyConfig
from robustsig.study.plan import Planner
from robustsig.study.results import ImportanceRow, PrivilegedRow
from robustsig.study.subjects import model_subject
from robustsig.study.tasks import AnalysisTask, RunContext, has_rows


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


def plan(planner: Planner, config: StudyConfig, entry: ModelEntry) -> None:
    dataset = dataset_of(config)
    planner.add(ImportanceTask(entry.name, dataset, ratio_of(config),
                               (planner.store(model_subject(entry.name), dataset),)))
