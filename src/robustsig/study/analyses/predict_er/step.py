"""The step of the predict_er analysis: the label-free predictions from the stored logits, then the tables of
:mod:`robustsig.study.analyses.predict_er.tables` for the whole pool."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from robustsig.study.analyses.predict_er.options import PredictErOptions
from robustsig.study.analyses.predict_er.tables import (COMBINATION, METHODS, SIGNATURES, ErPredictionRow,
                                                        ErPredictorRow, ErTrackingRow, LabelFreeRow, SignatureRow,
                                                        predict_er_tables)
from robustsig.study.analysis import AnalysisTask, RunContext, model_subject

def _scores(store: Any, rule: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """Per-image confidences (both scores) and correctness of a store's logits under ``rule``, batch by batch."""
    import torch

    from robustsig.metrics.labelfree import SCORES, confidence_score_table
    from robustsig.metrics.scoring import top1_correct
    from robustsig.study.streams import BATCH_ROWS

    scores: dict[str, list] = {score: [] for score in SCORES}
    correct = []
    for batch in store.batches(["logits", "labels"], BATCH_ROWS):
        for score, values in confidence_score_table(batch["logits"], rule=rule).items():
            scores[score].append(values)
        correct.append(top1_correct(batch["logits"], batch["labels"], **rule).cpu())
    return {score: torch.cat(parts) for score, parts in scores.items()}, torch.cat(correct).to(torch.float64)


def label_free_rows(ctx: RunContext, model: str, id_name: str, shifts: Sequence[str]) -> list[LabelFreeRow]:
    """DoC and ATC predictions of ``model``'s accuracy on each shift set, from its stores."""
    from robustsig.data.scoring import scoring_rule
    from robustsig.metrics.labelfree import atc_from_scores, doc_from_scores

    subject = model_subject(model)
    id_scores, id_correct = _scores(ctx.store(subject, id_name).store, scoring_rule(ctx.dataset(id_name)))
    acc_id = float(id_correct.mean())
    rows = []
    for name in shifts:
        scores, correct = _scores(ctx.store(subject, name).store, scoring_rule(ctx.dataset(name)))
        accuracy = float(correct.mean())
        rows += [LabelFreeRow(model, "doc", name, doc_from_scores(acc_id, id_scores["maxprob"], scores["maxprob"]),
                              accuracy),
                 LabelFreeRow(model, "atc-maxprob", name,
                              atc_from_scores(id_scores["maxprob"], id_correct, scores["maxprob"]), accuracy),
                 LabelFreeRow(model, "atc-entropy", name,
                              atc_from_scores(id_scores["entropy"], id_correct, scores["entropy"]), accuracy)]
    return rows


READS = ("accuracy", "kurtosis", "importance", "concepts", "layer_kurtosis")


class PredictErTask(AnalysisTask):
    """The whole pool's signature table and ER prediction (after every model's own steps)."""

    tag = "predict_er"

    def __init__(self, options: PredictErOptions, models: Sequence[str], id_name: str, shifts: Sequence[str],
                 reads: Sequence[str], needs: tuple[str, ...]) -> None:
        super().__init__("predict_er", f"{len(models)} models", needs, tuple(models))
        self.options = options
        self.pool = list(models)
        self.id_name = id_name
        self.shifts = list(shifts)
        self.reads = list(reads)

    def provenance(self, ctx: RunContext) -> dict[str, Any]:
        stores = {model: {name: ctx.store(model_subject(model), name).provenance
                          for name in [self.id_name, *(self.shifts if self.options.label_free else [])]}
                  for model in self.pool}
        return {"options": self.options.model_dump(mode="json"), "stores": stores,
                "reads": {step: ctx.ledger.digest(step) for step in self.reads}}

    def present(self, ctx: RunContext) -> bool:
        return all(ctx.results.has(table) for table in (SignatureRow, ErPredictorRow, ErPredictionRow))

    def compute(self, ctx: RunContext) -> str:
        records = [ctx.store(model_subject(model), self.id_name).record(model, self.id_name) for model in self.pool]
        label_free = None
        if self.options.label_free:
            label_free = [row for model in self.pool for row in label_free_rows(ctx, model, self.id_name, self.shifts)]
            ctx.results.write(LabelFreeRow, label_free)
            ctx.results.record(LabelFreeRow, records + [ctx.store(model_subject(model), name).record(model, name)
                                                        for model in self.pool for name in self.shifts],
                               {"methods": list(METHODS), "scoring": "each dataset's rule (class subset or map)"})
        result = predict_er_tables(ctx.results, self.options, write=True, label_free=label_free)
        held_out = ("leave-one-group-out (models that share weights, see groups; the bootstrap draws groups)"
                    if self.options.groups else "leave-one-model-out")
        parameters = {"id_set": self.id_name, "signatures": list(SIGNATURES), "resamples": self.options.resamples,
                      "seed": self.options.seed, "fit": f"{held_out}; isotonic (increasing) per signature, "
                      "ridge (alpha 1) on z-scored signatures", "groups": self.options.groups,
                      "note": result.evaluation.note}
        for table in (SignatureRow, ErPredictionRow, ErPredictorRow, ErTrackingRow):
            ctx.results.record(table, records, parameters)
        best = {row.predictor: row.spearman for row in result.evaluation.predictors}
        shown = ", ".join(f"{name} {value:+.2f}" for name, value in best.items()
                          if value is not None and not name.startswith(COMBINATION))
        return (f"{len(result.signatures)} signature rows; rho with ER: {shown or 'none'}"
                + (f" (NOTE: {result.evaluation.note})" if result.evaluation.note else ""))
