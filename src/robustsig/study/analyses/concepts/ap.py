"""The AP matrices of the concepts analysis: ``concept_ap:SUBJECT:BASIS`` computes the full AP matrices (concepts x
directions) of a model (or a Wise-FT point) on the balanced per-concept image sets of the concept dataset
(``dataset.balanced_sets(min_positives, seed)``; images of a set that could not be decoded are left out), both
one-sided matrices from one sort (``rs.average_precision_matrix(..., orientation="sides")``):

- ``results/concept_ap/SUBJECT_BASIS.npy``: AP(s), the paper's (the projection ``h . v_i`` is the classifier);
- ``results/concept_ap/SUBJECT_BASIS_negative.npy``: AP(-s), the AP of the negated projection;

with the concept names and categories in ``SUBJECT_BASIS.json``. The ``both`` variant, max(AP(s), AP(-s)), is
``np.fmax`` of the two (:func:`load_ap`). Singular-basis scores use the sign convention of
:func:`robustsig.head_svd` (the largest-magnitude entry of each ``v_i`` is positive), so AP(s) is the same on every
LAPACK build and device. The provenance is the concept set's store and its concepts (names, categories, presence
matrix), the basis, ``min_positives`` and ``seed``: not the threshold nor the orientation, so a new threshold or
orientation reads the saved matrices.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from robustsig._atomic import atomic_output, write_text_atomic
from robustsig.distributed import resolve_device
from robustsig.data.concepts import concepts_left_out
from robustsig.errors import DataError
from robustsig.extraction.store import ActivationStore
from robustsig.metrics.concepts import average_precision_matrix
from robustsig.study.streams import concept_members, gather_rows, store_head_svd
from robustsig.study.analyses.concepts.options import ConceptsOptions, options_of
from robustsig.study.analysis import AnalysisTask, Planner, RunContext, Subject, files_present

if TYPE_CHECKING:
    from robustsig.study.config import StudyConfig

AP_DIR = "concept_ap"
SIGN_CONVENTION = "head_svd: the largest-magnitude entry of each right singular vector is positive"
SIDES = "positive: AP(s) in SUBJECT_BASIS.npy; negative: AP(-s) in SUBJECT_BASIS_negative.npy; both = fmax"
"""What the AP step saves (in its provenance and sidecar: older steps saved one matrix in one orientation)."""
AP_FILES = f"results/{AP_DIR}/MODEL_BASIS.npy (AP(s), the paper's) and MODEL_BASIS_negative.npy (AP(-s))"
SCORE_BUDGET = 1 << 24
"""Score entries (rows x directions) held at once while the AP of a group of concepts is computed."""


def ap_paths(results_root: str | os.PathLike, subject: str, basis: str) -> tuple[Path, Path]:
    """``results/concept_ap/SUBJECT_BASIS.npy`` (AP(s)) and its ``.json`` (concept names, categories, provenance)."""
    folder = Path(results_root) / AP_DIR
    return folder / f"{subject}_{basis}.npy", folder / f"{subject}_{basis}.json"


def negative_path(results_root: str | os.PathLike, subject: str, basis: str) -> Path:
    """``results/concept_ap/SUBJECT_BASIS_negative.npy``: AP(-s)."""
    return Path(results_root) / AP_DIR / f"{subject}_{basis}_negative.npy"


def load_ap(results_root: str | os.PathLike, subject: str, basis: str, orientation: str = "positive"
            ) -> tuple[torch.Tensor, list[str], list[str]]:
    """A saved AP matrix (float64, concepts x directions) in ``orientation``, its concept names and categories.

    Args:
        orientation: ``"positive"`` (the paper's AP(s)) or ``"both"`` (the variant: max of AP(s) and AP(-s)).
    """
    npy, sidecar = ap_paths(results_root, subject, basis)
    files = [npy] if orientation == "positive" else [npy, negative_path(results_root, subject, basis)]
    try:
        sides = [np.load(path, allow_pickle=False) for path in files]
        info = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read the AP matrices {', '.join(map(str, files))} ({error}); delete them and rerun "
                        "`robustsig study run`") from None
    ap = sides[0] if orientation == "positive" else np.fmax(*sides)
    return torch.from_numpy(ap), list(info["concepts"]), list(info["categories"])


def ap_device(device: str | None) -> torch.device:
    """Where the AP matrices are computed: the study's device when it is a CUDA GPU (``auto``: one when torch sees
    it), else the CPU (the AP kernel works in float64, which MPS lacks)."""
    resolved = resolve_device(device)
    return resolved if resolved.type == "cuda" else torch.device("cpu")


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
                      device: str | torch.device = "cpu") -> tuple[torch.Tensor, list[str], list[str]]:
    """AP of every direction of ``basis`` for every concept with enough positives, on balanced per-concept sets,
    on both sides of each direction (one sort).

    Args:
        store: the activations on the concept dataset (rows keyed by dataset position in ``ids``).
        dataset: the concept dataset (``balanced_sets``, ``concept_categories``).
        basis: ``"singular"`` (projections on the head's right singular vectors) or ``"neuron"`` (h itself).
        min_positives, seed: see :meth:`robustsig.data.concepts.ConceptImageDataset.balanced_sets`.
        device: where the projections and the AP are computed (a GPU gives the same values).

    Returns:
        ``(sides, names, categories)``: the ``2 x C x D`` float64 AP(s) and AP(-s) (``orientation="sides"`` of
        :func:`robustsig.average_precision_matrix`) and the C concepts probed.

    Raises:
        DataError: no concept has ``min_positives`` positive (and as many negative) decoded images.
    """
    members = concept_members(store, dataset, min_positives=min_positives, seed=seed)
    ap_parts = [average_precision_matrix(scores, labels, orientation="sides", device=device)
                for scores, labels in concept_score_groups(store, members, basis, device)]
    categories = getattr(dataset, "concept_categories", None)
    names = [concept.name for concept, _, _ in members]
    return (torch.cat(ap_parts, dim=1), names,
            [categories[concept.concept] if categories else "" for concept, _, _ in members])


class ConceptApTask(AnalysisTask):
    """The AP matrices (both sides) of one subject in one basis, saved under ``results/concept_ap/``."""

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

    def provenance(self, ctx: RunContext) -> dict[str, Any]:
        return {"store": ctx.store(self.subject, self.dataset).provenance, "basis": self.basis,
                "min_positives": self.min_positives, "seed": self.seed,
                "sign": SIGN_CONVENTION if self.basis == "singular" else None, "sides": SIDES}

    def present(self, ctx: RunContext) -> bool:
        root, name = ctx.results.root, self.subject.name
        return files_present(*ap_paths(root, name, self.basis), negative_path(root, name, self.basis))

    def compute(self, ctx: RunContext) -> str:
        begin = time.perf_counter()
        verified = ctx.store(self.subject, self.dataset)
        dataset = ctx.dataset(self.dataset)
        sides, names, categories = concept_ap_matrix(verified.store, dataset, self.basis,
                                                     min_positives=self.min_positives, seed=self.seed,
                                                     device=ap_device(ctx.device))
        left_out = (concepts_left_out(dataset.concept_matrix, dataset.concepts, min_positives=self.min_positives)
                    if hasattr(dataset, "concept_matrix") else {})
        npy, sidecar = ap_paths(ctx.results.root, self.subject.name, self.basis)
        for path, ap in ((npy, sides[0]), (negative_path(ctx.results.root, self.subject.name, self.basis), sides[1])):
            with atomic_output(path) as temporary, open(temporary, "wb") as handle:
                np.save(handle, ap.numpy(), allow_pickle=False)
        write_text_atomic(sidecar, json.dumps({
            "subject": self.subject.name, "basis": self.basis, "dataset": self.dataset, "store_key": verified.digest,
            "min_positives": self.min_positives, "seed": self.seed, "rows": "concepts", "columns": "directions",
            "sign": SIGN_CONVENTION if self.basis == "singular" else None, "sides": SIDES,
            "concepts": names, "categories": categories, "left_out": left_out}, indent=1) + "\n")
        return (f"AP of {sides.shape[1]} concepts x {sides.shape[2]} directions, both sides, in "
                f"{time.perf_counter() - begin:.1f} s -> {npy}{left_out_note(left_out, self.min_positives)}")


def left_out_note(left_out: dict[str, list[str]], min_positives: int) -> str:
    """What the log line says of the concepts no balanced set could be drawn for (none: nothing)."""
    parts = []
    for reason, words in (("few_positives", f"shown on fewer than {min_positives} images"),
                          ("few_negatives", f"absent from fewer than {min_positives} images (no negatives to balance "
                                            "them)")):
        names = left_out.get(reason, [])
        if names:
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            parts.append(f"{len(names)} {words}: {shown}")
    return f"; left out: {'; '.join(parts)}" if parts else ""


def ap_task(planner: Planner, config: StudyConfig, subject: Subject, basis: str) -> str:
    """The id of the AP step of ``subject`` in ``basis`` (added with its Broden extraction when new)."""
    broden = config.datasets.broden.name
    return planner.add(ConceptApTask(subject, broden, basis, options_of(config), (planner.store(subject, broden),)))
