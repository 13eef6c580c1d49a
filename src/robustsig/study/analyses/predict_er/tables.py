"""The tables of the predict_er analysis and how they are computed from a results folder: the signature table, the
label-free predictions turned into ER, the leave-one-model-out evaluation of every predictor and the Wise-FT
tracking. ``robustsig predict-er RESULTS_DIR`` computes the same tables on any results folder.
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
from robustsig.study.analyses.accuracy import RobustnessRow
from robustsig.study.analyses.concepts.significance import ConceptSignificanceRow
from robustsig.study.analyses.concepts.summary import ConceptRow
from robustsig.study.analyses.importance import ImportanceRow, PrivilegedRow
from robustsig.study.analyses.kurtosis import KurtosisRow, OutlierRow
from robustsig.study.analyses.layer_kurtosis import LayerKurtosisRow
from robustsig.study.analyses.predict_er.options import PredictErOptions
from robustsig.study.analyses.wiseft import WiseFtRow
from robustsig.study.analysis import Results, column, result_table
from robustsig.study.results import ModelRow

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

@result_table
@dataclass(frozen=True)
class SignatureRow:
    """A model's robustness signatures, from in-distribution data only (empty: not computed)."""

    TABLE: ClassVar[str] = "signatures"
    KEY: ClassVar[tuple[str, ...]] = ("model",)
    model: str = column("model name")
    dataset: str = column("the in-distribution set the activation signatures come from")
    kurtosis: float | None = column("activation kurtosis (eq. 2)")
    outlier_dimensions: int | None = column("dimensions of h with mean |h_i| >= 5x the average dimension's")
    privileged_directions: int | None = column("directions with importance >= the privileged ratio x the mean")
    top_ratio: float | None = column("the largest importance over the mean importance")
    importance_concentration: float | None = column("share of the total importance held by the top 20% of "
                                                     "directions")
    unique_concepts: int | None = column("eq. 5, raw, singular basis")
    significant_concepts: int | None = column("unique concepts whose max AP is significant (BH), singular basis")
    chance_unique: float | None = column("the chance level of unique_concepts")
    polysemanticity: float | None = column("polysemanticity (concepts.csv), singular basis")
    layers: int | None = column("layer taps of the model in layer_kurtosis.csv on the same dataset")
    layer_kurtosis_mean: float | None = column("mean kurtosis over those layers")
    er: float | None = column("the measured ER (robustness.csv), for the scatter")


@result_table
@dataclass(frozen=True)
class LabelFreeRow:
    """A label-free prediction of a model's accuracy on one shift set."""

    TABLE: ClassVar[str] = "label_free"
    KEY: ClassVar[tuple[str, ...]] = ("model", "method", "dataset")
    model: str = column("model name")
    method: str = column("doc, atc-maxprob or atc-entropy")
    dataset: str = column("the shift set")
    predicted_accuracy: float = column("predicted from its unlabelled logits and the labelled id set")
    accuracy: float = column("the measured accuracy, for reference")


@result_table
@dataclass(frozen=True)
class ErPredictionRow:
    """A predictor's held-out ER prediction for one model."""

    TABLE: ClassVar[str] = "er_predictions"
    KEY: ClassVar[tuple[str, ...]] = ("predictor", "model")
    predictor: str = column("a signature column, 'ridge combination', 'mean of others', or doc/atc-*")
    kind: str = column("signature, combination, reference or label-free")
    model: str = column("model name")
    er: float = column("measured ER")
    predicted_er: float = column("held-out prediction (label-free: direct prediction)")


@result_table
@dataclass(frozen=True)
class ErPredictorRow:
    """How well one predictor predicts ER over the pool, leaving each model out."""

    TABLE: ClassVar[str] = "er_predictors"
    KEY: ClassVar[tuple[str, ...]] = ("predictor",)
    predictor: str = column("see er_predictions.csv")
    kind: str = column("signature, combination, reference or label-free")
    models: int = column("models with ER and this predictor")
    ranked: str = column("what rho and tau rank: the signature itself, or the predictions")
    spearman: float | None = column("Spearman rho with ER")
    spearman_low: float | None = column("bootstrap interval over models, low end")
    spearman_high: float | None = column("bootstrap interval, high end")
    kendall: float | None = column("Kendall tau-b with ER")
    kendall_low: float | None = column("bootstrap interval, low end")
    kendall_high: float | None = column("bootstrap interval, high end")
    mae: float = column("mean absolute error of the predictions (ER units, fractions)")
    mae_low: float = column("bootstrap interval, low end")
    mae_high: float = column("bootstrap interval, high end")
    note: str = column("the small-pool warning, or empty")


@result_table
@dataclass(frozen=True)
class ErTrackingRow:
    """Does a signature track ER along a Wise-FT sweep?"""

    TABLE: ClassVar[str] = "er_tracking"
    KEY: ClassVar[tuple[str, ...]] = ("pair", "signature")
    pair: str = column("Wise-FT pair")
    signature: str = column("kurtosis or unique_concepts")
    points: int = column("alphas with both the signature and ER")
    spearman: float | None = column("Spearman rho of the signature and ER across alpha")
    kendall: float | None = column("Kendall tau-b across alpha")


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

