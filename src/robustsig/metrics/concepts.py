"""Concept probing: average precision of every direction for every concept, and what the AP matrix says.

A direction encodes a concept when ranking images by their projection on it separates the concept's images from
the others: its average precision (AP) is high. ``average_precision_matrix`` returns the AP of every
(concept, direction) pair with exactly the values of ``sklearn.metrics.average_precision_score``, ties included
(tied scores form one threshold). It never loops over pairs; it uses this identity::

    AP = 1/P * sum over positives n of  #{positives with score >= s_n} / #{samples with score >= s_n}

so each direction's scores are sorted once, and per concept only its positives are ranked among themselves.
Memory stays bounded by chunking directions and concepts (``max_elements`` per temporary tensor).

A concept without a positive sample has no AP: NaN with a warning (sklearn returns 0.0 with a warning; NaN keeps
such a concept from ever counting as encoded or not encoded). A concept without negatives has AP 1.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from robustsig.errors import InputError
from robustsig.metrics._checks import as_matrix, to_tensor

#: Default bound on the elements of one temporary tensor (~8M: ~64 MB in float64 / int64).
MAX_ELEMENTS = 1 << 23

#: The paper's threshold: a direction encodes a concept when its AP is at least 0.9.
AP_THRESHOLD = 0.9


def _as_bool_labels(x: Any, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    t = to_tensor(x, name)
    if tuple(t.shape) != shape:
        raise InputError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if t.dtype != torch.bool:
        if not bool(((t == 0) | (t == 1)).all()):
            raise InputError(f"{name} must be boolean (or 0/1) concept membership")
        t = t != 0
    return t


def _as_scores(x: Any, name: str) -> torch.Tensor:
    # scores keep their float dtype: ties are compared in the precision they were stored in, as sklearn does
    return as_matrix(x, name)


def _warn_no_positives(positives: torch.Tensor) -> None:
    empty = (positives == 0).nonzero().flatten().tolist()
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (" ..." if len(empty) > 10 else "")
        warnings.warn(f"{len(empty)} concept(s) have no positive sample (concepts {shown}): their AP is NaN",
                      RuntimeWarning, stacklevel=4)


def _count_at_least(values: torch.Tensor) -> torch.Tensor:
    """For every entry, how many entries of its last-dim row are >= it (ties counted), as int64."""
    ascending = values.sort(dim=-1).values
    return values.shape[-1] - torch.searchsorted(ascending, values.contiguous(), side="left")


def _ap_from_counts(is_positive: torch.Tensor, positives_above: torch.Tensor, all_above: torch.Tensor,
                    n_positive: torch.Tensor) -> torch.Tensor:
    """``1/P * sum_{positives} positives_above / all_above`` along the last dimension, in float64."""
    ratio = positives_above.to(torch.float64) / all_above.to(torch.float64)
    return torch.where(is_positive, ratio, 0.0).sum(dim=-1) / n_positive.to(torch.float64)


def _chunks_by_size(sizes: torch.Tensor, row_elements: int, max_elements: int) -> list[torch.Tensor]:
    """Group item indices, in increasing ``sizes``, so each group's ``len * max(size) * row_elements`` fits."""
    order = sizes.argsort(stable=True).tolist()
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (len(current) + 1) * int(sizes[i]) * row_elements > max_elements:
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return [torch.as_tensor(g, dtype=torch.int64) for g in groups]


