"""Concept probing on Broden: AP matrices, unique concepts, polysemanticity, the top concepts of the most
privileged direction, and the Venn overlaps of the concept sets.

Three kinds of steps, so that a new threshold re-runs only what depends on it:

- ``concept_ap:SUBJECT:BASIS`` computes the full AP matrix (concepts x directions) on the balanced per-concept image
  sets (``dataset.balanced_sets(min_positives, seed)``; images of a set that could not be decoded are left out) and
  saves it as ``results/concept_ap/SUBJECT_BASIS.npy``, with the concept names and categories in the ``.json``
  next to it. Its provenance is the Broden store and its concepts (names, categories, presence matrix), the basis,
  ``min_positives`` and ``seed``: not the threshold.
- ``concepts:MODEL`` reads the matrices and writes ``concepts.csv`` (unique concepts, eq. 5; polysemanticity),
  ``concept_top.csv`` (the ``top_k`` concepts of the most privileged direction) and ``venn.csv`` (the concepts each
  model encodes, AP >= threshold).
- ``venn`` compares the concept sets of each Venn group (``venn_groups``, default: the zero-shot, finetuned and
  supervised models of each backbone and pretraining) with :func:`robustsig.concept_overlaps` and records the size
  of every region in the provenance of ``venn.csv`` (the report draws the diagrams).

Bases. *Singular*: the score of an image on direction i is ``h . v_i``, with ``v_i`` the right singular vectors of
the head as :func:`robustsig.head_svd` returns them (its sign convention: the largest-magnitude entry of each
``v_i`` is positive). *Neuron*: the scores are the components of ``h`` themselves.

Orientation (``orientation``, in the AP step's provenance). ``both`` (the default and the paper preset's): the AP
of a (concept, direction) pair is the larger of AP(s) and AP(-s), so a concept that the negative side of ``v_i``
separates counts as encoded: the sign of a singular vector is arbitrary, and the paper asks whether the projections
*separate* positives from negatives. ``positive``: the AP of the scores as the sign convention gives them.

``concept_thresholds:MODEL`` (:mod:`robustsig.study.analyses.concept_thresholds`) reads the same matrices and
writes the threshold sensitivity sweep: a new sweep reruns only it.

The most privileged direction is the most important singular direction (eq. 4) on the importance dataset (default:
the id set); its neuron-basis counterpart is the dimension of h with the largest mean |h_i| there (the top outlier
dimension).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustsig._atomic import atomic_output, write_text_atomic
from robustsig.distributed import resolve_device
from robustsig.errors import DataError
from robustsig.extraction.store import ActivationStore
from robustsig.metrics.concepts import average_precision_matrix, concept_overlaps, concept_summary
from robustsig.study.analyses import importance as importance_analysis
from robustsig.study.analyses._streams import gather_rows, store_head_svd, store_importance, store_kurtosis
from robustsig.study.config import ConceptsOptions, ModelEntry, StudyConfig
from robustsig.study.plan import Planner
from robustsig.study.results import ConceptRow, ConceptTopRow, VennRow, study_rows
from robustsig.study.subjects import Subject, model_subject
from robustsig.study.tasks import AnalysisTask, RunContext, files_present, has_rows

AP_DIR = "concept_ap"
SIGN_CONVENTION = "head_svd: the largest-magnitude entry of each right singular vector is positive"
SCORE_BUDGET = 1 << 24
"""Score entries (rows x directions) held at once while the AP of a group of concepts is computed."""


def options_of(config: StudyConfig) -> ConceptsOptions:
    """The concepts options (the defaults when only Wise-FT asks for concepts)."""
    return config.analyses.concepts or ConceptsOptions()


def ap_paths(results_root: str | os.PathLike, subject: str, basis: str) -> tuple[Path, Path]:
    """``results/concept_ap/SUBJECT_BASIS.npy`` and its ``.json`` (concept names, categories, provenance)."""
    folder = Path(results_root) / AP_DIR
    return folder / f"{subject}_{basis}.npy", folder / f"{subject}_{basis}.json"


def load_ap(results_root: str | os.PathLike, subject: str, basis: str) -> tuple[torch.Tensor, list[str], list[str]]:
    """A saved AP matrix (float64, concepts x directions), its concept names and categories."""
    npy, sidecar = ap_paths(results_root, subject, basis)
    try:
        ap = torch.from_numpy(np.load(npy, allow_pickle=False))
        info = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read the AP matrix {npy} ({error}); delete it and rerun `robustsig study run`"
                        ) from None
    return ap, list(info["concepts"]), list(info["categories"])


def ap_device(device: str | None) -> torch.device:
    """Where the AP matrices are computed: the study's device when it is a CUDA GPU (``auto``: one when torch sees
    it), else the CPU (the AP kernel works in float64, which MPS lacks)."""
    resolved = resolve_device(device)
    return resolved if resolved.type == "cuda" else torch.device("cpu")


def concept_members(store: ActivationStore, dataset: Any, *, min_positives: int, seed: int
                    ) -> list[tuple[Any, np.ndarray, np.ndarray]]:
    """The balanced per-concept sets (``dataset.balanced_sets(min_positives, seed)``) as ``(concept, store rows,
    labels)``, images that could not be decoded left out, concepts left with one class only dropped.

    Raises:
        DataError: no concept has ``min_positives`` positive (and as many negative) decoded images.
    """
    sets = dataset.balanced_sets(min_positives=min_positives, seed=seed)
    position = np.full(len(dataset), -1, dtype=np.int64)
    position[store.read("ids").numpy()] = np.arange(store.num_rows)
    members = []
    for concept in sets:
        rows = position[concept.indices.numpy()]
        decoded = rows >= 0
        labels = concept.labels.numpy()[decoded]
        if labels.any() and not labels.all():
            members.append((concept, rows[decoded], labels))
    if not members:
        raise DataError(f"no concept of the concept dataset has {min_positives} positive and as many negative decoded "
                        "images; lower analyses.concepts.min_positives or use a larger concept dataset")
    return members


def concept_score_groups(store: ActivationStore, members: Sequence[tuple[Any, np.ndarray, np.ndarray]], basis: str,
                         device: str | torch.device = "cpu") -> Iterator[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """The per-concept score sets of ``members`` in ``basis`` (the list form of
    :func:`robustsig.average_precision_matrix`), a group of concepts at a time (``SCORE_BUDGET`` entries read at
    once), in the order of ``members``: ``(scores, labels)`` per group, the scores on ``device``."""
    V = store_head_svd(store).V.to(device, torch.float32) if basis == "singular" else None
    width = V.shape[1] if V is not None else store.manifest["tensors"]["h"]["shape"][1]
    group, group_rows = [], 0
    for i, member in enumerate(members):
        group.append(member)
        group_rows += len(member[1])
        if group_rows * width >= SCORE_BUDGET or i == len(members) - 1:
            union = np.unique(np.concatenate([rows for _, rows, _ in group]))
            scores = gather_rows(store, "h", union).to(device, torch.float32)
            if V is not None:
                scores = scores @ V
            yield ([scores[torch.from_numpy(np.searchsorted(union, rows)).to(device)] for _, rows, _ in group],
                   [torch.from_numpy(labels) for _, _, labels in group])
            group, group_rows = [], 0


def concept_ap_matrix(store: ActivationStore, dataset: Any, basis: str, *, min_positives: int, seed: int,
                      orientation: str = "both", device: str | torch.device = "cpu"
                      ) -> tuple[torch.Tensor, list[str], list[str]]:
    """AP of every direction of ``basis`` for every concept with enough positives, on balanced per-concept sets.

    Args:
        store: the activations on the concept dataset (rows keyed by dataset position in ``ids``).
        dataset: the concept dataset (``balanced_sets``, ``concept_categories``).
        basis: ``"singular"`` (projections on the head's right singular vectors) or ``"neuron"`` (h itself).
        min_positives, seed: see :meth:`robustsig.data.concepts.ConceptImageDataset.balanced_sets`.
        orientation: ``"both"`` or ``"positive"`` (see :func:`robustsig.average_precision_matrix`).
        device: where the projections and the AP are computed (a GPU gives the same values).

    Returns:
        ``(ap, names, categories)``: the ``C x D`` float64 matrix and the C concepts probed.

    Raises:
        DataError: no concept has ``min_positives`` positive (and as many negative) decoded images.
    """
    members = concept_members(store, dataset, min_positives=min_positives, seed=seed)
    ap_parts = [average_precision_matrix(scores, labels, orientation=orientation, device=device)
                for scores, labels in concept_score_groups(store, members, basis, device)]
    categories = getattr(dataset, "concept_categories", None)
    names = [concept.name for concept, _, _ in members]
    return (torch.cat(ap_parts), names,
            [categories[concept.concept] if categories else "" for concept, _, _ in members])


class ConceptApTask(AnalysisTask):
    """The AP matrix of one subject in one basis, saved under ``results/concept_ap/``."""

    tag = "concept_ap"

    def __init__(self, subject: Subject, dataset: str, basis: str, options: ConceptsOptions,
                 needs: tuple[str, ...]) -> None:
        super().__init__(f"concept_ap:{subject.name}:{basis}", f"{subject.name} ({basis} basis)", needs,
                         subject.models)
        self.subject = subject
        self.dataset = dataset
        self.basis = basis
        self.min_positives = options.min_positives
        self.seed = options.seed
        self.orientation = options.orientation

    def provenance(self, ctx: RunContext) -> dict[str, Any]:
        return {"store": ctx.store(self.subject, self.dataset).provenance, "basis": self.basis,
                "min_positives": self.min_positives, "seed": self.seed,
                "sign": SIGN_CONVENTION if self.basis == "singular" else None, "orientation": self.orientation}

    def present(self, ctx: RunContext) -> bool:
        return files_present(*ap_paths(ctx.results.root, self.subject.name, self.basis))

    def compute(self, ctx: RunContext) -> str:
        begin = time.perf_counter()
        verified = ctx.store(self.subject, self.dataset)
        ap, names, categories = concept_ap_matrix(verified.store, ctx.dataset(self.dataset), self.basis,
                                                  min_positives=self.min_positives, seed=self.seed,
                                                  orientation=self.orientation, device=ap_device(ctx.device))
        npy, sidecar = ap_paths(ctx.results.root, self.subject.name, self.basis)
        with atomic_output(npy) as temporary, open(temporary, "wb") as handle:
            np.save(handle, ap.numpy(), allow_pickle=False)
        write_text_atomic(sidecar, json.dumps({
            "subject": self.subject.name, "basis": self.basis, "dataset": self.dataset, "store_key": verified.digest,
            "min_positives": self.min_positives, "seed": self.seed, "rows": "concepts", "columns": "directions",
            "sign": SIGN_CONVENTION if self.basis == "singular" else None, "orientation": self.orientation,
            "concepts": names, "categories": categories}, indent=1) + "\n")
        return (f"AP of {ap.shape[0]} concepts x {ap.shape[1]} directions in {time.perf_counter() - begin:.1f} s "
                f"-> {npy}")


def top_direction(ctx: RunContext, subject: Subject, dataset: str, basis: str) -> int:
    """The most privileged direction: the most important singular direction, or the dimension of h with the
    largest mean |h_i| (neuron basis), on ``dataset``."""
    store = ctx.store(subject, dataset).store
    if basis == "singular":
        return int(store_importance(store)[1].argmax())
    return int(store_kurtosis(store).mean_abs().argmax())


class ConceptsTask(AnalysisTask):
    """One model's concept summary at the threshold, its top concepts and the concepts it encodes."""

    tag = "concepts"

    def __init__(self, model: str, options: ConceptsOptions, top_dataset: str, ap_tasks: dict[str, str],
                 needs: tuple[str, ...]) -> None:
        super().__init__(f"concepts:{model}", model, needs, (model,))
        self.model = model
        self.subject = model_subject(model)
        self.options = options
        self.top_dataset = top_dataset
        self.ap_tasks = ap_tasks

    def provenance(self, ctx: RunContext) -> dict[str, Any]:
        return {"ap": {basis: ctx.ledger.digest(task) for basis, task in self.ap_tasks.items()},
                "threshold": self.options.threshold, "orientation": self.options.orientation,
                "top_k": self.options.top_k,
                "top_store": ctx.store(self.subject, self.top_dataset).digest}

    def present(self, ctx: RunContext) -> bool:
        return has_rows(ctx.results, ConceptRow, model=self.model)

    def compute(self, ctx: RunContext) -> str:
        summaries, tops, members, texts = [], [], [], []
        for basis in self.ap_tasks:
            ap, names, categories = load_ap(ctx.results.root, self.subject.name, basis)
            category = dict(zip(names, categories))
            summary = concept_summary(ap, self.options.threshold, names)
            summaries.append(ConceptRow(self.model, basis, ap.shape[1], ap.shape[0], summary.unique_concepts,
                                        summary.polysemanticity, self.options.threshold,
                                        summary.polysemanticity_active, self.options.orientation))
            direction = top_direction(ctx, self.subject, self.top_dataset, basis)
            tops += [ConceptTopRow(self.model, basis, direction, rank, str(name), category[name], value)
                     for rank, (name, value) in enumerate(summary.top_concepts(direction, self.options.top_k), 1)]
            members += [VennRow(self.model, basis, names[c], categories[c])
                        for c in summary.concept_indices.tolist()]
            texts.append(f"{basis}: {summary.unique_concepts} unique of {ap.shape[0]} concepts")
        ctx.results.replace(ConceptRow, summaries, model=self.model)
        ctx.results.replace(ConceptTopRow, tops, model=self.model)
        ctx.results.replace(VennRow, members, model=self.model)
        parameters = {"threshold": self.options.threshold, "orientation": self.options.orientation,
                      "top_k": self.options.top_k,
                      "min_positives": self.options.min_positives, "seed": self.options.seed,
                      "singular_sign": SIGN_CONVENTION, "ap_matrices": f"results/{AP_DIR}/MODEL_BASIS.npy"}
        broden = ctx.config.datasets.broden.name
        records = [ctx.store(self.subject, broden).record(self.model, broden),
                   ctx.store(self.subject, self.top_dataset).record(self.model, self.top_dataset)]
        for table in (ConceptRow, ConceptTopRow, VennRow):
            ctx.results.record(table, records, parameters)
        return f"threshold {self.options.threshold}: " + "; ".join(texts)


class VennTask(AnalysisTask):
    """The overlaps of the concept sets of each Venn group, per basis."""

    tag = "venn"

    def __init__(self, groups: Sequence[tuple[str, Sequence[str]]], needs: tuple[str, ...]) -> None:
        super().__init__("venn", f"{len(groups)} group(s)", needs)
        self.groups = [(title, list(members)) for title, members in groups]

    def provenance(self, ctx: RunContext) -> dict[str, Any]:
        return {"groups": self.groups, "concepts": {need: ctx.ledger.digest(need) for need in self.needs}}

    def present(self, ctx: RunContext) -> bool:
        return ctx.results.has(VennRow)

    def compute(self, ctx: RunContext) -> str:
        rows = ctx.results.read(VennRow)
        bases = list(dict.fromkeys(row.basis for row in rows))
        overlaps: dict[str, dict[str, dict[str, int]]] = {}
        texts = []
        for title, members in self.groups:
            for basis in bases:
                sets = {model: {row.concept for row in rows if row.model == model and row.basis == basis}
                        for model in members}
                regions = concept_overlaps(sets)
                counts = {" & ".join(combo): len(region) for combo, region in regions.items()}
                overlaps.setdefault(title, {})[basis] = counts
                texts.append(f"{title} ({basis}): " + (", ".join(f"{k} {v}" for k, v in counts.items()) or "no concept"))
        ctx.results.record(VennRow, [], {"venn_groups": {title: members for title, members in self.groups},
                                         "overlaps": overlaps})
        return "; ".join(texts)


def ap_task(planner: Planner, config: StudyConfig, subject: Subject, basis: str) -> str:
    """The id of the AP step of ``subject`` in ``basis`` (added with its Broden extraction when new)."""
    broden = config.datasets.broden.name
    return planner.add(ConceptApTask(subject, broden, basis, options_of(config), (planner.store(subject, broden),)))


def plan(planner: Planner, config: StudyConfig, entry: ModelEntry) -> None:
    options = options_of(config)
    subject = model_subject(entry.name)
    ap_tasks = {basis: ap_task(planner, config, subject, basis) for basis in options.bases}
    top_dataset = importance_analysis.dataset_of(config)
    needs = (*ap_tasks.values(), planner.store(subject, top_dataset))
    planner.add(ConceptsTask(entry.name, options, top_dataset, ap_tasks, needs))


def venn_groups(config: StudyConfig) -> list[tuple[str, list[str]]]:
    """The configured Venn groups, or one per backbone and pretraining (its zero-shot, finetuned and the
    backbone's supervised models); groups of fewer than two models are left out."""
    options = options_of(config)
    if options.venn_groups:
        groups = [(" / ".join(group), list(group)) for group in options.venn_groups]
    else:
        from robustsig.report.pool import model_groups

        groups = [(group.title, [m.model for m in group.members]) for group in model_groups(study_rows(config)[0])]
    return [(title, members) for title, members in groups if len(members) >= 2]


def plan_venn(planner: Planner, config: StudyConfig) -> None:
    groups = venn_groups(config)
    if groups:
        models = dict.fromkeys(model for _, members in groups for model in members)
        planner.add(VennTask(groups, tuple(f"concepts:{model}" for model in models)))
