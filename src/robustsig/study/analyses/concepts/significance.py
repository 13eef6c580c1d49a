"""Concept counts controlled for chance: for each model and basis of the concepts analysis, the label-permutation
test of every concept (:func:`robustsig.concept_significance`) on the same balanced sets as its AP matrix, and
Benjamini-Hochberg over the concepts: ``concept_significance.csv`` puts the raw count of eq. 5, its chance level
and the significant count side by side; ``results/concept_ap/SUBJECT_BASIS_significance.json`` keeps every
concept's max AP, p-value and adjusted p-value.

It runs with the concepts analysis (``analyses.concepts.permutations``, 0 turns it off; ``alpha``), with that
analysis's threshold, sets (``min_positives``, ``seed``) and AP orientation (``analyses.concepts.orientation``: the
paper's one-sided AP of ``h . v_i`` by default, with :func:`robustsig.head_svd`'s sign convention, the
largest-magnitude entry of each ``v_i`` positive; or the ``both`` variant).
The permutations run on the study's device.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from robustsig._atomic import write_text_atomic
from robustsig.metrics.significance import (BOUND_SHARE, DEFAULT_STOP_AFTER, FIRST_STAGE, STAGE_GROWTH,
                                            benjamini_hochberg, concatenate, permutation_p_values)
from robustsig.report.tables import ReportTable, decimal, integer, pool_table
from robustsig.study.analyses.concepts.ap import (SIGN_CONVENTION, ap_device, ap_paths, concept_members,
                                                  concept_score_groups)
from robustsig.study.analyses.concepts.options import ORIENTATION_TITLES, ConceptsOptions
from robustsig.study.analysis import AnalysisTask, RunContext, column, has_rows, model_subject, result_table
from robustsig.study.results import ModelRow


@result_table
@dataclass(frozen=True)
class ConceptSignificanceRow:
    """Raw and chance-controlled unique concepts of a model in one basis."""

    TABLE: ClassVar[str] = "concept_significance"
    KEY: ClassVar[tuple[str, ...]] = ("model", "basis")
    model: str = column("model name")
    basis: str = column("singular or neuron")
    num_concepts: int = column("concepts tested")
    unique_concepts: int = column("eq. 5, raw: concepts with some direction at AP >= threshold")
    chance_unique: float = column("its chance level: the mean raw count when every concept's labels are permuted")
    significant_concepts: int = column("concepts counted by eq. 5 whose max AP is significant (BH at alpha)")
    discoveries: int = column("concepts significant under BH whatever their AP")
    alpha: float = column("false discovery rate")
    permutations: int = column("label permutations per concept (at most; a clearly null concept stops early)")
    threshold: float = column("the AP threshold")
    orientation: str = column("positive (the paper's one-sided AP of s) or both (the variant max(AP(s), AP(-s)))")


class ConceptSignificanceTask(AnalysisTask):
    """The permutation test of one model's concepts in one basis."""

    tag = "concept_significance"

    def __init__(self, model: str, dataset: str, basis: str, options: ConceptsOptions, needs: tuple[str, ...]) -> None:
        super().__init__(f"concept_significance:{model}:{basis}", f"{model} ({basis} basis)", needs, (model,))
        self.model = model
        self.subject = model_subject(model)
        self.dataset = dataset
        self.basis = basis
        self.options = options

    def _parameters(self) -> dict[str, Any]:
        options = self.options
        return {"basis": self.basis, "min_positives": options.min_positives, "seed": options.seed,
                "threshold": options.threshold, "permutations": options.permutations, "alpha": options.alpha,
                "orientation": options.orientation, "stop_after": DEFAULT_STOP_AFTER, "first_stage": FIRST_STAGE,
                "stage_growth": STAGE_GROWTH, "bound_share": BOUND_SHARE,
                "units": "rows of identical image files move together"}

    def provenance(self, ctx: RunContext) -> dict[str, Any]:
        return {"store": ctx.store(self.subject, self.dataset).provenance, **self._parameters(),
                "sign": SIGN_CONVENTION if self.basis == "singular" else None}

    def present(self, ctx: RunContext) -> bool:
        return has_rows(ctx.results, ConceptSignificanceRow, model=self.model, basis=self.basis)

    def compute(self, ctx: RunContext) -> str:
        begin = time.perf_counter()
        options, orientation = self.options, self.options.orientation
        verified = ctx.store(self.subject, self.dataset)
        device = ap_device(ctx.device)
        dataset = ctx.dataset(self.dataset)
        members = concept_members(verified.store, dataset, min_positives=options.min_positives, seed=options.seed)
        units = content_units(verified.store, dataset, members)
        tests, start = [], 0
        for scores, labels in concept_score_groups(verified.store, members, self.basis, device):
            tests.append(permutation_p_values(scores, labels, threshold=options.threshold,
                                              permutations=options.permutations, seed=options.seed,
                                              orientation=orientation, first_concept=start, device=device,
                                              stop_after=DEFAULT_STOP_AFTER,
                                              units=units if units == "auto" else units[start:start + len(scores)]))
            start += len(scores)
        result = benjamini_hochberg(concatenate(tests), options.alpha)
        row = ConceptSignificanceRow(self.model, self.basis, len(members), result.unique_concepts,
                                     result.chance_unique, result.significant_concepts, result.discoveries,
                                     options.alpha, options.permutations, options.threshold, orientation)
        ctx.results.replace(ConceptSignificanceRow, [row], model=self.model, basis=self.basis)
        ctx.results.record(ConceptSignificanceRow, [verified.record(self.model, self.dataset)],
                           {key: value for key, value in self._parameters().items() if key != "basis"})
        sidecar = ap_paths(ctx.results.root, self.subject.name, self.basis)[0].with_name(
            f"{self.subject.name}_{self.basis}_significance.json")
        write_text_atomic(sidecar, json.dumps({
            "model": self.model, "basis": self.basis, "store_key": verified.digest, **self._parameters(),
            "concepts": [concept.name for concept, _, _ in members], "max_ap": result.test.max_ap.tolist(),
            "p_values": result.p_values.tolist(), "adjusted": result.adjusted.tolist(),
            "permutations_drawn": result.test.drawn.tolist()}, indent=1) + "\n")
        return (f"{row.unique_concepts} unique concepts (chance level {row.chance_unique:.1f}), "
                f"{row.significant_concepts} significant at FDR {options.alpha:g}, of {row.num_concepts} "
                f"({time.perf_counter() - begin:.1f} s)")


