"""The analyses of a study, one module each, and :func:`build_plan`, which turns a config into the plan's tasks.

Per-model analyses (``accuracy``, ``kurtosis``, ``importance``, ``pruning``, ``concepts``) add their tasks model by
model; pair analyses (``cka``, ``wiseft``) and the Venn overlaps of ``concepts`` come after every model.
"""

from __future__ import annotations

from collections.abc import Callable

from robustsig.study.analyses import (accuracy, cka, concept_thresholds, concepts, importance, kurtosis,
                                     layer_kurtosis, lowrank, predict_er, pruning, significance, wiseft)
from robustsig.study.config import ModelEntry, StudyConfig
from robustsig.study.plan import Planner
from robustsig.study.tasks import Task


def _concepts_plan(planner: Planner, config: StudyConfig, entry: ModelEntry) -> None:
    """The concepts of one model: its AP matrices and summary, the threshold sweep read from them, then the
    significance test of its concept counts."""
    concepts.plan(planner, config, entry)
    concept_thresholds.plan(planner, config, entry)
    significance.plan(planner, config, entry)


PER_MODEL: dict[str, Callable[[Planner, StudyConfig, ModelEntry], None]] = {
    "accuracy": accuracy.plan, "kurtosis": kurtosis.plan, "importance": importance.plan, "pruning": pruning.plan,
    "concepts": _concepts_plan, "layer_kurtosis": layer_kurtosis.plan, "lowrank": lowrank.plan}
"""Analysis name -> adds the tasks of one model."""

PER_POOL: dict[str, Callable[[Planner, StudyConfig], None]] = {
    "concepts": concepts.plan_venn, "cka": cka.plan, "wiseft": wiseft.plan, "predict_er": predict_er.plan}
"""Analysis name -> adds the tasks that compare models (after every model's own)."""


def build_plan(full: StudyConfig, selected: StudyConfig) -> list[Task]:
    """The tasks of a run of ``selected`` (the config, or its ``--only`` selection), in execution order.

    Args:
        full: the whole config; it decides which stores hold layers (CKA), so a selection never changes a store.
        selected: what to run.
    """
    requests = cka.layer_requests(full)
    for key, layers in layer_kurtosis.layer_requests(full).items():  # every tap: "all" covers any CKA request
        requests[key] = layers
    planner = Planner(requests, full.analyses.cka.pooling if full.analyses.cka else "auto")
    enabled = selected.enabled_analyses()
    for entry in selected.models:
        for name in enabled:
            if name in PER_MODEL:
                PER_MODEL[name](planner, selected, entry)
    for name in enabled:
        if name in PER_POOL:
            PER_POOL[name](planner, selected)
    return planner.tasks()
