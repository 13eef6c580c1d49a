"""An analysis from outside robustsig: the mean L2 norm of each model's h on the in-distribution set, times
``scale``, in ``results/echo.csv`` and a report section. Written against the public analysis API only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import Field

from robustsig.report.tables import ReportTable
from robustsig.study.analysis import (Analysis, AnalysisOptions, AnalysisTask, column, has_rows, model_subject,
                                      result_table)
from robustsig.study.streams import BATCH_ROWS


class EchoOptions(AnalysisOptions):
    """``analyses.echo``: the factor the norms are multiplied by, and a switch that makes the step fail."""

    scale: float = Field(default=1.0, gt=0, description="factor applied to the mean norm")
    fail: bool = Field(default=False, description="raise in the step (to test how failures are reported)")


@result_table
@dataclass(frozen=True)
class EchoRow:
    """One row per model of ``results/echo.csv``."""

    TABLE: ClassVar[str] = "echo"
    KEY: ClassVar[tuple[str, ...]] = ("model",)
    model: str = column("model name")
    mean_norm: float = column("scale x the mean L2 norm of h over the id set")


class EchoTask(AnalysisTask):
    """The mean norm of one model's h."""

    tag = "echo"

    def __init__(self, model: str, dataset: str, options: EchoOptions, needs: tuple[str, ...]) -> None:
        super().__init__(f"echo:{model}", f"{model} on {dataset}", needs, (model,))
        self.model, self.dataset, self.options = model, dataset, options
        self.subject = model_subject(model)

    def provenance(self, ctx) -> dict[str, Any]:
        # what the result depends on: the store (its key digest) and the options; the ledger reuses the step while
        # both are unchanged
        return {"store": ctx.store(self.subject, self.dataset).digest, "scale": self.options.scale}

    def present(self, ctx) -> bool:
        return has_rows(ctx.results, EchoRow, model=self.model)

    def compute(self, ctx) -> str:
        if self.options.fail:
            raise RuntimeError("the echo step was told to fail")
        verified = ctx.store(self.subject, self.dataset)
        total, count = 0.0, 0
        for batch in verified.store.batches(["h"], BATCH_ROWS):
            total += float(batch["h"].double().norm(dim=1).sum())
            count += batch["h"].shape[0]
        value = self.options.scale * total / count
        ctx.results.replace(EchoRow, [EchoRow(self.model, value)], model=self.model)
        ctx.results.record(EchoRow, [verified.record(self.model, self.dataset)], {"scale": self.options.scale})
        return f"mean norm {value:.4f} over {count} images"


class Echo(Analysis):
    """The analysis: one step per model, one table, one report section."""

    name = "echo"
    title = "Echo: mean norm of h"
    Options = EchoOptions
    tables = (EchoRow,)

    def plan_model(self, planner, config, entry) -> None:
        dataset = config.datasets.id.name
        store = planner.store(model_subject(entry.name), dataset)  # the extraction it reads, planned once
        planner.add(EchoTask(entry.name, dataset, self.options(config), (store,)))

    def report(self, page, models: Sequence[Any]) -> str | None:
        rows = page.read(EchoRow)
        if not rows:
            return None
        table = ReportTable("echo", "Mean norm of h", ("Model",), (("", ("Mean norm",)),),
                            tuple((row.model, f"{row.mean_norm:.4f}") for row in rows),
                            "scale x the mean L2 norm of h on the id set.", ("echo",))
        return page.table(table)