def merge_groups(lists: Sequence[Sequence[str]]) -> list[list[str]]:
    """Lists of models that share weights, merged where they share a model (the groups are the connected
    components), each group in order of first mention.

    >>> merge_groups([["a", "b"], ["c"], ["b", "d"], ["e", "c"]])
    [['a', 'b', 'd'], ['c', 'e']]
    """
    parent: dict[str, str] = {}

    def root(name: str) -> str:
        while parent.setdefault(name, name) != name:
            name = parent[name]
        return name

    for members in lists:
        for name in members[1:]:
            parent[root(name)] = root(members[0])
        root(members[0])
    groups: dict[str, list[str]] = {}
    for name in parent:
        groups.setdefault(root(name), []).append(name)
    return list(groups.values())


def group_labels(models: Sequence[str], groups: Sequence[Sequence[str]] | None) -> list[str] | None:
    """The group of each model (a model listed in no group is its own), or None without groups."""
    if not groups:
        return None
    of = {name: members[0] for members in merge_groups(groups) for name in members}
    return [of.get(model, model) for model in models]

@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate` found: the predictor rows, the held-out predictions, and the pool-level note."""

    predictors: list[ErPredictorRow]
    predictions: list[ErPredictionRow]
    note: str | None


def _predictor_row(name: str, kind: str, ranked: str, models: Sequence[str], er: np.ndarray, predicted: np.ndarray,
                   ranked_values: np.ndarray | None, resamples: int, seed: int,
                   labels: Sequence[str] | None) -> tuple[ErPredictorRow, list]:
    result = agreement(predicted, er, ranked=ranked_values, resamples=resamples, seed=seed, groups=labels)
    clean = lambda value: None if not math.isfinite(value) else float(value)  # noqa: E731
    row = ErPredictorRow(name, kind, len(models), ranked, clean(result.spearman), clean(result.spearman_ci[0]),
                         clean(result.spearman_ci[1]), clean(result.kendall), clean(result.kendall_ci[0]),
                         clean(result.kendall_ci[1]), result.mae, result.mae_ci[0], result.mae_ci[1],
                         result.note or "")
    return row, [ErPredictionRow(name, kind, model, float(y), float(p)) for model, y, p in zip(models, er, predicted)]


def evaluate(signatures: Sequence[SignatureRow], label_free: Mapping[str, Mapping[str, float]] | None = None, *,
             combination: Sequence[str] | None = None, resamples: int = 2000, seed: int = 0,
             groups: Sequence[Sequence[str]] | None = None) -> Evaluation:
    """Leave-one-model-out prediction of ER by each signature, the ridge combination, the mean of the other models
    (the reference) and the label-free baselines; leave-one-group-out with ``groups``.

    Args:
        signatures: the signature table (models without ER are left out).
        label_free: method -> model -> predicted ER (:func:`label_free_er`).
        combination: the signatures the combination uses (default: every signature known for every model with ER,
            when there are at least two).
        resamples, seed: the bootstrap over models (over groups).
        groups: lists of models that share weights (:func:`merge_groups`): a model is predicted by fits on the
            other groups only, and the bootstrap draws whole groups; a model listed nowhere is its own group.

    Returns:
        :class:`Evaluation`; with fewer than 3 models with an ER (or 2 groups), no predictor and a note saying
        why.

    Raises:
        DataError: the combination names an unknown signature.
    """
    rows = [row for row in signatures if row.er is not None]
    if len(rows) < 3:
        return Evaluation([], [], f"{len(rows)} model(s) have an ER: leave-one-model-out prediction needs at least "
                                  "3 (ER is undefined for a model with ACC(I) 0 or 1, and needs shift sets)")
    labels = group_labels([row.model for row in rows], groups)
    if labels is not None and len(set(labels)) < 2:
        return Evaluation([], [], f"the {len(rows)} models with an ER are all in one group of models that share "
                                  "weights: leave-one-group-out prediction needs at least 2 groups")
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
            known_labels = group_labels([row.model for row in known], groups)
            if known_labels is not None and len(set(known_labels)) < 2:
                continue
            made = _predictor_row(name, "signature", "signature", [row.model for row in known], er,
                                  loo_monotone(x, er, groups=known_labels), x, resamples, seed, known_labels)
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
                                  loo_ridge(X, er, groups=labels), None, resamples, seed, labels)
            predictors.append(made[0])
            predictions += made[1]
        made = _predictor_row(REFERENCE, "reference", "prediction", models, er, loo_mean(er, groups=labels), None,
                              resamples, seed, labels)
        predictors.append(made[0])
        predictions += made[1]
        for method, by_model in (label_free or {}).items():
            known = [row for row in rows if row.model in by_model]
            if len(known) >= 2:
                er_known = np.array([row.er for row in known])
                made = _predictor_row(method, "label-free", "prediction", [row.model for row in known], er_known,
                                      np.array([by_model[row.model] for row in known]), None, resamples, seed,
                                      group_labels([row.model for row in known], groups))
                predictors.append(made[0])
                predictions += made[1]
    return Evaluation(predictors, predictions, small_pool_note(len(rows), None if labels is None else len(set(labels))))


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
                          resamples=options.resamples, seed=options.seed, groups=options.groups)
    tracking = tracking_rows(_read(results, WiseFtRow))
    if write:
        results.write(SignatureRow, signatures)
        results.write(ErPredictionRow, evaluation.predictions)
        results.write(ErPredictorRow, evaluation.predictors)
        results.write(ErTrackingRow, tracking)
    return PredictErResult(signatures, evaluation, tracking)
