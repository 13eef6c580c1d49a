"""Activation kurtosis (eq. 2) of h and its outlier dimensions, on the configured dataset (default: the id set):
``kurtosis.csv``, ``outliers.csv`` (dimensions whose mean |h_i| is at least 5 times the average dimension's)."""

from __future__ import annotations

from typing import Any

from robustsig.metrics.kurtosis import OUTLIER_FACTOR
from robustsig.study.analyses._streams import store_kurtosis
from robustsig.study.config import ModelEntry, StudyConfig
from robustsig.study.plan import Planner
from robustsig.study.results import KurtosisRow, OutlierRow
from robustsig.study.subjects import model_subject
from robustsig.study.tasks import AnalysisTask, RunContext, has_rows


class KurtosisTask(AnalysisTask):
    """Kurtosis and outlier dimensions of one model's h on one dataset."""

    tag = "kurtosis"

    def __init__(self, model: str, dataset: str, needs: tuple[str, ...]) -> None:
        super().__init__(f"kurtosis:{model}", f"{model} on {dataset}", needs, (model,))
        self.model = model
        self.subject = model_subject(model)
        self.dataset = dataset

    def provenance(self, ctx: RunContext) -> dict[str, Any]:
        return {"store": ctx.store(self.subject, self.dataset).digest, "dataset": self.dataset,
                "outlier_factor": OUTLIER_FACTOR}

    def present(self, ctx: RunContext) -> bool:
        return has_rows(ctx.results, KurtosisRow, model=self.model)

    def compute(self, ctx: RunContext) -> str:
        verified = ctx.store(self.subject, self.dataset)
        accumulator = store_kurtosis(verified.store)
        kurtosis = accumulator.compute()
        outliers = accumulator.outlier_dimensions(OUTLIER_FACTOR)
        record = verified.record(self.model, self.dataset)
        dim = int(accumulator.mean_abs().shape[0])
        ctx.results.replace(KurtosisRow, [KurtosisRow(self.model, self.dataset, kurtosis, record.num_samples, dim)],
                            model=self.model)
        ctx.results.record(KurtosisRow, [record], {"dataset": self.dataset})
        ctx.results.replace(OutlierRow, [OutlierRow(self.model, self.dataset, int(index), float(score))
                                         for index, score in zip(outliers.indices.tolist(), outliers.scores.tolist())],
                            model=self.model)
        ctx.results.record(OutlierRow, [record], {"dataset": self.dataset, "factor": OUTLIER_FACTOR})
        shown = ", ".join(str(i) for i in outliers.indices.tolist()[:5])
        return (f"kurtosis {kurtosis:.2f} over {record.num_samples} vectors of width {dim}; "
                f"{len(outliers.indices)} outlier dimension(s){f' ({shown})' if shown else ''}")


def dataset_of(config: StudyConfig) -> str:
    """The dataset kurtosis is computed on."""
    return config.analyses.kurtosis.dataset or config.datasets.id.name


def plan(planner: Planner, config: StudyConfig, entry: ModelEntry) -> None:
    dataset = dataset_of(config)
    planner.add(KurtosisTask(entry.name, dataset, (planner.store(model_subject(entry.name), dataset),)))
