"""Wise-FT sweeps: for each pair and alpha, the model ``(1 - alpha) theta_zero_shot + alpha theta_finetuned``
(:func:`robustsig.interpolate`) is extracted like a pool model, and its accuracy, ER, kurtosis and unique concepts
are computed from its stores: ``wiseft.csv``.

Each sweep point has its own stores (``STORE_DIR/PAIR@alpha=A/DATASET``), reused by later runs; alpha 0 and 1 are
the pool models themselves, whose stores are shared. A point needs the id set (accuracy, kurtosis), the shift sets
(ACC(S) and ER, when the study has shift sets) and Broden (unique concepts in the singular basis, when ``concepts``
is on; the AP matrix is saved like a model's, and the threshold is the concepts analysis's).
"""

from __future__ import annotations

from typing import Any

from robustsig.metrics.concepts import concept_summary
from robustsig.study.analyses import concepts as concepts_analysis
from robustsig.study.analyses._streams import store_kurtosis
from robustsig.study.analyses.accuracy import shift_robustness, subject_accuracies
from robustsig.study.config import StudyConfig, WiseFtOptions, WiseFtPair
from robustsig.study.plan import Planner
from robustsig.study.results import WiseFtRow
from robustsig.study.subjects import Subject, wiseft_subject
from robustsig.study.tasks import AnalysisTask, RunContext, has_rows

BASIS = "singular"


class WiseFtTask(AnalysisTask):
    """The sweep of one pair."""

    tag = "wiseft"

    def __init__(self, pair: WiseFtPair, options: WiseFtOptions, datasets: list[str], shifts: list[str],
                 threshold: float | None, ap_tasks: dict[float, str], needs: tuple[str, ...]) -> None:
        super().__init__(f"wiseft:{pair.name}", f"{pair.name} ({pair.zero_shot} -> {pair.finetuned})", needs,
                         (pair.zero_shot, pair.finetuned))
        self.pair = pair
        self.options = options
        self.datasets = datasets
        self.shifts = shifts
        self.threshold = threshold
        self.ap_tasks = ap_tasks

    def _points(self) -> list[tuple[float, Subject]]:
        return [(float(alpha), wiseft_subject(self.pair, alpha)) for alpha in self.options.alphas]

    def provenance(self, ctx: RunContext) -> dict[str, Any]:
        return {"points": {repr(alpha): {"stores": {name: ctx.store(subject, name).provenance
                                                    for name in self.datasets},
                                         "ap": ctx.ledger.digest(self.ap_tasks[alpha]) if self.ap_tasks else None}
                           for alpha, subject in self._points()},
                "kurtosis": self.options.kurtosis, "threshold": self.threshold, "shift_sets": self.shifts,
                "baseline": ctx.baseline.provenance() if self.shifts else None}

    def present(self, ctx: RunContext) -> bool:
        return has_rows(ctx.results, WiseFtRow, pair=self.pair.name)

    def compute(self, ctx: RunContext) -> str:
        id_name = self.datasets[0]
        rows = []
        for alpha, subject in self._points():
            accuracies = subject_accuracies(ctx, subject, [id_name, *self.shifts])
            acc_id = accuracies[id_name]
            acc_shift, er = shift_robustness(acc_id, {name: accuracies[name] for name in self.shifts}, ctx.baseline)
            kurtosis = store_kurtosis(ctx.store(subject, id_name).store).compute() if self.options.kurtosis else None
            unique = None
            if self.ap_tasks:
                ap, names, _ = concepts_analysis.load_ap(ctx.results.root, subject.name, BASIS)
                unique = concept_summary(ap, self.threshold, names).unique_concepts
            rows.append(WiseFtRow(self.pair.name, alpha, acc_id, acc_shift, er, kurtosis, unique))
        ctx.results.replace(WiseFtRow, rows, pair=self.pair.name)
        ctx.results.record(WiseFtRow, [ctx.store(subject, name).record(subject.name, name)
                                       for _, subject in self._points() for name in self.datasets],
                           {"alphas": self.options.alphas, "threshold": self.threshold,
                            **(ctx.baseline.provenance() if self.shifts else {})})
        ends = (rows[0], rows[-1]) if len(rows) > 1 else rows
        return ", ".join(f"alpha {row.alpha:g}: ACC(I) {100 * row.acc_id:.1f}%"
                         + (f", ER {100 * row.er:+.1f}" if row.er is not None else "")
                         + (f", kurtosis {row.kurtosis:.1f}" if row.kurtosis is not None else "")
                         + (f", {row.unique_concepts} concepts" if row.unique_concepts is not None else "")
                         for row in ends) + f" ({len(rows)} points)"


def plan(planner: Planner, config: StudyConfig) -> None:
    options = config.analyses.wiseft
    shifts = [dataset.name for dataset in config.datasets.shift]
    datasets = [config.datasets.id.name, *shifts]
    with_concepts = options.concepts and config.datasets.broden is not None
    threshold = concepts_analysis.options_of(config).threshold if with_concepts else None
    for pair in options.pairs:
        needs: list[str] = []
        ap_tasks: dict[float, str] = {}
        for alpha in options.alphas:
            subject = wiseft_subject(pair, alpha)
            needs += [planner.store(subject, name) for name in datasets]
            if with_concepts:
                ap_tasks[float(alpha)] = concepts_analysis.ap_task(planner, config, subject, BASIS)
                needs.append(ap_tasks[float(alpha)])
        planner.add(WiseFtTask(pair, options, datasets, shifts, threshold, ap_tasks, tuple(needs)))