def content_units(store: Any, dataset: Any, members: Sequence[tuple[Any, np.ndarray, np.ndarray]]
                  ) -> list[np.ndarray] | str:
    """The exchangeable units of each concept's set: rows whose image files hold the same bytes (an index that
    lists an image twice, a copy under another name) are one unit and move together under permutation (permuting
    labels between copies of one image is not exchangeable). From the dataset's file listing (content digests,
    read through the stat cache); ``"auto"`` (rows with identical scores) for a dataset without files."""
    listing = getattr(dataset, "listing", None)
    if listing is None:
        return "auto"
    digests = listing().digests
    ids = store.read("ids").numpy()
    units = []
    for _, rows, _ in members:
        keys = [digests[i] if digests[i] is not None else f"unread:{i}" for i in ids[rows].tolist()]
        units.append(np.unique(np.array(keys, dtype=object), return_inverse=True)[1].reshape(-1))
    return units


def significance_table(models: Sequence[ModelRow], rows: Sequence[Any], basis: str) -> ReportTable:
    """Unique concepts raw, their chance level, and the count significant under Benjamini-Hochberg."""
    chosen = [row for row in rows if row.basis == basis]
    values = {row.model: (integer(row.unique_concepts), decimal(1)(row.chance_unique),
                          integer(row.significant_concepts)) for row in chosen}
    detail = (f" (AP >= {chosen[0].threshold:g}, {chosen[0].permutations} label permutations per concept, FDR "
              f"{chosen[0].alpha:g}, {ORIENTATION_TITLES.get(chosen[0].orientation, chosen[0].orientation)})"
              ) if chosen else ""
    return pool_table(f"concept_significance_{basis}", f"Unique concepts against chance, {basis} basis", models,
                      values, ("Raw", "Chance level", "Significant"),
                      caption=f"Raw: eq. 5{detail}; chance level: the raw count expected when every concept's labels "
                              "are permuted inside its balanced set; significant: raw concepts whose max AP over "
                              "directions is significant under Benjamini-Hochberg.", sources=("concept_significance",))
