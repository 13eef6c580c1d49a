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
from typing import Any

from robustsig.study.config import LowRankOptions, ModelEntry, StudyConfig
from robustsig.study.plan import Planner
from robustsig.study.results import LowRankRow
from robustsig.study.subjects import model_subject
from robustsig.study.tasks import AnalysisTask, RunContext, has_rows


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
        from robustsig.models.lowrank import low_rank_curve

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


def plan(planner: Planner, config: StudyConfig, entry: ModelEntry) -> None:
    options = config.analyses.lowrank
    if options.models and entry.name not in options.models:
        return
    subject = model_subject(entry.name)
    id_name = config.datasets.id.name
    datasets = options.datasets or [dataset.name for dataset in config.datasets.evaluation()]
    needs = tuple(planner.store(subject, name) for name in dict.fromkeys([id_name, *datasets]))
    planner.add(LowRankTask(entry.name, datasets, id_name, [d.name for d in config.datasets.shift], options, needs))
