"""Signatures as ER predictors: does what the paper calls a "good proxy for ER" predict it for a model left out?

Tables (``results/``):

- ``signatures.csv``: one row per model, from in-distribution data only: kurtosis and the outlier-dimension count,
  the privileged-direction count and top importance ratio, the importance concentration (share of the total
  importance held by the top 20% of directions), unique concepts raw and significant (with the chance level) and
  polysemanticity in the singular basis, the mean of the all-layer kurtosis profile where the ``layer_kurtosis``
  analysis measured the model on that same set (the profile itself: ``layer_kurtosis.csv``), and the measured ER
  next to them.
- ``label_free.csv``: DoC and ATC (max-softmax and negative-entropy scores) predicted accuracy on each shift set,
  from the stored logits with each set's scoring rule (:mod:`robustsig.metrics.labelfree`), with the measured
  accuracy beside it; their mean over the shift sets gives a predicted ACC(S) and so a predicted ER.
- ``er_predictions.csv``: every predictor's held-out ER prediction for every model (a signature: the monotone fit
  on the other models; the combination: ridge on the other models; ``mean of others``: the reference; DoC/ATC:
  their label-free prediction, no fit).
- ``er_predictors.csv``: per predictor, Spearman rho, Kendall tau and MAE with bootstrap intervals over models
  (:mod:`robustsig.metrics.erpredict` says which values are ranked and why), and the plain warning when the pool
  has fewer than 5 models.
- ``er_tracking.csv``: along each Wise-FT sweep, the rank correlation of each signature the sweep measured
  (kurtosis, unique concepts) with ER across alpha.

The same tables come out of ``robustsig predict-er RESULTS_DIR`` on any results folder (without the layer profile
and label-free rows when the study did not compute them).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from robustsig.errors import DataError
from robustsig.metrics.erpredict import agreement, loo_mean, loo_monotone, loo_ridge, small_pool_note
from robustsig.study.config import PredictErOptions, StudyConfig
from robustsig.study.plan import Planner
from robustsig.study.results import (ConceptRow, ImportanceRow, KurtosisRow, LayerKurtosisRow, ModelRow, OutlierRow,
                                     PrivilegedRow, Results, RobustnessRow, WiseFtRow, _column, register_table)
from robustsig.study.subjects import model_subject
from robustsig.study.tasks import AnalysisTask, RunContext

BASIS = "singular"
TOP_FRACTION = 0.2
METHODS: tuple[str, ...] = ("doc", "atc-maxprob", "atc-entropy")
SIGNATURES: dict[str, str] = {
    "kurtosis": "activation kurtosis (eq. 2)",
    "outlier_dimensions": "outlier dimensions of h",
    "privileged_directions": "privileged directions",
    "top_ratio": "top importance / mean importance",
    "importance_concentration": "importance share of the top 20% directions",
    "unique_concepts": "unique concepts (eq. 5, raw)",
    "significant_concepts": "unique concepts significant under BH",
    "polysemanticity": "polysemanticity",
    "layer_kurtosis_mean": "mean kurtosis over the stored layers",
}
"""The signature columns that are predictors, and what each is. All are hypothesised increasing in ER."""
COMBINATION = "ridge combination"
REFERENCE = "mean of others"


# --------------------------------------------------------------------------- tables

@register_table
@dataclass(frozen=True)
class SignatureRow:
    """A model's robustness signatures, from in-distribution data only (empty: not computed)."""

    TABLE: ClassVar[str] = "signatures"
    KEY: ClassVar[tuple[str, ...]] = ("model",)
    model: str = _column("model name")
    dataset: str = _column("the in-distribution set the activation signatures come from")
    kurtosis: float | None = _column("activation kurtosis (eq. 2)")
    outlier_dimensions: int | None = _column("dimensions of h with mean |h_i| >= 5x the average dimension's")
    privileged_directions: int | None = _column("directions with importance >= the privileged ratio x the mean")
    top_ratio: float | None = _column("the largest importance over the mean importance")
    importance_concentration: float | None = _column("share of the total importance held by the top 20% of "
                                                     "directions")
    unique_concepts: int | None = _column("eq. 5, raw, singular basis")
    significant_concepts: int | None = _column("unique concepts whose max AP is significant (BH), singular basis")
    chance_unique: float | None = _column("the chance level of unique_concepts")
    polysemanticity: float | None = _column("polysemanticity (concepts.csv), singular basis")
    layers: int | None = _column("layer taps of the model in layer_kurtosis.csv on the same dataset")
    layer_kurtosis_mean: float | None = _column("mean kurtosis over those layers")
    er: float | None = _column("the measured ER (robustness.csv), for the scatter")


