"""Threshold sensitivity of the concept counts: unique concepts (eq. 5) and polysemanticity (the paper's, and the
``polysemanticity_active`` variant) of each model and basis at every AP threshold of ``concepts.thresholds``
(default 0.80, 0.85, 0.90, 0.95; the paper's footnote 4 says its conclusions hold at 0.85).

``concept_thresholds:MODEL`` reads the AP matrices the concepts analysis saved (``results/concept_ap/``) and writes
``concept_thresholds.csv``. Its provenance is the digests of those AP steps and the thresholds, so a changed sweep
reruns only this step: no extraction and no AP matrix is recomputed. The report draws the sweep as a figure.
"""

from __future__ import annotations

from typing import Any

from robustsig.metrics.concepts import concept_threshold_sweep
from robustsig.study.analyses import concepts as concepts_analysis
from robustsig.study.config import ConceptsOptions, ModelEntry, StudyConfig
from robustsig.study.plan import Planner
from robustsig.study.results import ConceptThresholdRow
from robustsig.study.subjects import model_subject
from robustsig.study.tasks import AnalysisTask, RunContext, has_rows


class ConceptThresholdsTask(AnalysisTask):
    """One model's unique concepts and polysemanticity at every threshold of the sweep, per basis."""

    tag = "concept_thresholds"

    def __init__(self, model: str, options: ConceptsOptions, ap_tasks: dict[str, str]) -> None:
        super().__init__(f"concept_thresholds:{model}", model, tuple(ap_tasks.values()), (model,))
        self.model = model
        self.subject = model_subject(model)
        self.thresholds = sorted(options.thresholds)
        self.orientation = options.orientation
        self.ap_tasks = ap_tasks

    def provenance(self, ctx: RunContext) -> dict[str, Any]:
        return {"ap": {basis: ctx.ledger.digest(task) for basis, task in self.ap_tasks.items()},
                "thresholds": self.thresholds, "orientation": self.orientation}

    def present(self, ctx: RunContext) -> bool:
        return has_rows(ctx.results, ConceptThresholdRow, model=self.model)

    def compute(self, ctx: RunContext) -> str:
        rows, texts = [], []
        for basis in self.ap_tasks:
            ap, _, _ = concepts_analysis.load_ap(ctx.results.root, self.subject.name, basis)
            sweep = concept_threshold_sweep(ap, self.thresholds)
            rows += [ConceptThresholdRow(self.model, basis, float(t), int(u), float(p), float(a), self.orientation)
                     for t, u, p, a in zip(sweep["threshold"], sweep["unique_concepts"], sweep["polysemanticity"],
                                           sweep["polysemanticity_active"])]
            texts.append(f"{basis}: " + ", ".join(f"{u} at {t:g}" for t, u in zip(sweep["threshold"],
                                                                                 sweep["unique_concepts"])))
        ctx.results.replace(ConceptThresholdRow, rows, model=self.model)
        ctx.results.record(ConceptThresholdRow, [], {"thresholds": self.thresholds, "orientation": self.orientation,
                                                     "ap_matrices": f"results/{concepts_analysis.AP_DIR}/"
                                                                    "MODEL_BASIS.npy"})
        return "unique concepts " + "; ".join(texts)


def plan(planner: Planner, config: StudyConfig, entry: ModelEntry) -> None:
    """The sweep step of ``entry``, after its AP steps (added by the concepts analysis, or here when new)."""
    options = concepts_analysis.options_of(config)
    subject = model_subject(entry.name)
    ap_tasks = {basis: concepts_analysis.ap_task(planner, config, subject, basis) for basis in options.bases}
    planner.add(ConceptThresholdsTask(entry.name, options, ap_tasks))
