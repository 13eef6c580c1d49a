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

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from robustsig.study.analyses.predict_er.options import PredictErOptions
from robustsig.study.analyses.predict_er.report import predict_er_section
from robustsig.study.analyses.predict_er.step import READS, PredictErTask
from robustsig.study.analyses.predict_er.tables import (BASIS, SIGNATURES, ErPredictionRow, ErPredictorRow,
                                                        ErTrackingRow, LabelFreeRow, SignatureRow, evaluate,
                                                        merge_groups, predict_er_tables)
from robustsig.study.analysis import Analysis, Planner, model_subject, unknown_models
from robustsig.study.results import ModelRow

if TYPE_CHECKING:
    from robustsig.report.page import Page
    from robustsig.study.config import StudyConfig

__all__ = ["ErPredictionRow", "ErPredictorRow", "ErTrackingRow", "LabelFreeRow", "PredictEr", "PredictErOptions",
           "SIGNATURES", "SignatureRow", "evaluate", "merge_groups", "predict_er_tables"]


class PredictEr(Analysis):
    """Signatures as ER predictors (see the module notes); it runs after every other analysis and reads their
    tables."""

    name = "predict_er"
    title = "Signatures as ER predictors"
    Options = PredictErOptions
    tables = (SignatureRow, LabelFreeRow, ErPredictionRow, ErPredictorRow, ErTrackingRow)
    essential = ("signatures", "er_predictors")

    def check(self, config: StudyConfig) -> list[str]:
        options = config.analyses.predict_er
        problems = []
        if options.enabled and not config.datasets.shift:
            problems.append("analyses.predict_er: expected datasets.shift (ER needs shift sets); add shift sets or "
                            "remove predict_er")
        listed = [(f"analyses.predict_er.groups[{i}][{j}]", name) for i, group in enumerate(options.groups or [])
                  for j, name in enumerate(group)]
        problems += unknown_models(config, listed)
        seen: dict[str, str] = {}
        for where, name in listed:
            if name in seen:
                problems.append(f"{where}: model {name!r} is already in {seen[name]}; expected each model in one "
                                "group at most")
            seen.setdefault(name, where.rsplit("[", 1)[0])
        return problems

    def select(self, section: dict[str, Any], models: set[str]) -> dict[str, Any] | None:
        """The groups narrowed to the selected models."""
        groups = [[name for name in group if name in models] for group in section.get("groups") or []]
        return {**section, "groups": [group for group in groups if group] or None}

    def plan_pool(self, planner: Planner, config: StudyConfig) -> None:
        options = config.analyses.predict_er
        pairs = [[pair.zero_shot, pair.finetuned] for pair in config.analyses.wiseft.pairs
                 ] if config.analyses.wiseft is not None and config.analyses.wiseft.enabled else []
        options = options.model_copy(update={"groups": merge_groups([*(options.groups or []), *pairs]) or None})
        shifts = [dataset.name for dataset in config.datasets.shift]
        id_name = config.datasets.id.name
        models = config.model_names()
        planned = {task.id for task in planner}
        reads = [f"{analysis}:{model}" for model in models for analysis in READS]
        reads += [f"concept_significance:{model}:{BASIS}" for model in models]
        if config.analyses.wiseft is not None:
            reads += [f"wiseft:{pair.name}" for pair in config.analyses.wiseft.pairs]
        stores = [planner.store(model_subject(model), name) for model in models
                  for name in [id_name, *(shifts if options.label_free else [])]]
        planner.add(PredictErTask(options, models, id_name, shifts, reads,
                                  tuple(stores + [step for step in reads if step in planned])))

    def keeps(self, row: Any, config: StudyConfig) -> bool:
        """Rows of models the config still has; tracking rows of Wise-FT pairs it still has."""
        if isinstance(row, ErTrackingRow):
            wiseft = config.analyses.wiseft
            return wiseft is not None and row.pair in {pair.name for pair in wiseft.pairs}
        return super().keeps(row, config)

    def report(self, page: Page, models: Sequence[ModelRow]) -> str | None:
        return predict_er_section(page, models)