@register_table
@dataclass(frozen=True)
class LabelFreeRow:
    """A label-free prediction of a model's accuracy on one shift set."""

    TABLE: ClassVar[str] = "label_free"
    KEY: ClassVar[tuple[str, ...]] = ("model", "method", "dataset")
    model: str = _column("model name")
    method: str = _column("doc, atc-maxprob or atc-entropy")
    dataset: str = _column("the shift set")
    predicted_accuracy: float = _column("predicted from its unlabelled logits and the labelled id set")
    accuracy: float = _column("the measured accuracy, for reference")


@register_table
@dataclass(frozen=True)
class ErPredictionRow:
    """A predictor's held-out ER prediction for one model."""

    TABLE: ClassVar[str] = "er_predictions"
    KEY: ClassVar[tuple[str, ...]] = ("predictor", "model")
    predictor: str = _column("a signature column, 'ridge combination', 'mean of others', or doc/atc-*")
    kind: str = _column("signature, combination, reference or label-free")
    model: str = _column("model name")
    er: float = _column("measured ER")
    predicted_er: float = _column("held-out prediction (label-free: direct prediction)")


@register_table
@dataclass(frozen=True)
class ErPredictorRow:
    """How well one predictor predicts ER over the pool, leaving each model out."""

    TABLE: ClassVar[str] = "er_predictors"
    KEY: ClassVar[tuple[str, ...]] = ("predictor",)
    predictor: str = _column("see er_predictions.csv")
    kind: str = _column("signature, combination, reference or label-free")
    models: int = _column("models with ER and this predictor")
    ranked: str = _column("what rho and tau rank: the signature itself, or the predictions")
    spearman: float | None = _column("Spearman rho with ER")
    spearman_low: float | None = _column("bootstrap interval over models, low end")
    spearman_high: float | None = _column("bootstrap interval, high end")
    kendall: float | None = _column("Kendall tau-b with ER")
    kendall_low: float | None = _column("bootstrap interval, low end")
    kendall_high: float | None = _column("bootstrap interval, high end")
    mae: float = _column("mean absolute error of the predictions (ER units, fractions)")
    mae_low: float = _column("bootstrap interval, low end")
    mae_high: float = _column("bootstrap interval, high end")
    note: str = _column("the small-pool warning, or empty")


@register_table
@dataclass(frozen=True)
class ErTrackingRow:
    """Does a signature track ER along a Wise-FT sweep?"""

    TABLE: ClassVar[str] = "er_tracking"
    KEY: ClassVar[tuple[str, ...]] = ("pair", "signature")
    pair: str = _column("Wise-FT pair")
    signature: str = _column("kurtosis or unique_concepts")
    points: int = _column("alphas with both the signature and ER")
    spearman: float | None = _column("Spearman rho of the signature and ER across alpha")
    kendall: float | None = _column("Kendall tau-b across alpha")


# --------------------------------------------------------------------------- assembling the signatures

