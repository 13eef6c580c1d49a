"""Concept counts controlled for chance: a label-permutation test per concept and Benjamini-Hochberg over concepts.

With ~10-20 images per balanced concept set and hundreds of probed directions, some direction reaches AP >= 0.9 by
chance alone (an untrained network "encodes" most of the demo's concepts). For each concept ``c`` the statistic is
``T_c = max over directions d of AP(labels_c, scores_c[:, d])`` (with ``orientation="both"``: the max of
``AP(s)`` and ``AP(-s)``). Its null distribution comes from permuting the labels *inside the concept's own set*
(so the positive count and the images are kept), and its p-value is ``(1 + #{b: T_b >= T_c}) / (1 + B)`` over
``B`` permutations. The p-values of all concepts are adjusted with ``scipy.stats.false_discovery_control``
(Benjamini-Hochberg); ``significant_concepts`` counts the concepts that eq. 5 counts (``T_c >= threshold``) *and*
whose test is significant at false discovery rate ``alpha``. ``chance_unique`` is the count eq. 5 gives on average
when every label is permuted: the raw count's chance level.

Why hand-written: the permutations change the labels, never the order of the scores, so each (concept, direction)
is sorted once and the AP of every permuted label vector is read off that order (a gather, a cumulative sum and a
dot product, batched over permutations and directions in torch). Tied scores form one threshold, as in
``sklearn.metrics.average_precision_score``: the positives counted above a sample are those up to the end of its
tie group. At paper scale (1,197 concepts, 10-400 images each, 512-1024 directions, 1,000 permutations) this is
~1e11 multiply-adds: minutes on a GPU (``device="cuda"``), about an hour on a few CPU cores.

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> labels = [torch.arange(40) < 20 for _ in range(3)]
>>> scores = [torch.randn(40, 16, generator=g) for _ in range(3)]
>>> scores[0][:, 5] += 4.0 * labels[0]               # concept 0 is planted on direction 5
>>> result = concept_significance(scores, labels, permutations=199, seed=0)
>>> result.unique_concepts, result.significant_concepts
(1, 1)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.stats
import torch

from robustsig.errors import InputError
from robustsig.metrics._checks import as_matrix, to_tensor
from robustsig.metrics.concepts import AP_THRESHOLD

Orientation = Literal["positive", "both"]
ORIENTATIONS: tuple[str, ...] = ("positive", "both")
DEFAULT_PERMUTATIONS = 1000
"""Permutations per concept: the smallest p-value is 1/1001, enough for BH over ~50 concepts at alpha 0.05."""
DEFAULT_STOP_AFTER = 20
"""Exceedances after which a concept stops drawing permutations (its p-value is then at least 20/1000)."""
MAX_ELEMENTS = 1 << 22
"""Bound on the entries (permutations x directions x images) of one temporary array."""
QUADRATIC_MAX_IMAGES = 80
"""Sets up to this size use the quadratic-form kernel (matrix products), larger ones the sorted-cumsum kernel."""
BLOCK = 100
"""Permutations drawn and tested at a time (a concept stops early after ``stop_after`` exceedances)."""
_TOLERANCE = 1e-5
"""The null is computed in float32: a permuted AP this close to the observed one (or to the threshold) counts as
reaching it, so rounding never makes a p-value smaller."""


@dataclass(frozen=True)
class PermutationTest:
    """Per-concept results of the permutation test (see :func:`permutation_p_values`).

    Attributes:
        max_ap: ``T_c``, the largest AP over directions of each concept (float64, length C).
        p_values: ``(1 + #{b: T_b >= T_c}) / (1 + B)``.
        null_encoded: the share of permutations whose ``T_b`` reaches ``threshold`` (the chance that eq. 5 counts
            the concept when its labels carry no information).
        drawn: permutations drawn per concept (fewer than ``permutations`` when a concept stopped early).
        permutations, threshold, orientation: the test's settings.
    """

    max_ap: torch.Tensor
    p_values: torch.Tensor
    null_encoded: torch.Tensor
    drawn: torch.Tensor
    permutations: int
    threshold: float
    orientation: str


@dataclass(frozen=True)
class ConceptSignificance:
    """Raw and chance-controlled concept counts (see :func:`concept_significance`).

    Attributes:
        test: the per-concept permutation test.
        adjusted: Benjamini-Hochberg adjusted p-values.
        alpha: the false discovery rate.
    """

    test: PermutationTest
    adjusted: torch.Tensor
    alpha: float

    @property
    def p_values(self) -> torch.Tensor:
        """Per-concept permutation p-values."""
        return self.test.p_values

    @property
    def encoded(self) -> torch.Tensor:
        """Boolean per concept: some direction reaches the AP threshold (eq. 5)."""
        return self.test.max_ap >= self.test.threshold

    @property
    def significant(self) -> torch.Tensor:
        """Boolean per concept: encoded and significant under Benjamini-Hochberg at ``alpha``."""
        return self.encoded & (self.adjusted <= self.alpha)

    @property
    def unique_concepts(self) -> int:
        """Eq. 5, raw: concepts with some direction at AP >= threshold."""
        return int(self.encoded.sum())

    @property
    def significant_concepts(self) -> int:
        """Concepts counted by eq. 5 whose max AP is also significant (BH at ``alpha``)."""
        return int(self.significant.sum())

    @property
    def discoveries(self) -> int:
        """Concepts significant under BH whatever their AP (a direction separates them better than chance)."""
        return int((self.adjusted <= self.alpha).sum())

    @property
    def chance_unique(self) -> float:
        """The chance level of :attr:`unique_concepts`: its expected value under label permutation."""
        return float(self.test.null_encoded.sum())

    def as_dict(self) -> dict[str, Any]:
        return {"unique_concepts": self.unique_concepts, "significant_concepts": self.significant_concepts,
                "chance_unique": self.chance_unique, "discoveries": self.discoveries, "alpha": self.alpha,
                "permutations": self.test.permutations, "threshold": self.test.threshold,
                "orientation": self.test.orientation, "p_values": self.p_values.tolist()}


def _sorted(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per direction (rows): the images in descending score order, each image's position in that order, and per
    position the last position of its tie group (sklearn: tied scores form one threshold)."""
    values, order = torch.sort(scores.T, dim=1, descending=True, stable=True)         # D x N
    n = values.shape[1]
    position = torch.arange(n, device=scores.device).expand_as(values)
    is_end = torch.ones_like(values, dtype=torch.bool)
    is_end[:, :-1] = values[:, 1:] != values[:, :-1]
    ends = torch.where(is_end, position, torch.full_like(position, n))
    group_end = torch.flip(torch.cummin(torch.flip(ends, [1]), dim=1).values, [1])
    rank = torch.empty_like(order).scatter_(1, order, position)
    return order, rank, group_end


def _ap_quadratic(y: torch.Tensor, scores: torch.Tensor, positives: float) -> torch.Tensor:
    """AP (b x D) of label rows ``y`` (b x N, float) as quadratic forms ``y^T A_d y / P`` with
    ``A_d[a, c] = [c scores at least as high as a's tie group on d] / #{images scoring >= a}``: one matrix product
    per chunk, the fastest way for small sets."""
    order, rank, group_end = _sorted(scores)
    last = group_end.gather(1, rank)                                                  # per image: its tie's end
    forms = (rank[:, None, :] <= last[:, :, None]).to(y.dtype) / (last + 1).to(y.dtype)[:, :, None]
    n = y.shape[1]
    reached = (y @ forms.reshape(-1, n).T).view(y.shape[0], -1, n)                   # b x D x N
    return torch.bmm(reached, y[:, :, None])[..., 0] / positives


def _ap_sorted(y: torch.Tensor, scores: torch.Tensor, positives: float) -> torch.Tensor:
    """The same AP from the labels gathered in each direction's score order and their cumulative sum (linear in
    N, for large sets)."""
    order, _, group_end = _sorted(scores)
    ordered = y[:, order]                                                             # b x D x N
    above = ordered.cumsum(dim=-1)                                                    # positives at or above
    if bool((group_end != torch.arange(group_end.shape[1], device=group_end.device)).any()):  # ties: up to the
        above = above.gather(-1, group_end.expand(y.shape[0], -1, -1))                # end of the tie group
    above.mul_(ordered).mul_(1.0 / (group_end + 1).to(y.dtype))
    return above.sum(dim=-1) / positives


def _max_ap(flags: torch.Tensor, scores: torch.Tensor, orientation: str, max_elements: int,
            dtype: torch.dtype) -> torch.Tensor:
    """The max over directions (and over both signs with ``orientation="both"``) of the AP of each label vector
    (rows of ``flags``, B x N boolean, all with the same number of positives)."""
    n, d = scores.shape
    positives = float(flags[0].sum())
    y = flags.to(dtype)
    quadratic = n <= QUADRATIC_MAX_IMAGES
    per_direction = n * n if quadratic else n
    d_chunk = max(1, min(d, max_elements // per_direction))
    b_chunk = max(1, max_elements // (d_chunk * n))
    best = torch.full((flags.shape[0],), -math.inf, dtype=dtype, device=flags.device)
    for signed in ([scores] if orientation == "positive" else [scores, -scores]):
        for d0 in range(0, d, d_chunk):
            chunk = signed[:, d0:d0 + d_chunk]
            for b0 in range(0, y.shape[0], b_chunk):
                rows = y[b0:b0 + b_chunk]
                ap = _ap_quadratic(rows, chunk, positives) if quadratic else _ap_sorted(rows, chunk, positives)
                best[b0:b0 + b_chunk] = torch.maximum(best[b0:b0 + b_chunk], ap.amax(dim=1))
    return best


def permutation_order(seed: int, concept: int, permutations: int, size: int) -> torch.Tensor:
    """The label permutations of concept number ``concept`` (``permutations x size`` indices): label vector ``b``
    is ``labels[order[b]]``. Drawn from ``(seed, concept)`` alone."""
    state = int(np.random.SeedSequence([seed, concept]).generate_state(1)[0])
    return torch.argsort(torch.rand(permutations, size, generator=torch.Generator().manual_seed(state)), dim=1)


def _check_sets(scores: Any, labels: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    if not isinstance(scores, (list, tuple)) or not isinstance(labels, (list, tuple)):
        raise InputError("scores and labels must be lists with one entry per concept: scores[c] an N_c x D matrix "
                         "of the concept's balanced image set, labels[c] its N_c booleans (True: positive); the "
                         "list form of rs.average_precision_matrix")
    if len(scores) != len(labels) or not scores:
        raise InputError(f"scores and labels must list the same concepts (at least one); got {len(scores)} score "
                         f"sets and {len(labels)} label vectors")
    sets = [as_matrix(s, f"scores[{c}] (samples x directions)") for c, s in enumerate(scores)]
    width = sets[0].shape[1]
    flags = []
    for c, (s, y) in enumerate(zip(sets, labels)):
        if s.shape[1] != width:
            raise InputError(f"scores[{c}] has {s.shape[1]} directions, scores[0] has {width}: all concepts must be "
                             "scored on the same directions")
        t = to_tensor(y, f"labels[{c}]")
        if t.shape != (s.shape[0],):
            raise InputError(f"labels[{c}] must have shape ({s.shape[0]},) (one per row of scores[{c}]); got "
                             f"{tuple(t.shape)}")
        if t.dtype != torch.bool:
            if not bool(((t == 0) | (t == 1)).all()):
                raise InputError(f"labels[{c}] must be booleans (or 0/1): True for the concept's positive images")
            t = t != 0
        if not bool(t.any()) or bool(t.all()):
            raise InputError(f"labels[{c}] must hold both positive and negative images; got "
                             f"{int(t.sum())} positives of {t.numel()}")
        flags.append(t)
    return sets, flags


def permutation_p_values(scores: Sequence[Any], labels: Sequence[Any], *, threshold: float = AP_THRESHOLD,
                         permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0, orientation: Orientation = "positive",
                         first_concept: int = 0, device: str | torch.device | None = None,
                         stop_after: int | None = None, max_elements: int = MAX_ELEMENTS) -> PermutationTest:
    """The per-concept permutation test of :func:`concept_significance` (no multiple-testing correction).

    Args:
        scores, labels, threshold, permutations, seed, orientation, device: see :func:`concept_significance`.
        first_concept: the index of ``scores[0]`` among all concepts: concept ``c``'s permutations are drawn from
            ``(seed, first_concept + c)``, so testing the concepts in groups gives the same p-values as one call.
        stop_after: stop drawing permutations for a concept at its ``stop_after``-th exceedance (``T_b >= T_c``)
            and report Besag and Clifford's sequential p-value ``stop_after / L`` (L: permutations drawn); a
            concept that never gets there draws all ``permutations``. None: always draw them all.
        max_elements: bound on the entries of one temporary array.

    Returns:
        :class:`PermutationTest`.
    """
    if orientation not in ORIENTATIONS:
        raise InputError(f"orientation must be one of {', '.join(ORIENTATIONS)}; got {orientation!r}")
    if isinstance(permutations, bool) or not isinstance(permutations, int) or permutations < 1:
        raise InputError(f"permutations must be a positive integer; got {permutations!r}")
    if not 0 <= threshold <= 1:
        raise InputError(f"threshold must be an AP in [0, 1]; got {threshold}")
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int) or stop_after < 1):
        raise InputError(f"stop_after must be a positive integer or None; got {stop_after!r}")
    sets, flags = _check_sets(scores, labels)
    device = torch.device(device) if device is not None else sets[0].device
    observed, p_values, null_encoded, drawn = [], [], [], []
    for c, (s, y) in enumerate(zip(sets, flags)):
        s, y = s.to(device), y.to(device)
        observed.append(float(_max_ap(y[None], s.to(torch.float64), orientation, max_elements, torch.float64)[0]))
        scores32 = s.to(torch.float32)
        t_obs = _max_ap(y[None], scores32, orientation, max_elements, torch.float32)[0]
        shuffles = permutation_order(seed, first_concept + c, permutations, y.numel()).to(device)
        exceed, encoded, done = 0, 0, 0
        for b0 in range(0, permutations, BLOCK):
            null = _max_ap(y[shuffles[b0:b0 + BLOCK]], scores32, orientation, max_elements, torch.float32)
            hits = (null >= t_obs - _TOLERANCE).cumsum(0)
            if stop_after is not None and exceed + int(hits[-1]) >= stop_after:       # Besag-Clifford: stop at the
                stop = int(torch.searchsorted(hits, stop_after - exceed))              # stop_after-th exceedance
                null, exceed = null[:stop + 1], stop_after
                done += stop + 1
                encoded += int((null >= threshold - _TOLERANCE).sum())
                break
            exceed += int(hits[-1])
            done += null.numel()
            encoded += int((null >= threshold - _TOLERANCE).sum())
        p_values.append(exceed / done if stop_after is not None and exceed >= stop_after
                        else (1 + exceed) / (1 + permutations))
        null_encoded.append(encoded / done)
        drawn.append(done)
    as_tensor = lambda values: torch.tensor(values, dtype=torch.float64)  # noqa: E731
    return PermutationTest(as_tensor(observed), as_tensor(p_values), as_tensor(null_encoded),
                           torch.tensor(drawn), permutations, float(threshold), orientation)


def benjamini_hochberg(test: PermutationTest, alpha: float = 0.05) -> ConceptSignificance:
    """Adjust the p-values of ``test`` with ``scipy.stats.false_discovery_control`` (Benjamini-Hochberg)."""
    if not 0 < alpha < 1:
        raise InputError(f"alpha must be a false discovery rate in (0, 1); got {alpha}")
    adjusted = torch.from_numpy(np.asarray(scipy.stats.false_discovery_control(test.p_values.numpy(), method="bh"),
                                           dtype=np.float64))
    return ConceptSignificance(test, adjusted, float(alpha))


def concept_significance(scores: Sequence[Any], labels: Sequence[Any], threshold: float = AP_THRESHOLD, *,
                         permutations: int = DEFAULT_PERMUTATIONS, alpha: float = 0.05, seed: int = 0,
                         orientation: Orientation = "positive", device: str | torch.device | None = None,
                         stop_after: int | None = DEFAULT_STOP_AFTER) -> ConceptSignificance:
    """Unique concepts (eq. 5) and how many of them survive a label-permutation test with BH correction.

    Args:
        scores: the paper's balanced per-concept sets: a list of C matrices ``N_c x D`` (the projections of the
            concept's positive and negative images on the D probed directions).
        labels: a list of C boolean vectors ``N_c`` (True: the image shows the concept); each with both classes.
        threshold: AP at or above which a direction encodes a concept (paper: 0.9).
        permutations: label permutations per concept (the smallest p-value is ``1 / (1 + permutations)``).
        alpha: the false discovery rate of the Benjamini-Hochberg procedure.
        seed: seeds the permutations (the same seed gives the same p-values).
        orientation: ``"positive"`` (the paper's: high projections are positives) or ``"both"`` (max of
            ``AP(s)`` and ``AP(-s)``); use the orientation the AP matrix was computed with.
        device: where the permutations run (default: the scores' device); ``"cuda"`` at paper scale.
        stop_after: a concept stops drawing permutations at its ``stop_after``-th exceedance (Besag and Clifford's
            sequential p-value, ``stop_after / permutations drawn``): clearly null concepts cost a few dozen
            permutations instead of all of them. None: always draw ``permutations``.

    Returns:
        :class:`ConceptSignificance`: ``unique_concepts``, ``p_values``, ``significant_concepts``,
        ``chance_unique``.

    Raises:
        InputError: mismatched lists, a set without positives or negatives, a bad option.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(1)
        >>> noise = concept_significance([torch.randn(20, 300, generator=g) for _ in range(4)],
        ...                              [torch.arange(20) < 10] * 4, permutations=99)
        >>> noise.significant_concepts <= noise.unique_concepts
        True
    """
    test = permutation_p_values(scores, labels, threshold=threshold, permutations=permutations, seed=seed,
                                orientation=orientation, device=device, stop_after=stop_after)
    return benjamini_hochberg(test, alpha)


def concatenate(tests: Sequence[PermutationTest]) -> PermutationTest:
    """One test from the tests of consecutive groups of concepts (the same settings; see ``first_concept``)."""
    if not tests:
        raise InputError("concatenate needs at least one permutation test")
    first = tests[0]
    if any((t.permutations, t.threshold, t.orientation) != (first.permutations, first.threshold, first.orientation)
           for t in tests):
        raise InputError("the permutation tests to concatenate were run with different settings")
    return PermutationTest(*(torch.cat([getattr(t, name) for t in tests])
                             for name in ("max_ap", "p_values", "null_encoded", "drawn")),
                           first.permutations, first.threshold, first.orientation)
