"""Threshold sensitivity of the concept counts: unique concepts (eq. 5) and polysemanticity (the paper's, and the
``polysemanticity_active`` variant) of each model and basis at every AP threshold of ``concepts.thresholds``
(default 0.80, 0.85, 0.90, 0.95; the paper's footnote 4 says its conclusions hold at 0.85), in the orientation the
study uses and, in named columns, in each orientation (the paper's one-sided ``positive`` and the ``both`` variant).

``concept_thresholds:MODEL`` reads the AP matrices the concepts analysis saved (``results/concept_ap/``) and writes
``concept_thresholds.csv``. Its provenance is the digests of those AP steps and the thresholds, so a changed sweep
reruns only this step: no extraction and no AP matrix is recomputed. The report draws the sweep as a figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from robustsig.errors import InputError
from robustsig.metrics.concepts import concept_threshold_sweep
from robustsig.report.figures import grid
from robustsig.study.analyses.concepts.ap import AP_FILES, load_ap
from robustsig.study.analyses.concepts.options import ORIENTATION_TITLES, ConceptsOptions
from robustsig.study.analysis import AnalysisTask, RunContext, column, has_rows, model_subject, result_table
from robustsig.study.results import ModelRow


@result_table
@dataclass(frozen=True)
class ConceptThresholdRow:
    """Threshold sensitivity: the concept summary of a model in one basis at each AP threshold of the sweep."""

    TABLE: ClassVar[str] = "concept_thresholds"
    KEY: ClassVar[tuple[str, ...]] = ("model", "basis", "threshold")
    model: str = column("model name")
    basis: str = column("singular or neuron")
    threshold: float = column("the AP threshold")
    unique_concepts: int = column("concepts encoded by at least one direction (eq. 5), in the orientation column's AP")
    polysemanticity: float = column("the paper's: mean concepts per direction over all directions probed")
    polysemanticity_active: float = column("variant: mean over the directions encoding at least one (NaN: none)")
    orientation: str = column("the AP of the three columns above: positive (the paper's) or both (as concepts.csv)")
    unique_concepts_positive: int = column("eq. 5 with the paper's one-sided AP")
    polysemanticity_positive: float = column("the paper's polysemanticity with the one-sided AP")
    polysemanticity_active_positive: float = column("the active-directions variant with the one-sided AP")
    unique_concepts_both: int = column("eq. 5 with the both variant, max(AP(s), AP(-s))")
    polysemanticity_both: float = column("the paper's polysemanticity with the both variant")
    polysemanticity_active_both: float = column("the active-directions variant with the both variant")


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
            sweeps = {orientation: concept_threshold_sweep(load_ap(ctx.results.root, self.subject.name, basis,
                                                                   orientation)[0], self.thresholds)
                      for orientation in ("positive", "both")}
            for i, threshold in enumerate(self.thresholds):
                rows.append(ConceptThresholdRow(self.model, basis, float(threshold),
                                                *_counts(sweeps[self.orientation], i), self.orientation,
                                                *_counts(sweeps["positive"], i), *_counts(sweeps["both"], i)))
            active = sweeps[self.orientation]
            texts.append(f"{basis}: " + ", ".join(f"{u} at {t:g}" for t, u in zip(active["threshold"],
                                                                                 active["unique_concepts"])))
        ctx.results.replace(ConceptThresholdRow, rows, model=self.model)
        ctx.results.record(ConceptThresholdRow, [], {"thresholds": self.thresholds, "orientation": self.orientation,
                                                     "ap_matrices": AP_FILES})
        return "unique concepts " + "; ".join(texts)


def _counts(sweep: dict[str, Any], i: int) -> tuple[int, float, float]:
    """Unique concepts, polysemanticity and polysemanticity_active at the ``i``-th threshold of a sweep."""
    return (int(sweep["unique_concepts"][i]), float(sweep["polysemanticity"][i]),
            float(sweep["polysemanticity_active"][i]))


def concept_thresholds_figure(models: Sequence[ModelRow], rows: Sequence[ConceptThresholdRow], basis: str) -> Figure:
    """Threshold sensitivity (footnote 4): unique concepts and the paper's polysemanticity against the AP threshold,
    one line per model (dashed: finetuned, dotted: supervised), the paper's 0.9 and its footnote's 0.85 marked."""
    rows = [row for row in rows if row.basis == basis]
    if not rows:
        raise InputError(f"concept_thresholds_figure: no row of concept_thresholds.csv in the {basis} basis")
    kinds = {model.model: model.kind for model in models}
    figure, axes = grid(2, columns=2)
    figure.suptitle(f"Concept counts against the AP threshold ({basis} basis, "
                    f"{ORIENTATION_TITLES.get(rows[0].orientation, rows[0].orientation)})")
    styles = {"finetuned": "--", "supervised": ":"}
    for i, model in enumerate(dict.fromkeys(row.model for row in rows)):
        points = sorted((row for row in rows if row.model == model), key=lambda row: row.threshold)
        for ax, name in zip(axes, ("unique_concepts", "polysemanticity")):
            ax.plot([row.threshold for row in points], [getattr(row, name) for row in points], marker=".",
                    color=f"C{i % 10}", linestyle=styles.get(kinds.get(model, ""), "-"), label=model)
    for ax, name in zip(axes, ("unique concepts (eq. 5)", "polysemanticity (mean over all directions)")):
        for mark, style in ((0.9, "-"), (0.85, ":")):
            ax.axvline(mark, color="0.6", linewidth=0.6, linestyle=style)
        ax.set_xlabel("AP threshold")
        ax.set_ylabel(name)
        ax.grid(True, linewidth=0.3)
        ax.legend(fontsize=6)
    axes[0].yaxis.set_major_locator(MaxNLocator(integer=True))
    return figure
