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
tie group. At paper scale (1,197 concepts, 20 to 60,000 images each, 512-1024 directions, at most 1,000
permutations, ~80 drawn per image on average) one model and basis takes ~2 minutes on 2 CPU cores (6.7x the time
of one float32 cumulative sum over every permuted label): a GPU (``device="cuda"``) is the way to test a whole pool.

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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.stats
import torch

from robustsig.errors import InputError
from robustsig.metrics._checks import as_matrix, to_tensor
from robustsig.metrics._ranking import tie_groups
from robustsig.metrics.concepts import AP_THRESHOLD

Orientation = Literal["positive", "both"]
ORIENTATIONS: tuple[str, ...] = ("positive", "both")
DEFAULT_PERMUTATIONS = 1000
"""Permutations per concept: the smallest p-value is 1/1001, enough for BH over ~50 concepts at alpha 0.05."""
DEFAULT_STOP_AFTER = 20
"""Exceedances after which a concept stops drawing permutations (its p-value is then at least 20/1000)."""
MAX_ELEMENTS = 1 << 22
"""Bound on the entries (permutations x directions x images) of one temporary array."""
BLOCK = 200
"""Permutations drawn and tested at a time after the first small blocks (see :func:`_blocks`)."""
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


class _NullStatistic:
    """The statistic of one concept for any label vectors: its directions are sorted once (descending scores), and
    the max over directions (and signs) of the AP of a batch of label vectors is read off that order.

    With a direction's labels ``o`` in that order, their cumulative sum ``c`` (positives at or above) and ``P``
    positives, sklearn's AP is ``sum_i o_i c_i / (i + 1) / P`` and the AP of the negated scores, read backwards,
    ``sum_i o_i (P + 1 - c_i) / (N - i) / P``: one gather, one cumulative sum and dot products give both
    orientations. Tied scores form one threshold: a positive in a tie group counts the positives up to the group's
    end (``c`` at the end, over the end + 1) and, for the negated scores, those from the group's start (``P`` minus
    the positives before the start, over ``N`` minus the start). float32 scores tie now and then (a few pairs in a
    direction of thousands of images): those directions get the tie-free sum plus a correction gathered at their
    tied positions only; a direction tied throughout (a dead unit: one constant) runs the grouped sums in full.
    The order is kept (``D x N`` int64: ~0.5 GB for Broden's largest concept at 1,024 directions), so permutation
    blocks never sort again.
    """

    def __init__(self, scores: torch.Tensor, orientation: str, max_elements: int) -> None:
        n, d = scores.shape
        self.n, self.both = n, orientation == "both"
        if scores.device.type == "cpu":  # numpy's vectorised sort is several times faster than torch's on the CPU
            rows = scores.T.contiguous().numpy()
            order_np = np.argsort(-rows, axis=1)
            order = torch.from_numpy(order_np)
            values = torch.from_numpy(np.take_along_axis(rows, order_np, axis=1))
        else:
            values, order = torch.sort(scores.T, dim=1, descending=True)
        device = scores.device
        position = torch.arange(n, device=device)
        group_start, group_end = tie_groups(values[:, 1:] == values[:, :-1])
        in_group = group_start != group_end                                # tied with a neighbour
        tied = in_group.sum(1)
        dense = tied > max(8, n // 4)
        self.order, self.dense_order = order[~dense], order[dense]
        self.dense_end, self.dense_start = group_end[dense], group_start[dense]
        # sparse ties: per direction its tied positions (padded with position 0 and a zero weight)
        sparse = in_group[~dense]
        width = int(tied[~dense].max()) if sparse.shape[0] else 0
        self.tie_width = width
        if width:
            rank = torch.where(sparse, sparse.cumsum(1) - 1, width)              # slot of each tied position
            self.tie_position = torch.zeros(sparse.shape[0], width + 1, dtype=torch.int64, device=device)
            self.tie_position.scatter_(1, rank, position.expand_as(rank))
            self.tie_position = self.tie_position[:, :width]
            self.tie_valid = torch.zeros(sparse.shape[0], width + 1, dtype=torch.bool, device=device)
            self.tie_valid.scatter_(1, rank, sparse)
            self.tie_valid = self.tie_valid[:, :width]
            self.tie_end = group_end[~dense].gather(1, self.tie_position)
            self.tie_start = group_start[~dense].gather(1, self.tie_position)
        self.d_chunk = max(1, min(d, max_elements // n))
        self.b_chunk = max(1, max_elements // (self.d_chunk * n))
        self._weights: dict[torch.dtype, torch.Tensor] = {}

    def _weights_of(self, dtype: torch.dtype) -> torch.Tensor:
        """``N x 2``: ``1 / (i + 1)`` (the scores read forwards) and ``1 / (N - i)`` (the negated scores)."""
        if dtype not in self._weights:
            i = torch.arange(self.n, dtype=torch.float64, device=self.order.device)
            self._weights[dtype] = torch.stack([1.0 / (i + 1), 1.0 / (self.n - i)], dim=1).to(dtype)
        return self._weights[dtype]

    def max_ap(self, flags: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The statistic of each row of ``flags`` (``B x N`` boolean, every row with the same positive count)."""
        y = flags.to(dtype)
        positives = float(flags[0].sum())
        b_chunk = self.b_chunk
        best = torch.full((y.shape[0],), -math.inf, dtype=dtype, device=y.device)
        for dense, order in ((False, self.order), (True, self.dense_order)):
            for d0 in range(0, order.shape[0], self.d_chunk):
                directions = slice(d0, d0 + self.d_chunk)
                chunk = order[directions]
                for b0 in range(0, y.shape[0], b_chunk):
                    rows = y[b0:b0 + b_chunk]                                         # b x d x N (torch.gather:
                    ordered = rows[:, None, :].expand(-1, chunk.shape[0], -1).gather(  # ~3x faster than indexing)
                        2, chunk.expand(rows.shape[0], -1, -1))
                    ap = (self._dense_ap(ordered, directions, positives) if dense
                          else self._ap(ordered, directions, positives))
                    best[b0:b0 + b_chunk] = torch.maximum(best[b0:b0 + b_chunk], ap.amax(dim=1) / positives)
        return best

    def _ap(self, ordered: torch.Tensor, directions: slice, positives: float) -> torch.Tensor:
        """``P * AP`` with the tie-free sums, corrected at the tied positions."""
        dtype = ordered.dtype
        weights = self._weights_of(dtype)
        forward, backward = weights[:, 0], weights[:, 1]
        above = ordered.cumsum(-1)
        weighted = above * ordered                                                   # o_i c_i
        if self.both:
            sums = weighted @ weights                                                # one pass for both sums
            ap, negated = sums[..., 0], (positives + 1) * (ordered @ backward) - sums[..., 1]
        else:
            ap, negated = weighted @ forward, None
        if self.tie_width:
            index = self.tie_position[directions].expand(ordered.shape[0], -1, -1)
            valid = self.tie_valid[directions].to(dtype)
            o, c = ordered.gather(-1, index) * valid, above.gather(-1, index)
            end = self.tie_end[directions].expand_as(index)
            ap = ap + (o * (above.gather(-1, end) / (end + 1).to(dtype) - c * forward[index])).sum(-1)
            if negated is not None:
                start = self.tie_start[directions].expand_as(index)
                before = above.gather(-1, start) - ordered.gather(-1, start)          # positives before the start
                tied = (positives - before) / (self.n - start).to(dtype)
                negated = negated + (o * (tied - (positives + 1 - c) * backward[index])).sum(-1)
        return ap if negated is None else torch.maximum(ap, negated)

    def _dense_ap(self, ordered: torch.Tensor, directions: slice, positives: float) -> torch.Tensor:
        """``P * AP`` of directions made of tie groups, summed group-wise in full."""
        above = ordered.cumsum(-1)
        end = self.dense_end[directions].expand_as(ordered)
        ap = (ordered * above.gather(-1, end) / (end + 1).to(ordered.dtype)).sum(-1)
        if self.both:
            start = self.dense_start[directions].expand_as(ordered)
            before = (above - ordered).gather(-1, start)
            ap = torch.maximum(ap, (ordered * (positives - before) / (self.n - start).to(ordered.dtype)).sum(-1))
        return ap


def _blocks(permutations: int, stop_after: int | None) -> list[tuple[int, int]]:
    """Permutation blocks ``[b0, b1)``: with sequential stopping the first ones are small (a null concept, p ~ 0.5,
    stops after ~2 x ``stop_after`` draws), then ``BLOCK`` at a time. The blocks never change the p-values (the
    permutations and the stopping point are fixed), only the work drawn past the stop."""
    sizes = [] if stop_after is None else [3 * stop_after, 3 * stop_after]
    bounds, b0 = [], 0
    while b0 < permutations:
        b1 = min(permutations, b0 + (sizes.pop(0) if sizes else BLOCK))
        bounds.append((b0, b1))
        b0 = b1
    return bounds


def permutation_order(seed: int, concept: int, permutations: int, size: int) -> torch.Tensor:
    """The label permutations of concept number ``concept`` (``permutations x size`` indices): label vector ``b``
    is ``labels[order[b]]``. Drawn from ``(seed, concept)`` alone."""
    return next(_permutation_blocks(seed, concept, size, [(0, permutations)]))


def _permutation_blocks(seed: int, concept: int, size: int, bounds: Sequence[tuple[int, int]]
                        ) -> Iterator[torch.Tensor]:
    """:func:`permutation_order`'s rows ``b0:b1`` for each of the consecutive ``bounds``, drawn only when asked (a
    concept that stops early never sorts the rest): the CPU generator's stream is the same drawn in pieces."""
    state = int(np.random.SeedSequence([seed, concept]).generate_state(1)[0])
    generator = torch.Generator().manual_seed(state)
    for b0, b1 in bounds:
        yield torch.argsort(torch.rand(b1 - b0, size, generator=generator), dim=1)


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
        statistic = _NullStatistic(s, orientation, max_elements)
        observed.append(float(statistic.max_ap(y[None], torch.float64)[0]))
        t_obs = statistic.max_ap(y[None], torch.float32)[0]
        bounds = _blocks(permutations, stop_after)
        exceed, encoded, done = 0, 0, 0
        for shuffles in _permutation_blocks(seed, first_concept + c, y.numel(), bounds):
            null = statistic.max_ap(y[shuffles.to(device)], torch.float32)
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
