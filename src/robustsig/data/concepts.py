"""Image sets labelled with concepts (Broden, a ``path,concepts`` CSV): the image x concept presence matrix and
the balanced positive/negative image sets on which each concept is probed.

>>> import torch
>>> presence = torch.tensor([[1, 0], [1, 1], [0, 0], [0, 0]], dtype=torch.bool)
>>> sets = balanced_concept_sets(presence, ["sky", "tree"], min_positives=2)   # "tree" has 1 positive: left out
>>> [(s.name, s.indices.tolist(), s.labels.tolist()) for s in sets]
[('sky', [0, 1, 2, 3], [True, True, False, False])]
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from robustsig.data.base import ImageDataset
from robustsig.errors import InputError


@dataclass(frozen=True)
class ConceptSet:
    """The balanced image set of one concept."""

    concept: int
    """column of the concept matrix."""
    name: str
    indices: Tensor
    """dataset indices, ascending (LongTensor)."""
    labels: Tensor
    """``True`` for the images that show the concept (BoolTensor aligned with ``indices``)."""


def balanced_concept_sets(concept_matrix: Tensor, names: Sequence[str], *, min_positives: int = 10,
                          max_positives: int | None = None, seed: int = 0) -> list[ConceptSet]:
    """For each concept with enough positives, ``k`` positive and ``k`` negative images drawn at random.

    ``k`` is the number of positives, capped by the number of negatives and by ``max_positives``. A concept is
    left out when ``k < min_positives``. Each concept draws from its own generator seeded by ``(seed, concept)``,
    so a concept's set does not change when other concepts are added or dropped.

    Args:
        concept_matrix: ``N x C`` boolean presence matrix.
        names: the ``C`` concept names.
        min_positives: the fewest positives (and negatives) a concept needs to be probed.
        max_positives: draw at most this many positives (and as many negatives); ``None``: no cap.
        seed: the random seed.

    Returns:
        The kept concepts' sets, in column order.
    """
    if concept_matrix.ndim != 2 or concept_matrix.dtype != torch.bool:
        raise InputError("concept_matrix must be an N x C boolean tensor")
    if len(names) != concept_matrix.shape[1]:
        raise InputError(f"{len(names)} names for {concept_matrix.shape[1]} concepts")
    if min_positives < 1 or (max_positives is not None and max_positives < min_positives):
        raise InputError("need 1 <= min_positives <= max_positives")
    presence = concept_matrix.cpu().numpy()
    sets = []
    for concept in np.flatnonzero(presence.sum(axis=0) >= min_positives):
        column = presence[:, concept]
        positives, negatives = np.flatnonzero(column), np.flatnonzero(~column)
        k = min(len(positives), len(negatives), max_positives or len(positives))
        if k < min_positives:
            continue
        rng = np.random.default_rng([seed, int(concept)])
        chosen = np.sort(np.concatenate([rng.choice(positives, k, replace=False),
                                         rng.choice(negatives, k, replace=False)]))
        sets.append(ConceptSet(int(concept), names[concept], torch.from_numpy(chosen),
                               torch.from_numpy(column[chosen])))
    return sets


def concepts_left_out(concept_matrix: Tensor, names: Sequence[str], *, min_positives: int = 10
                      ) -> dict[str, list[str]]:
    """The concepts :func:`balanced_concept_sets` leaves out, by reason: ``"few_positives"`` (fewer than
    ``min_positives`` images show it) and ``"few_negatives"`` (it shows on every image, or nearly: fewer than
    ``min_positives`` images lack it, so no balanced set can be drawn).

    >>> concepts_left_out(torch.tensor([[True, False], [True, False], [True, True]]), ["sky", "dog"], min_positives=1)
    {'few_positives': [], 'few_negatives': ['sky']}
    """
    presence = concept_matrix.cpu().numpy()
    positives = presence.sum(axis=0)
    negatives = presence.shape[0] - positives
    return {"few_positives": [names[c] for c in np.flatnonzero(positives < min_positives)],
            "few_negatives": [names[c] for c in np.flatnonzero((positives >= min_positives)
                                                                 & (negatives < min_positives))]}


class ConceptImageDataset(ImageDataset):
    """An :class:`ImageDataset` whose images also carry concepts.

    Args:
        samples: ``(path, label)`` pairs (label ``-1`` when the images have no class).
        concept_matrix: ``N x C`` boolean, ``True`` where image ``n`` shows concept ``c``.
        concepts: the ``C`` concept names.
        concept_categories: the category of each concept (Broden: color, object, part, material, scene, texture).
        **source: see :class:`~robustsig.data.base.ImageSource`.
    """

    def __init__(self, samples: Sequence[tuple[str | os.PathLike, int]], *, concept_matrix: Tensor,
                 concepts: Sequence[str], concept_categories: Sequence[str] | None = None, **source: Any) -> None:
        super().__init__(samples, **source)
        if concept_matrix.shape != (len(self.samples), len(concepts)) or concept_matrix.dtype != torch.bool:
            raise InputError(f"concept_matrix must be a {len(self.samples)} x {len(concepts)} boolean tensor")
        self.concept_matrix = concept_matrix
        self.concepts = list(concepts)
        self.concept_categories = list(concept_categories) if concept_categories is not None else None

    def annotations(self) -> dict[str, Any]:
        """:meth:`ImageSource.annotations` plus the concepts: names, categories and a digest of the presence
        matrix (so a renamed concept or a relabelled image re-probes the stores)."""
        presence = np.packbits(self.concept_matrix.cpu().numpy(), axis=1)
        digest = hashlib.blake2b(f"{tuple(self.concept_matrix.shape)}".encode() + presence.tobytes(), digest_size=16)
        return {**super().annotations(), "concepts": self.concepts, "concept_categories": self.concept_categories,
                "concept_matrix": digest.hexdigest()}

    def balanced_sets(self, min_positives: int = 10, max_positives: int | None = None,
                      seed: int = 0) -> list[ConceptSet]:
        """Balanced positive/negative image sets per concept (see :func:`balanced_concept_sets`)."""
        return balanced_concept_sets(self.concept_matrix, self.concepts, min_positives=min_positives,
                                     max_positives=max_positives, seed=seed)