def _read(results: Results, table: type) -> list:
    return results.read(table) if results.has(table) else []


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def signature_rows(results: Results) -> list[SignatureRow]:
    """The signature table from the results tables present (a missing table leaves its columns empty). The layer
    profile of a model is its ``layer_kurtosis.csv`` rows on the dataset its kurtosis was measured on.

    Args:
        results: the results folder.

    Raises:
        DataError: the folder has neither models.csv nor robustness.csv.
    """
    from robustsig.metrics.directions import importance_concentration
    from robustsig.study.analyses.significance import ConceptSignificanceRow

    models = [row.model for row in _read(results, ModelRow)] or [row.model for row in _read(results, RobustnessRow)]
    if not models:
        raise DataError(f"{results.root} holds neither models.csv nor robustness.csv: expected the results/ folder of "
                        "a study run with the accuracy analysis and shift sets")
    kurtosis = {row.model: row for row in _read(results, KurtosisRow)}
    layers: dict[str, list[LayerKurtosisRow]] = {}
    for row in _read(results, LayerKurtosisRow):
        if row.model in kurtosis and row.dataset == kurtosis[row.model].dataset:
            layers.setdefault(row.model, []).append(row)
    outliers: dict[str, int] = {}
    for row in _read(results, OutlierRow):
        outliers[row.model] = outliers.get(row.model, 0) + 1
    privileged = {row.model: row for row in _read(results, PrivilegedRow)}
    importance: dict[str, list[float]] = {}
    for row in _read(results, ImportanceRow):
        importance.setdefault(row.model, []).append(row.importance)
    concepts = {row.model: row for row in _read(results, ConceptRow) if row.basis == BASIS}
    significance = {row.model: row for row in _read(results, ConceptSignificanceRow) if row.basis == BASIS}
    robustness = {row.model: row for row in _read(results, RobustnessRow)}
    rows = []
    for model in models:
        k, p, c, s, r = (table.get(model) for table in (kurtosis, privileged, concepts, significance, robustness))
        profile = layers.get(model, [])
        rows.append(SignatureRow(
            model, k.dataset if k else "",
            k.kurtosis if k else None, outliers.get(model, 0) if k else None,
            p.num_privileged if p else None, _finite(p.top_ratio) if p else None,
            importance_concentration(importance[model], TOP_FRACTION) if model in importance else None,
            c.unique_concepts if c else None, s.significant_concepts if s else None,
            s.chance_unique if s else None, _finite(c.polysemanticity) if c else None,
            len(profile) or None, float(np.mean([row.kurtosis for row in profile])) if profile else None,
            r.er if r else None))
    return rows


def label_free_er(results: Results, label_free: Sequence[LabelFreeRow] | None = None) -> dict[str, dict[str, float]]:
    """Method -> model -> predicted ER: the mean predicted accuracy over the shift sets as ACC(S), with the model's
    ACC(I) and baseline line from robustness.csv."""
    from robustsig.metrics.robustness import effective_robustness

    rows = list(label_free) if label_free is not None else _read(results, LabelFreeRow)
    robustness = {row.model: row for row in _read(results, RobustnessRow)}
    predicted: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        predicted.setdefault(row.method, {}).setdefault(row.model, []).append(row.predicted_accuracy)
    return {method: {model: float(effective_robustness(robustness[model].acc_id, float(np.mean(values)),
                                                       robustness[model].b1, robustness[model].b0))
                     for model, values in by_model.items() if model in robustness}
            for method, by_model in predicted.items()}


# --------------------------------------------------------------------------- evaluating the predictors