def _ap_matrix_dense(scores: torch.Tensor, labels: torch.Tensor, max_elements: int) -> torch.Tensor:
    """AP for ``scores`` (N x D) against ``labels`` (N x C): all-sample counts per direction chunk, then per concept
    chunk the positives ranked among themselves."""
    n, d = scores.shape
    positives = labels.sum(dim=0)
    _warn_no_positives(positives)
    ap = torch.full((labels.shape[1], d), float("nan"), dtype=torch.float64, device=scores.device)
    concepts = (positives > 0).nonzero().flatten().cpu()
    if concepts.numel() == 0:
        return ap
    labels_t = labels.T.contiguous()
    positive_rows = [labels_t[c].nonzero().flatten() for c in concepts.tolist()]
    d_chunk = max(1, min(d, max_elements // n))
    groups = _chunks_by_size(positives[concepts].cpu(), d_chunk, max_elements)
    for d0 in range(0, d, d_chunk):
        columns = scores[:, d0:d0 + d_chunk].T.contiguous()                 # Dc x N
        all_above = _count_at_least(columns)                                # Dc x N
        for group in groups:
            rows = [positive_rows[i] for i in group.tolist()]
            width = max(len(r) for r in rows)
            index = torch.zeros(len(rows), width, dtype=torch.int64, device=scores.device)
            valid = torch.zeros(len(rows), width, dtype=torch.bool, device=scores.device)
            for j, r in enumerate(rows):
                index[j, :len(r)] = r
                valid[j, :len(r)] = True
            values = columns[:, index]                                      # Dc x c x width
            values = torch.where(valid, values, float("-inf"))             # padding ranks below every score
            positives_above = _count_at_least(values)
            ap_chunk = _ap_from_counts(valid.expand_as(values), positives_above, all_above[:, index],
                                       valid.sum(dim=1))
            ap[concepts[group].to(ap.device), d0:d0 + d_chunk] = ap_chunk.T
    return ap


def _ap_matrix_per_concept(scores: Sequence[Any], labels: Sequence[Any], max_elements: int) -> torch.Tensor:
    """AP for per-concept sample sets: ``scores[c]`` (N_c x D) with boolean ``labels[c]`` (N_c)."""
    if len(scores) != len(labels):
        raise InputError(f"scores and labels must list the same concepts, got {len(scores)} score sets and "
                         f"{len(labels)} label vectors")
    if len(scores) == 0:
        raise InputError("scores is an empty list: give one score matrix per concept")
    sets = [_as_scores(s, f"scores[{c}] (samples x directions)") for c, s in enumerate(scores)]
    d = sets[0].shape[1]
    for c, s in enumerate(sets):
        if s.shape[1] != d:
            raise InputError(f"scores[{c}] has {s.shape[1]} directions, scores[0] has {d}: all concepts must be "
                             "scored on the same directions")
    flags = [_as_bool_labels(y, f"labels[{c}]", (sets[c].shape[0],)) for c, y in enumerate(labels)]
    device, dtype = sets[0].device, sets[0].dtype
    for s in sets[1:]:
        dtype = torch.promote_types(dtype, s.dtype)
    sizes = torch.as_tensor([s.shape[0] for s in sets])
    positives = torch.as_tensor([int(y.sum()) for y in flags])
    _warn_no_positives(positives)
    ap = torch.full((len(sets), d), float("nan"), dtype=torch.float64, device=device)
    d_chunk = max(1, min(d, max_elements // max(1, int(sizes.max()))))
    for group in _chunks_by_size(sizes, d_chunk, max_elements):
        group = [c for c in group.tolist() if positives[c] > 0]
        if not group:
            continue
        width = int(sizes[group].max())
        is_positive = torch.zeros(len(group), width, dtype=torch.bool, device=device)
        for j, c in enumerate(group):
            is_positive[j, :sizes[c]] = flags[c].to(device)
        for d0 in range(0, d, d_chunk):
            dc = min(d_chunk, d - d0)
            values = torch.full((len(group), dc, width), float("-inf"), dtype=dtype, device=device)
            for j, c in enumerate(group):
                values[j, :, :sizes[c]] = sets[c][:, d0:d0 + dc].T.to(device=device, dtype=dtype)
            mask = is_positive[:, None, :].expand_as(values)
            all_above = _count_at_least(values)
            positives_above = _count_at_least(torch.where(mask, values, float("-inf")))
            ap[group, d0:d0 + dc] = _ap_from_counts(mask, positives_above, all_above,
                                                    positives[group].to(device)[:, None])
    return ap


def average_precision_matrix(scores: Any, labels: Any, *, max_elements: int = MAX_ELEMENTS) -> torch.Tensor:
    """Average precision of every direction for every concept (the values of sklearn's
    ``average_precision_score(labels[:, c], scores[:, d])``, ties grouped by distinct score).

    Two input forms:

    - ``scores`` an ``N x D`` matrix (projections of N images on D directions) and ``labels`` an ``N x C`` boolean
      matrix (which images show which concept).
    - the paper's balanced per-concept sets: ``scores`` a list of C matrices (``N_c x D``, the concept's positive
      and negative images) and ``labels`` a list of C boolean vectors (``N_c``, True for positives).

    Args:
        scores: as above; float32 or float64, finite.
        labels: as above; booleans or 0/1.
        max_elements: bound on the elements of one temporary tensor (memory stays ~10x this in bytes).

    Returns:
        float64 tensor ``C x D``; NaN (with a warning) for a concept without positives.

    Example:
        >>> import torch
        >>> scores = torch.tensor([[0.1, 0.9], [0.4, 0.8], [0.35, 0.1], [0.8, 0.2]])
        >>> labels = torch.tensor([[False], [False], [True], [True]])
        >>> average_precision_matrix(scores, labels)   # sklearn: 0.8333..., 0.4167...
        tensor([[0.8333, 0.4167]], dtype=torch.float64)
    """
    if isinstance(scores, (list, tuple)):
        if not isinstance(labels, (list, tuple)):
            raise InputError("scores is a list of per-concept score matrices, so labels must be a list of "
                             "per-concept boolean vectors")
        return _ap_matrix_per_concept(scores, labels, max_elements)
    s = _as_scores(scores, "scores (samples x directions)")
    y = to_tensor(labels, "labels")
    if y.ndim != 2:
        raise InputError(f"labels must be N x C (one column per concept), got shape {tuple(y.shape)}; for a single "
                         "concept use labels[:, None]")
    y = _as_bool_labels(y, "labels (samples x concepts)", (s.shape[0], y.shape[1]))
    return _ap_matrix_dense(s, y.to(s.device), max_elements)


@dataclass(frozen=True)
class ConceptSummary:
    """What an AP matrix says at a threshold (see :func:`concept_summary`).

    Attributes:
        ap: the ``C x D`` AP matrix.
        threshold: AP at or above which a direction encodes a concept.
        concepts: concept names (``None``: concepts are named by their index).
    """

    ap: torch.Tensor
    threshold: float
    concepts: tuple[str, ...] | None = None

    @property
    def encoded(self) -> torch.Tensor:
        """Boolean ``C x D``: direction d encodes concept c (NaN APs never do)."""
        return self.ap >= self.threshold

    @property
    def concept_indices(self) -> torch.Tensor:
        """Indices of the concepts encoded by at least one direction."""
        return self.encoded.any(dim=1).nonzero().flatten()

    @property
    def unique_concepts(self) -> int:
        """Eq. 5: the number of concepts encoded by at least one direction."""
        return int(self.encoded.any(dim=1).sum())

    @property
    def concepts_per_direction(self) -> torch.Tensor:
        """Number of concepts each direction encodes (length D)."""
        return self.encoded.sum(dim=0)

    @property
    def polysemanticity(self) -> float:
        """Mean number of concepts per direction over the directions that encode at least one (NaN if none)."""
        counts = self.concepts_per_direction
        active = counts[counts > 0]
        return float(active.double().mean()) if active.numel() else float("nan")

    @property
    def polysemantic_directions(self) -> torch.Tensor:
        """Indices of the directions that encode two concepts or more."""
        return (self.concepts_per_direction >= 2).nonzero().flatten()

    def name(self, concept: int) -> str | int:
        """The name of concept ``concept`` (its index when no names were given)."""
        return self.concepts[concept] if self.concepts is not None else int(concept)

    def top_concepts(self, direction: int, k: int = 3) -> list[tuple[str | int, float]]:
        """The ``k`` concepts with the highest AP on ``direction`` (encoded or not), as ``(name, ap)``."""
        if not 0 <= direction < self.ap.shape[1]:
            raise InputError(f"direction must be in [0, {self.ap.shape[1]}), got {direction}")
        column = torch.nan_to_num(self.ap[:, direction], nan=-1.0)
        best = column.argsort(descending=True, stable=True)[:k].tolist()
        return [(self.name(c), float(self.ap[c, direction])) for c in best if column[c] >= 0]

    def concept_set(self) -> set[str | int]:
        """Names (or indices) of the encoded concepts, for overlaps between models."""
        return {self.name(c) for c in self.concept_indices.tolist()}

    def as_dict(self) -> dict[str, Any]:
        """The summary numbers as plain values (for JSON and tables)."""
        return {"threshold": self.threshold, "unique_concepts": self.unique_concepts,
                "polysemanticity": self.polysemanticity,
                "polysemantic_directions": int(self.polysemantic_directions.numel()),
                "concepts_per_direction": self.concepts_per_direction.tolist()}


def concept_summary(ap: Any, threshold: float = AP_THRESHOLD, concepts: Sequence[str] | None = None) -> ConceptSummary:
    """Summarise an AP matrix: unique concepts (eq. 5), concepts per direction, polysemanticity, top concepts.

    Args:
        ap: ``C x D`` AP matrix from :func:`average_precision_matrix`.
        threshold: a direction encodes a concept when AP >= threshold (paper: 0.9).
        concepts: names of the C concepts.

    Returns:
        :class:`ConceptSummary`.

    Example:
        >>> import torch
        >>> ap = torch.tensor([[0.95, 0.2], [0.91, 0.5], [0.1, 0.3]], dtype=torch.float64)
        >>> summary = concept_summary(ap, concepts=["dog", "grass", "sky"])
        >>> summary.unique_concepts, summary.concepts_per_direction.tolist(), summary.top_concepts(0, k=2)
        (2, [2, 0], [('dog', 0.95), ('grass', 0.91)])
    """
    matrix = as_matrix(ap, "ap (concepts x directions)", dtype=torch.float64, finite=False)
    if not 0 <= threshold <= 1:
        raise InputError(f"threshold must be an AP in [0, 1], got {threshold}")
    if concepts is not None and len(concepts) != matrix.shape[0]:
        raise InputError(f"{len(concepts)} concept names for an AP matrix with {matrix.shape[0]} concepts")
    return ConceptSummary(matrix, float(threshold), None if concepts is None else tuple(map(str, concepts)))


def concept_overlaps(sets_by_model: Mapping[str, ConceptSummary | Iterable[Any]]) -> dict[tuple[str, ...], set[Any]]:
    """Venn regions of the encoded concepts of several models.

    Args:
        sets_by_model: model name -> its :class:`ConceptSummary` or a set of concept names.

    Returns:
        For every non-empty combination of models, the concepts encoded by exactly those models (keys are tuples
        of model names in the given order; an empty region is left out). ``{("a",): ..., ("a", "b"): ...}``.

    Example:
        >>> concept_overlaps({"a": {"dog", "sky"}, "b": {"sky", "car"}})
        {('a',): {'dog'}, ('b',): {'car'}, ('a', 'b'): {'sky'}}
    """
    sets = {name: (s.concept_set() if isinstance(s, ConceptSummary) else set(s)) for name, s in sets_by_model.items()}
    if not sets:
        raise InputError("sets_by_model is empty: give at least one model")
    names = list(sets)
    regions: dict[tuple[str, ...], set[Any]] = {}
    for size in range(1, len(names) + 1):
        for combo in itertools.combinations(names, size):
            inside = set.intersection(*(sets[m] for m in combo))
            region = inside.difference(*(sets[m] for m in names if m not in combo))
            if region:
                regions[combo] = region
    return regions
