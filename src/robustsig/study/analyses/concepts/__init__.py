"""Concept probing on Broden: AP matrices, unique concepts, polysemanticity, the top concepts of the most
privileged direction, the threshold sweep, the concept counts against chance, and the Venn overlaps of the concept
sets. Its YAML section is ``analyses.concepts`` (:class:`~robustsig.study.analyses.concepts.options.ConceptsOptions`).

Its steps, so that a new threshold re-runs only what depends on it:

- ``concept_ap:SUBJECT:BASIS`` (:mod:`.ap`): the full AP matrices (concepts x directions) of both sides of every
  direction, AP(s) and AP(-s), from one sort, saved under ``results/concept_ap/``; keyed by the concept set's store
  and concepts, the basis, ``min_positives`` and ``seed``, not the threshold nor the orientation.
- ``concepts:MODEL`` (:mod:`.summary`): ``concepts.csv``, ``concept_top.csv``, ``venn.csv`` at the threshold.
- ``concept_thresholds:MODEL`` (:mod:`.thresholds`): the threshold sensitivity sweep, ``concept_thresholds.csv``.
- ``concept_significance:MODEL:BASIS`` (:mod:`.significance`): the label-permutation test and Benjamini-Hochberg,
  ``concept_significance.csv`` (``permutations: 0`` turns it off).
- ``venn`` (:mod:`.summary`): the overlaps of the concept sets of each Venn group.

Bases. *Singular*: the score of an image on direction i is ``h . v_i``, with ``v_i`` the right singular vectors of
the head as :func:`robustsig.head_svd` returns them (its sign convention: the largest-magnitude entry of each
``v_i`` is positive). *Neuron*: the scores are the components of ``h`` themselves.

Orientation. ``positive`` (the default and the paper preset's, the paper's definition): Section 4 follows Suau et
al., the projection on ``v_i`` *is* the classifier of the concept and its AP is measured, one-sided. The sign of a
singular vector is fixed by :func:`robustsig.head_svd` (the largest-magnitude entry of each ``v_i`` is positive), so
the one-sided AP is the same on every LAPACK build and device. ``both`` (a variant): the AP of a (concept, direction)
pair is the larger of AP(s) and AP(-s), so a concept that the negative side of ``v_i`` separates counts as encoded
too; the max of two APs has a higher chance level, and on small balanced sets it can double polysemanticity. Both
come from the same AP step; ``concepts.csv`` and ``concept_thresholds.csv`` give the counts of each in named columns
(``unique_concepts_positive``, ``unique_concepts_both``, ...) and the report shows both tables. ``orientation``
chooses what the derived steps use: the ``unique_concepts``/``polysemanticity`` columns, the top concepts, the Venn
sets, the threshold figure and the significance test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from robustsig.study.analyses import importance as importance_analysis
from robustsig.study.analyses.concepts.ap import ap_task
from robustsig.study.analyses.concepts.options import ORIENTATION_TITLES, ConceptsOptions, options_of
from robustsig.study.analyses.concepts.significance import (ConceptSignificanceRow, ConceptSignificanceTask,
                                                            significance_table)
from robustsig.study.analyses.concepts.summary import (ConceptRow, ConceptsTask, ConceptTopRow, VennRow, VennTask,
                                                       concept_top_table, concepts_table, report_venn_groups,
                                                       venn_figure, venn_groups)
from robustsig.study.analyses.concepts.thresholds import (ConceptThresholdRow, ConceptThresholdsTask,
                                                          concept_thresholds_figure)
from robustsig.study.analysis import Analysis, ModelEntry, Planner, Results, model_subject, unknown_models
from robustsig.study.results import ModelRow

if TYPE_CHECKING:
    from robustsig.report.page import Page
    from robustsig.study.config import StudyConfig

__all__ = ["Concepts", "ConceptsOptions", "options_of"]


class Concepts(Analysis):
    """Concept probing on the concept set (see the module notes)."""

    name = "concepts"
    title = "Concepts"
    Options = ConceptsOptions
    tables = (ConceptRow, ConceptTopRow, VennRow, ConceptThresholdRow, ConceptSignificanceRow)

    def check(self, config: StudyConfig) -> list[str]:
        options = config.analyses.concepts
        problems = []
        if options.enabled and config.datasets.broden is None:
            problems.append("datasets.broden: required by analyses.concepts; expected {root: /path/to/broden1_224}")
        for i, group in enumerate(options.venn_groups or []):
            problems += unknown_models(config, [(f"analyses.concepts.venn_groups[{i}][{j}]", name)
                                                for j, name in enumerate(group)])
            if len(set(group)) != len(group):
                problems.append(f"analyses.concepts.venn_groups[{i}]: expected distinct model names")
        return problems

    def select(self, section: dict[str, Any], models: set[str]) -> dict[str, Any] | None:
        if "venn_groups" in section:
            kept = [group for group in section["venn_groups"] if set(group) <= models]
            section = {**section, "venn_groups": kept or None}
        return section

    def plan_model(self, planner: Planner, config: StudyConfig, entry: ModelEntry) -> None:
        """The AP matrices and summary of one model, the threshold sweep read from them, then the significance
        test of its concept counts."""
        options = options_of(config)
        subject = model_subject(entry.name)
        ap_tasks = {basis: ap_task(planner, config, subject, basis) for basis in options.bases}
        top_dataset = importance_analysis.dataset_of(config)
        planner.add(ConceptsTask(entry.name, options, top_dataset, ap_tasks,
                                 (*ap_tasks.values(), planner.store(subject, top_dataset))))
        planner.add(ConceptThresholdsTask(entry.name, options, ap_tasks))
        if options.permutations:
            broden = config.datasets.broden.name
            store = planner.store(subject, broden)
            for basis in options.bases:
                planner.add(ConceptSignificanceTask(entry.name, broden, basis, options, (store,)))

    def plan_pool(self, planner: Planner, config: StudyConfig) -> None:
        groups = venn_groups(config)
        if groups:
            models = dict.fromkeys(model for _, members in groups for model in members)
            planner.add(VennTask(groups, tuple(f"concepts:{model}" for model in models)))

    def summary(self, results: Results, config: StudyConfig) -> dict[str, dict[str, Any]]:
        """Unique concepts in the singular basis, else the neuron basis."""
        rows = {(row.model, row.basis): row.unique_concepts
                for row in (results.read(ConceptRow) if results.has(ConceptRow) else [])}
        return {name: {"unique_concepts": rows.get((name, "singular"), rows.get((name, "neuron")))}
                for name in config.model_names() if (name, "singular") in rows or (name, "neuron") in rows}

    def report(self, page: Page, models: Sequence[ModelRow]) -> str | None:
        summary, top, venn = page.read(ConceptRow), page.read(ConceptTopRow), page.read(VennRow)
        if not summary:
            return None
        text = page.caption("The full AP matrices (concepts x directions, per model and basis) are in "
                            "results/concept_ap/MODEL_BASIS.npy (AP(s), the paper's one-sided AP) and "
                            "MODEL_BASIS_negative.npy (AP(-s)), with the concept names and categories in the .json "
                            "file next to each: a rerun with another threshold or orientation reads them instead of "
                            "recomputing.")
        bases = list(dict.fromkeys(row.basis for row in summary))
        orientation = summary[0].orientation
        for basis in bases:
            for shown in ("positive", "both"):
                text += page.table(concepts_table(models, summary, basis, shown))
        sweep = page.read(ConceptThresholdRow)
        for basis in list(dict.fromkeys(row.basis for row in sweep)):
            used = ORIENTATION_TITLES.get(sweep[0].orientation, sweep[0].orientation)
            text += page.figure(lambda basis=basis: concept_thresholds_figure(models, sweep, basis),
                                f"concept_thresholds_{basis}", f"Threshold sensitivity ({basis} basis, {used}): unique "
                                "concepts and polysemanticity (the paper's definition, mean over all directions) at "
                                "each AP threshold; results/concept_thresholds.csv has both orientations' counts "
                                "(solid line: the paper's 0.9, dotted: its footnote's 0.85).", ["concept_thresholds"])
        significance = page.read(ConceptSignificanceRow)
        for basis in dict.fromkeys(row.basis for row in significance):
            text += page.table(significance_table(models, significance, basis))
        if top:
            text += page.table(concept_top_table(top, orientation))
        for basis in bases:
            probed = {row.model for row in summary if row.basis == basis}
            paper = (" The paper's Fig. 4 draws these diagrams for the OpenAI models, singular basis, one-sided AP."
                     if basis == "singular" else " Not in the paper (neuron basis).")
            for i, (title, members) in enumerate(report_venn_groups(page, models, probed)):
                sets = {f"{m.model} ({m.kind})": {row.concept for row in venn if row.model == m.model
                                                  and row.basis == basis} for m in members}
                text += page.figure(lambda sets=sets, title=title: venn_figure(sets, f"{title}, {basis} basis"),
                                    f"venn_{basis}_{i}", f"Overlap of the concepts encoded by {title} ({basis} basis, "
                                    f"{ORIENTATION_TITLES.get(orientation, orientation)}).{paper}",
                                    ["venn", "concepts"])
        return text