@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate` found: the predictor rows, the held-out predictions, and the pool-level note."""

    predictors: list[ErPredictorRow]
    predictions: list[ErPredictionRow]
    note: str | None


def _predictor_row(name: str, kind: str, ranked: str, models: Sequence[str], er: np.ndarray, predicted: np.ndarray,
                   ranked_values: np.ndarray | None, resamples: int, seed: int) -> tuple[ErPredictorRow, list]:
    result = agreement(predicted, er, ranked=ranked_values, resamples=resamples, seed=seed)
    clean = lambda value: None if not math.isfinite(value) else float(value)  # noqa: E731
    row = ErPredictorRow(name, kind, len(models), ranked, clean(result.spearman), clean(result.spearman_ci[0]),
                         clean(result.spearman_ci[1]), clean(result.kendall), clean(result.kendall_ci[0]),
                         clean(result.kendall_ci[1]), result.mae, result.mae_ci[0], result.mae_ci[1],
                         result.note or "")
    return row, [ErPredictionRow(name, kind, model, float(y), float(p)) for model, y, p in zip(models, er, predicted)]


def evaluate(signatures: Sequence[SignatureRow], label_free: Mapping[str, Mapping[str, float]] | None = None, *,
             combination: Sequence[str] | None = None, resamples: int = 2000, seed: int = 0) -> Evaluation:
    """Leave-one-model-out prediction of ER by each signature, the ridge combination, the mean of the other models
    (the reference) and the label-free baselines.

    Args:
        signatures: the signature table (models without ER are left out).
        label_free: method -> model -> predicted ER (:func:`label_free_er`).
        combination: the signatures the combination uses (default: every signature known for every model with ER,
            when there are at least two).
        resamples, seed: the bootstrap over models.

    Returns:
        :class:`Evaluation`; with fewer than 3 models with an ER, no predictor and a note saying why.

    Raises:
        DataError: the combination names an unknown signature.
    """
    rows = [row for row in signatures if row.er is not None]
    if len(rows) < 3:
        return Evaluation([], [], f"{len(rows)} model(s) have an ER: leave-one-model-out prediction needs at least "
                                  "3 (ER is undefined for a model with ACC(I) 0 or 1, and needs shift sets)")
    unknown = sorted(set(combination or ()) - set(SIGNATURES))
    if unknown:
        raise DataError(f"analyses.predict_er.combination: unknown signature(s) {unknown}; expected some of "
                        f"{', '.join(SIGNATURES)}")
    predictors, predictions = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the small-pool note goes into every row instead
        for name in SIGNATURES:
            known = [row for row in rows if getattr(row, name) is not None]
            if len(known) < 3:
                continue
            x = np.array([float(getattr(row, name)) for row in known])
            er = np.array([row.er for row in known])
            made = _predictor_row(name, "signature", "signature", [row.model for row in known], er,
                                  loo_monotone(x, er), x, resamples, seed)
            predictors.append(made[0])
            predictions += made[1]
        complete = [name for name in SIGNATURES if all(getattr(row, name) is not None for row in rows)]
        chosen = list(combination) if combination else complete
        usable = [name for name in chosen if name in complete]
        er = np.array([row.er for row in rows])
        models = [row.model for row in rows]
        if len(usable) >= 2:
            X = np.array([[float(getattr(row, name)) for name in usable] for row in rows])
            made = _predictor_row(f"{COMBINATION} ({', '.join(usable)})", "combination", "prediction", models, er,
                                  loo_ridge(X, er), None, resamples, seed)
            predictors.append(made[0])
            predictions += made[1]
        made = _predictor_row(REFERENCE, "reference", "prediction", models, er, loo_mean(er), None, resamples, seed)
        predictors.append(made[0])
        predictions += made[1]
        for method, by_model in (label_free or {}).items():
            known = [row for row in rows if row.model in by_model]
            if len(known) >= 2:
                er_known = np.array([row.er for row in known])
                made = _predictor_row(method, "label-free", "prediction", [row.model for row in known], er_known,
                                      np.array([by_model[row.model] for row in known]), None, resamples, seed)
                predictors.append(made[0])
                predictions += made[1]
    return Evaluation(predictors, predictions, small_pool_note(len(rows)))


def tracking_rows(wiseft: Sequence[WiseFtRow]) -> list[ErTrackingRow]:
    """Per Wise-FT pair and measured signature, the rank correlations with ER across alpha."""
    from robustsig.metrics.erpredict import kendall_rows, spearman_rows

    out = []
    for pair in dict.fromkeys(row.pair for row in wiseft):
        points = sorted((row for row in wiseft if row.pair == pair), key=lambda row: row.alpha)
        for signature in ("kurtosis", "unique_concepts"):
            known = [row for row in points if getattr(row, signature) is not None and row.er is not None]
            if len(known) < 2:
                continue
            x = np.array([float(getattr(row, signature)) for row in known])
            y = np.array([row.er for row in known])
            rho, tau = float(spearman_rows(x, y)), float(kendall_rows(x, y))
            out.append(ErTrackingRow(pair, signature, len(known), None if math.isnan(rho) else rho,
                                     None if math.isnan(tau) else tau))
    return out


@dataclass(frozen=True)
class PredictErResult:
    """Everything :func:`predict_er_tables` computed (and wrote when asked)."""

    signatures: list[SignatureRow]
    evaluation: Evaluation
    tracking: list[ErTrackingRow]

    def to_dict(self) -> dict[str, Any]:
        as_dict = lambda row: {item.name: getattr(row, item.name) for item in fields(row)}  # noqa: E731
        return {"note": self.evaluation.note, "signatures": [as_dict(row) for row in self.signatures],
                "predictors": [as_dict(row) for row in self.evaluation.predictors],
                "predictions": [as_dict(row) for row in self.evaluation.predictions],
                "tracking": [as_dict(row) for row in self.tracking]}


def predict_er_tables(results: Results, options: PredictErOptions | None = None, *, write: bool = False,
                      label_free: Sequence[LabelFreeRow] | None = None) -> PredictErResult:
    """The signature table, the leave-one-out evaluation and the Wise-FT tracking of a results folder.

    Args:
        results: the results folder.
        options: the analysis options (default: the defaults).
        write: write signatures.csv, er_predictions.csv, er_predictors.csv and er_tracking.csv.
        label_free: fresh rows (default: those in the folder).
    """
    options = options or PredictErOptions()
    signatures = signature_rows(results)
    evaluation = evaluate(signatures, label_free_er(results, label_free), combination=options.combination,
                          resamples=options.resamples, seed=options.seed)
    tracking = tracking_rows(_read(results, WiseFtRow))
    if write:
        results.write(SignatureRow, signatures)
        results.write(ErPredictionRow, evaluation.predictions)
        results.write(ErPredictorRow, evaluation.predictors)
        results.write(ErTrackingRow, tracking)
    return PredictErResult(signatures, evaluation, tracking)


# --------------------------------------------------------------------------- the study step

def _scores(store: Any, rule: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """Per-image confidences (both scores) and correctness of a store's logits under ``rule``, batch by batch."""
    import torch

    from robustsig.metrics.labelfree import SCORES, confidence_score_table
    from robustsig.metrics.scoring import top1_correct
    from robustsig.study.analyses._streams import BATCH_ROWS

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


_READS = ("accuracy", "kurtosis", "importance", "concepts", "layer_kurtosis")


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
        parameters = {"id_set": self.id_name, "signatures": list(SIGNATURES), "resamples": self.options.resamples,
                      "seed": self.options.seed, "fit": "leave-one-model-out; isotonic (increasing) per signature, "
                      "ridge (alpha 1) on z-scored signatures", "note": result.evaluation.note}
        for table in (SignatureRow, ErPredictionRow, ErPredictorRow, ErTrackingRow):
            ctx.results.record(table, records, parameters)
        best = {row.predictor: row.spearman for row in result.evaluation.predictors}
        shown = ", ".join(f"{name} {value:+.2f}" for name, value in best.items()
                          if value is not None and not name.startswith(COMBINATION))
        return (f"{len(result.signatures)} signature rows; rho with ER: {shown or 'none'}"
                + (f" (NOTE: {result.evaluation.note})" if result.evaluation.note else ""))


def plan(planner: Planner, config: StudyConfig) -> None:
    options = config.analyses.predict_er
    shifts = [dataset.name for dataset in config.datasets.shift]
    id_name = config.datasets.id.name
    models = config.model_names()
    planned = {task.id for task in planner}
    reads = [f"{analysis}:{model}" for model in models for analysis in _READS]
    reads += [f"concept_significance:{model}:{BASIS}" for model in models]
    if config.analyses.wiseft is not None:
        reads += [f"wiseft:{pair.name}" for pair in config.analyses.wiseft.pairs]
    stores = [planner.store(model_subject(model), name) for model in models
              for name in [id_name, *(shifts if options.label_free else [])]]
    planner.add(PredictErTask(options, models, id_name, shifts, reads,
                              tuple(stores + [step for step in reads if step in planned])))
