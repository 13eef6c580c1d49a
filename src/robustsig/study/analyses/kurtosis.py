"""Activation kurtosis (eq. 2) of h and its outlier dimensions, on the configured dataset (default: the id set):
``kurtosis.csv``, ``outliers.csv`` (dimensions whose mean |h_i| is at least 5 times the average dimension's)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from robustsig.metrics.kurtosis import OUTLIER_FACTOR
from robustsig.report.tables import ReportTable, decimal, pool_table
from robustsig.study.streams import store_kurtosis
from robustsig.study.analysis import (Analysis, AnalysisOptions, AnalysisTask, ModelEntry, Planner, Results,
                                      RunContext, column, has_rows, model_subject, result_table, unknown_datasets)
from robustsig.study.results import ModelRow

if TYPE_CHECKING:
    from robustsig.report.page import Page
    from robustsig.study.config import StudyConfig


class KurtosisOptions(AnalysisOptions):
    """Activation kurtosis (eq. 2) of the head's input."""

    dataset: str | None = Field(default=None, description="the dataset to compute it on (default: the id set)")


@result_table
@dataclass(frozen=True)
class KurtosisRow:
    """Activation kurtosis (eq. 2) of the head's input h."""

    TABLE: ClassVar[str] = "kurtosis"
    KEY: ClassVar[tuple[str, ...]] = ("model", "dataset")
    model: str = column("model name")
    dataset: str = column("dataset the activations come from")
    kurtosis: float = column("mean over samples of the kurtosis of h (Gaussian = 3)")
    num_samples: int = column("activation vectors averaged")
    dim: int = column("width of h")


@result_table
@dataclass(frozen=True)
class OutlierRow:
    """A feature dimension of h carrying outlier activations (mean |h_i| far above the average dimension's)."""

    TABLE: ClassVar[str] = "outliers"
    KEY: ClassVar[tuple[str, ...]] = ("model", "dataset", "dimension")
    model: str = column("model name")
    dataset: str = column("dataset the activations come from")
    dimension: int = column("index of the dimension of h")
    score: float = column("mean |h_i| over the mean of mean |h_j| over all dimensions (>= 5: an outlier)")


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


class Kurtosis(Analysis):
    """Activation kurtosis and outlier dimensions (see the module notes)."""

    name = "kurtosis"
    title = "Activation kurtosis"
    Options = KurtosisOptions
    tables = (KurtosisRow, OutlierRow)

    def check(self, config: StudyConfig) -> list[str]:
        return unknown_datasets(config, [("analyses.kurtosis.dataset", config.analyses.kurtosis.dataset)])

    def plan_model(self, planner: Planner, config: StudyConfig, entry: ModelEntry) -> None:
        dataset = dataset_of(config)
        planner.add(KurtosisTask(entry.name, dataset, (planner.store(model_subject(entry.name), dataset),)))

    def summary(self, results: Results, config: StudyConfig) -> dict[str, dict[str, Any]]:
        rows = results.read(KurtosisRow) if results.has(KurtosisRow) else []
        return {row.model: {"kurtosis": row.kurtosis} for row in rows}

    def report(self, page: Page, models: Sequence[ModelRow]) -> str | None:
        rows = page.read(KurtosisRow)
        if not rows:
            return None
        dataset = page.shown_dataset(rows)
        text = page.table(kurtosis_table(models, rows, dataset))
        outliers = page.read(OutlierRow)
        if outliers:
            listed = []
            for model in models:
                dims = [row for row in outliers if row.model == model.model]
                if dims:
                    shown = ", ".join(f"{row.dimension} ({row.score:.1f}x)" for row in dims[:5])
                    listed.append(f"{model.model}: {len(dims)} ({shown}{', ...' if len(dims) > 5 else ''})")
            text += page.caption("Outlier dimensions of h (mean |h_i| at least 5 times the average dimension's; "
                                 f"results/outliers.csv): {'; '.join(listed) or 'none'}.")
        return text


def kurtosis_table(models: Sequence[ModelRow], kurtosis: Sequence[KurtosisRow], dataset: str) -> ReportTable:
    """Activation kurtosis (eq. 2) of every model on one dataset."""
    values = {row.model: (decimal(1)(row.kurtosis),) for row in kurtosis if row.dataset == dataset}
    return pool_table("kurtosis", "Activation kurtosis (Table 2)", models, values, ("Kurtosis",),
                      caption=f"Mean kurtosis (eq. 2) of the head's input activations on {dataset} (Gaussian = 3); "
                              "the paper's Table 2 on the ImageNet test set.",
                      sources=("kurtosis",))
