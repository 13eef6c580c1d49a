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

How many permutations. A concept draws permutations in stages (999, then five times as many each stage up to
``permutations``, 24,999 by default) and goes on to the next stage only while none has reached ``T_c``: a
concept some permutations reach stops at the end of its stage with ``(1 + #{T_b >= T_c}) / (1 + drawn)``, or
earlier at its ``stop_after``-th exceedance with Besag and Clifford's ``stop_after / drawn``. Both rules keep the
p-value valid (the stages because going on happens only when the p-value would be the stage's smallest; checked
exactly by integrating over the null). A null concept draws about 30 permutations; only concepts beyond every
permutation of a stage draw more, and the smallest p-value, ``1 / (1 + permutations)``, lets Benjamini-Hochberg
pass a concept on its own among up to ``alpha (1 + permutations)`` concepts (1,250 at the defaults: the paper's
1,197 fit).

An analytic bound instead of the last permutations. Before going past its first stage, a concept that no
permutation reached computes ``g``, a bound on ``P(T_b >= T_c)`` (:func:`_tail_bound`): the union over directions
of one direction's AP reaching ``T_c``, by Chernoff's bound on the exact distribution of a tie-free direction's
AP under relabelling (:mod:`robustsig.metrics._ap_tail`: it depends only on the set's size and positive count, so
one computation serves every concept and model of that size). The p-value is ``min(g / BOUND_SHARE, permutation
p-value)``, and when ``g / BOUND_SHARE <= 1 / (1 + permutations)`` no more permutations are drawn: a concept far
beyond chance costs 999 permutations and gets a p-value as small as its evidence (1e-30, say), so BH passes it
whatever the others do. The share costs a factor ``1 + BOUND_SHARE`` (1.001) on the test's size at most.

Duplicated images. Permuting labels between two copies of one image is not exchangeable (a set with every image
twice makes pure noise significant in 15 of 20 draws). Rows with identical scores on every direction are one
exchangeable unit by default (``units="auto"``): a permutation moves a unit's rows together, onto a unit of the
same size, so a set with every image twice gives exactly the p-values of the images once.

Why hand-written: the permutations change the labels, never the order of the scores, so each concept is sorted
once and the AP of every permuted label vector is read off that order by matrix products (the kernel,
:mod:`robustsig.metrics._null_kernel`, exact to a rigorous rounding bound, with float64 for the undecided and
ties grouped as in ``sklearn.metrics.average_precision_score``). Concepts run one per thread (one left alone
splits its blocks over the idle threads). At paper scale (1,197 concepts of 20 to 63,304 images, 1,000 directions,
pure noise) one model and basis takes ~22 s on 2 CPU cores (``python -m benchmarks significance``; the previous
kernel took 115 s); concepts with a signal cost more (see docs/study.md); a GPU (``device="cuda"``) runs the same
kernel.

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
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.stats
import torch

from robustsig.errors import InputError
from robustsig.metrics._checks import as_matrix, to_tensor
from robustsig.metrics._ap_tail import ap_tail_bound
from robustsig.metrics._null_kernel import SortedConcept
from robustsig.metrics._ranking import rank_exact_scores
from robustsig.metrics.concepts import AP_THRESHOLD

Orientation = Literal["positive", "both"]
ORIENTATIONS: tuple[str, ...] = ("positive", "both")
DEFAULT_PERMUTATIONS = 24_999
"""Permutations per concept at most: the smallest p-value, 1/25,000, lets Benjamini-Hochberg at alpha 0.05 pass a
concept on its own among up to 1,250 (paper scale: 1,197). A concept that no permutation reaches costs its set size x
directions x this budget; doubling it would double that worst case for a lone concept's margin beyond 1,250."""
FIRST_STAGE = 999
"""Permutations a concept draws before it may go on: only if none of them reached it (see :func:`_stages`)."""
STAGE_GROWTH = 5
"""Each further stage draws up to this many times the permutations of all stages before it."""
BOUND_SHARE = 1e-3
"""The analytic bound ``g`` enters as ``g / BOUND_SHARE``: the p-value ``min(g / BOUND_SHARE, permutation
p-value)`` rejects at level ``alpha`` with probability at most ``(1 + BOUND_SHARE) alpha`` under the null."""
DEFAULT_STOP_AFTER = 5
"""Exceedances after which a concept stops drawing permutations (Besag-Clifford: its p-value is then 5 / drawn). A
null concept draws ~30 permutations (10 cost ~55: 30 % more time at paper size, the same BH discoveries on the
bench); only p-values above 5 / 999 are coarser, and BH at 1,197 concepts reaches them only past 120 discoveries."""
_TOLERANCE = 1e-9
"""A permuted statistic this close below the observed one (or the threshold) counts as reaching it: the exact
float64 APs differ from sklearn's by rounding only (~1e-15)."""


@dataclass(frozen=True)
class PermutationTest:
    """Per-concept results of the permutation test (see :func:`permutation_p_values`).

    Attributes:
        max_ap: ``T_c``, the largest AP over directions of each concept (float64, length C).
        p_values: the staged permutation p-value (``(1 + #{b: T_b >= T_c}) / (1 + drawn)`` at a stage's end,
            ``stop_after / drawn`` at the ``stop_after``-th exceedance), or the analytic bound where smaller.
        null_encoded: the share of permutations whose ``T_b`` reaches ``threshold`` (the chance that eq. 5 counts
            the concept when its labels carry no information).
        drawn: permutations drawn per concept (fewer than ``permutations`` when a concept stopped early).
        bounded: per concept, the p-value is the analytic bound (its statistic is beyond what permutations can
            resolve; see :func:`concept_significance`).
        permutations, threshold, orientation: the test's settings.
    """

    max_ap: torch.Tensor
    p_values: torch.Tensor
    null_encoded: torch.Tensor
    drawn: torch.Tensor
    bounded: torch.Tensor
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


def exchangeable_units(scores: Any) -> np.ndarray:
    """Exchangeable units of one concept's set: rows with identical scores on every direction are one unit (the
    same image listed twice; two different images give identical activations only by accident, and then moving
    them together still gives a valid test). Returns the unit id of each row, ids in order of first appearance.

    >>> exchangeable_units(torch.tensor([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0]])).tolist()
    [0, 1, 0]
    """
    rows = to_tensor(scores, "scores").detach().cpu().numpy()
    rows = rows.reshape(len(rows), -1)
    rows = np.ascontiguousarray(rows + rows.dtype.type(0) if np.issubdtype(rows.dtype, np.floating) else rows)
    if len(rows) > 1 and rows.itemsize in (4, 8):                       # -0.0 became 0.0 just above
        # a hash first: a random linear form of the rows' bits in exact integer arithmetic (mod 2**64, so equal
        # rows hash equally whatever the summation order); distinct rows almost never collide, and are told apart
        # exactly below when they do, so a set without duplicates costs one pass
        bits = rows.view(np.uint32 if rows.itemsize == 4 else np.uint64)
        weights = np.random.default_rng(0).integers(1, 2**63, size=rows.shape[1], dtype=np.uint64) | np.uint64(1)
        hashes = np.concatenate([bits[r:r + 4096].astype(np.uint64) @ weights for r in range(0, len(bits), 4096)])
        ordered = np.sort(hashes)
        if not bool((ordered[1:] == ordered[:-1]).any()):
            return np.arange(len(rows))
    return _first_seen_ids(rows.view(np.dtype((np.void, rows.itemsize * rows.shape[1]))).ravel())


def _first_seen_ids(values: np.ndarray) -> np.ndarray:
    """Ids of the distinct values, numbered in order of first appearance."""
    _, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.reshape(-1)]


class _Shuffles:
    """The label permutations of one concept, drawn from ``(seed, concept)`` alone, block after block (the CPU
    generator's stream is the same drawn in pieces). Every row is its own unit unless ``units`` groups rows: then a
    permutation moves whole units onto units of the same size (member by member), uniformly within each size
    class; with every unit of one size this is the permutation of the units that a set of them alone would draw."""

    def __init__(self, seed: int, concept: int, size: int, units: np.ndarray | None) -> None:
        state = int(np.random.SeedSequence([seed, concept]).generate_state(1)[0])
        self.generator = torch.Generator().manual_seed(state)
        self.size = size
        self.classes: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.keys = size
        if units is not None:
            counts = np.bincount(units)
            members = np.argsort(units, kind="stable")                         # rows grouped by unit, in order
            offsets = np.concatenate([[0], np.cumsum(counts)])
            for unit_size in np.unique(counts):
                chosen = np.flatnonzero(counts == unit_size)                   # units of this size, in id order
                rows = members[offsets[chosen][:, None] + np.arange(unit_size)]  # units x unit_size
                self.classes.append((torch.from_numpy(chosen), torch.from_numpy(rows)))
            self.keys = len(counts)

    def draw(self, count: int) -> torch.Tensor:
        """The next ``count`` permutations: ``count x size`` indices, label vector ``b`` is ``labels[order[b]]``."""
        keys = torch.rand(count, self.keys, generator=self.generator)
        if not self.classes:
            return torch.argsort(keys, dim=1)
        order = torch.empty(count, self.size, dtype=torch.int64)
        for chosen, rows in self.classes:
            shuffled = torch.argsort(keys[:, chosen], dim=1)                   # unit j takes unit shuffled[j]'s labels
            order[:, rows.flatten()] = rows[shuffled].reshape(count, -1)
        return order


def permutation_order(seed: int, concept: int, permutations: int, size: int, units: Any = None) -> torch.Tensor:
    """The label permutations of concept number ``concept`` (``permutations x size`` indices): label vector ``b``
    is ``labels[order[b]]``. Drawn from ``(seed, concept)`` alone; ``units`` (one id per row, see
    :func:`exchangeable_units`) moves the rows of a unit together."""
    return _Shuffles(seed, concept, size, None if units is None else np.asarray(units)).draw(permutations)


def _finite_matrix(x: Any, name: str) -> torch.Tensor:
    """``as_matrix`` with its finite check done as one float64 sum on the CPU (a sum of finite float32 values never
    overflows float64; the element-wise check, ~5x slower here, runs only to name the first bad entry)."""
    t = as_matrix(x, name, finite=False)
    if t.device.type == "cpu" and math.isfinite(float(np.sum(t.numpy(), dtype=np.float64))):
        return t
    return as_matrix(t, name)


def _check_sets(scores: Any, labels: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    if not isinstance(scores, (list, tuple)) or not isinstance(labels, (list, tuple)):
        raise InputError("scores and labels must be lists with one entry per concept: scores[c] an N_c x D matrix "
                         "of the concept's balanced image set, labels[c] its N_c booleans (True: positive); the "
                         "list form of rs.average_precision_matrix")
    if len(scores) != len(labels) or not scores:
        raise InputError(f"scores and labels must list the same concepts (at least one); got {len(scores)} score "
                         f"sets and {len(labels)} label vectors")
    sets = [_finite_matrix(rank_exact_scores(s), f"scores[{c}] (samples x directions)") for c, s in enumerate(scores)]
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


def _check_units(units: Any, sets: Sequence[torch.Tensor]) -> list[np.ndarray | None]:
    """Per concept the unit id of each row (``None``: every row its own unit)."""
    if units is None:
        return [None] * len(sets)
    if isinstance(units, str):
        if units != "auto":
            raise InputError(f"units must be 'auto', None or one id array per concept; got {units!r}")
        return [_grouping(exchangeable_units(s)) for s in sets]
    if not isinstance(units, (list, tuple)) or len(units) != len(sets):
        raise InputError(f"units must list one id array per concept ({len(sets)}); got {type(units).__name__}")
    out: list[np.ndarray | None] = []
    for c, (u, s) in enumerate(zip(units, sets)):
        ids = to_tensor(u, f"units[{c}]").cpu().numpy()
        if ids.shape != (s.shape[0],) or not np.issubdtype(ids.dtype, np.integer):
            raise InputError(f"units[{c}] must hold one integer id per row of scores[{c}] ({s.shape[0]}); got "
                             f"dtype {ids.dtype}, shape {ids.shape}")
        out.append(_grouping(_first_seen_ids(ids)))
    return out


def _grouping(ids: np.ndarray) -> np.ndarray | None:
    """Unit ids, or None when every row is its own unit."""
    return None if len(ids) == 0 or int(ids.max()) + 1 == len(ids) else ids


def _stages(first_stage: int, permutations: int) -> list[int]:
    """The permutations drawn by the end of each stage: ``first_stage``, then ``STAGE_GROWTH`` times more (as
    ``k * (first_stage + 1) - 1``) up to ``permutations``."""
    stages = [min(first_stage, permutations)]
    while stages[-1] < permutations:
        stages.append(min(permutations, (stages[-1] + 1) * STAGE_GROWTH - 1))
    return stages


def _block_size(drawn: int, exceed: int, limit: int, stop_after: int | None, smallest: int, largest: int) -> int:
    """Permutations to draw next: with sequential stopping, about as many as the exceedances seen so far say are
    left before the ``stop_after``-th (so a concept draws little past its stop), at least ``smallest`` (the
    kernel's efficient size) and at most ``largest`` (memory)."""
    if stop_after is None:
        wanted = largest
    else:
        left = stop_after - exceed
        wanted = left if drawn == 0 else math.ceil(left * (drawn + 1) / (exceed + 1))
    return int(min(limit - drawn, max(smallest, min(largest, wanted))))


def permutation_p_values(scores: Sequence[Any], labels: Sequence[Any], *, threshold: float = AP_THRESHOLD,
                         permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0, orientation: Orientation = "positive",
                         first_concept: int = 0, device: str | torch.device | None = None,
                         stop_after: int | None = None, first_stage: int = FIRST_STAGE, units: Any = "auto",
                         tail_bound: bool = True) -> PermutationTest:
    """The per-concept permutation test of :func:`concept_significance` (no multiple-testing correction).

    Args:
        scores, labels, threshold, permutations, seed, orientation, device, units: see :func:`concept_significance`.
        first_concept: the index of ``scores[0]`` among all concepts: concept ``c``'s permutations are drawn from
            ``(seed, first_concept + c)``, so testing the concepts in groups gives the same p-values as one call.
        stop_after: stop drawing permutations for a concept at its ``stop_after``-th exceedance (``T_b >= T_c``)
            and report Besag and Clifford's sequential p-value ``stop_after / L`` (L: permutations drawn). None:
            no sequential stopping.
        first_stage: a concept draws at most this many permutations, and goes on to ``permutations`` only if none
            of them reached its statistic (see :func:`concept_significance`).
        tail_bound: a concept that no permutation of the first stage reached first tries the analytic bound.

    Returns:
        :class:`PermutationTest`.
    """
    if orientation not in ORIENTATIONS:
        raise InputError(f"orientation must be one of {', '.join(ORIENTATIONS)}; got {orientation!r}")
    for name, value in (("permutations", permutations), ("first_stage", first_stage)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer; got {value!r}")
    if not 0 <= threshold <= 1:
        raise InputError(f"threshold must be an AP in [0, 1]; got {threshold}")
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int) or stop_after < 1):
        raise InputError(f"stop_after must be a positive integer or None; got {stop_after!r}")
    sets, flags = _check_sets(scores, labels)
    unit_ids = _check_units(units, sets)
    device = torch.device(device) if device is not None else sets[0].device
    design = _Design(threshold, permutations, seed, orientation, stop_after, _stages(first_stage, permutations),
                     tail_bound, device)
    jobs = [(first_concept + c, s, y, ids) for c, (s, y, ids) in enumerate(zip(sets, flags, unit_ids))]
    workers = torch.get_num_threads() if device.type == "cpu" else 1
    if workers > 1:
        # one concept per thread, each single-threaded: small kernels parallelise better across concepts than
        # within one, and nothing spins at a barrier when other processes hold the cores; largest concepts first,
        # and a concept still drawing when threads fall idle splits its blocks over them (_Cores)
        largest_first = sorted(range(len(jobs)), key=lambda c: -jobs[c][1].numel())
        try:
            torch.set_num_threads(1)
            with ThreadPoolExecutor(workers) as pool, _Cores(workers, len(jobs)) as cores:
                done = dict(zip(largest_first, pool.map(lambda c: cores.run(design, *jobs[c]), largest_first)))
        finally:
            torch.set_num_threads(workers)
        results = [done[c] for c in range(len(jobs))]
    else:
        results = [_test_concept(design, *job) for job in jobs]
    observed, p_values, null_encoded, drawn, bounded = zip(*results)
    as_tensor = lambda values: torch.tensor(values, dtype=torch.float64)  # noqa: E731
    return PermutationTest(as_tensor(observed), as_tensor(p_values), as_tensor(null_encoded), torch.tensor(drawn),
                           torch.tensor(bounded), permutations, float(threshold), orientation)


class _Cores:
    """The CPU threads of one call, shared by its concepts: while fewer concepts are left than threads (the last,
    largest ones, or one that draws many permutations), a concept splits each block of label rows over the idle
    threads. The rows' decisions are exact and independent of each other, so the split changes no result."""

    def __init__(self, workers: int, concepts: int) -> None:
        self.workers = workers
        self.left = concepts
        self.lock = threading.Lock()
        self.helpers = ThreadPoolExecutor(workers - 1)

    def __enter__(self) -> _Cores:
        return self

    def __exit__(self, *exc: object) -> None:
        self.helpers.shutdown()

    def run(self, design: _Design, *job: Any) -> tuple[float, float, float, int, bool]:
        """One concept's :func:`_test_concept` on these threads, counted among the concepts left."""
        try:
            return _test_concept(design, *job, cores=self)
        finally:
            with self.lock:
                self.left -= 1

    def reach(self, concept: SortedConcept, flags: torch.Tensor, levels: tuple[float, ...]
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`SortedConcept.reach` of ``flags``' rows, piece by piece until threads fall idle, then the rest
        split over them (helpers never wait on each other, so the split cannot deadlock)."""
        piece = max(_SPLIT_ROWS, -(-_PIECE_ENTRIES // (concept.n * concept.d)))
        results, start, rows = [], 0, flags.shape[0]
        while start < rows:
            parts = min(1 + max(0, self.workers - self.left), (rows - start) // _SPLIT_ROWS)
            if parts > 1:
                chunks = flags[start:].tensor_split(parts)
                pending = [self.helpers.submit(concept.reach, chunk, levels) for chunk in chunks[1:]]
                results += [concept.reach(chunks[0], levels)] + [future.result() for future in pending]
                break
            results.append(concept.reach(flags[start:start + piece], levels))
            start += piece
        return torch.cat([r for r, _ in results], 1), torch.cat([c for _, c in results])


_SPLIT_ROWS = 32
"""Label rows per thread at least when a concept splits a block (fewer are not worth a thread's start)."""
_PIECE_ENTRIES = 1 << 23
"""Entries (label rows x samples x directions) a concept reads before it looks again for idle threads."""


@dataclass(frozen=True)
class _Design:
    """The settings every concept's test shares (see :func:`permutation_p_values`)."""

    threshold: float
    permutations: int
    seed: int
    orientation: str
    stop_after: int | None
    stages: list[int]
    tail_bound: bool
    device: torch.device


def _test_concept(design: _Design, concept_index: int, scores: torch.Tensor, flags: torch.Tensor,
                  units: np.ndarray | None, cores: _Cores | None = None) -> tuple[float, float, float, int, bool]:
    """One concept's test: ``(statistic, p-value, share of permutations reaching the threshold, permutations
    drawn, p-value from the bound)``; ``cores``: the call's threads, to split blocks over when some are idle."""
    device, stop_after = design.device, design.stop_after
    scores, y = scores.to(device), flags.to(device)
    concept = SortedConcept(scores, int(y.sum()), design.orientation)
    t_obs = concept.statistic(y)
    levels = (t_obs - _TOLERANCE, design.threshold - _TOLERANCE)
    shuffles = _Shuffles(design.seed, concept_index, y.numel(), units)
    smallest = max(1, min(64, -(-(1 << 21) // scores.numel())))     # enough work per block for the kernel
    largest = max(smallest, min(1024, (1 << 24) // y.numel()))      # bounded memory
    stages = list(design.stages)
    exceed = encoded = drawn = 0
    limit, p_value, bound = stages.pop(0), None, None
    null_top, null_bottom = -math.inf, math.inf
    while p_value is None:
        count = _block_size(drawn, exceed, limit, stop_after, smallest, largest)
        permuted = y[shuffles.draw(count).to(device)]
        reached, ceiling = cores.reach(concept, permuted, levels) if cores else concept.reach(permuted, levels)
        reached = reached.cpu()
        hits = reached[0].cumsum(0)
        if stop_after is not None and exceed + int(hits[-1]) >= stop_after:   # Besag-Clifford: stop at the
            stop = int(torch.searchsorted(hits, stop_after - exceed))          # stop_after-th exceedance
            encoded += int(reached[1, :stop + 1].sum())
            drawn += stop + 1
            exceed = stop_after
            p_value = exceed / drawn
            break
        exceed += int(hits[-1])
        encoded += int(reached[1].sum())
        drawn += count
        null_top, null_bottom = max(null_top, float(ceiling.max())), min(null_bottom, float(ceiling.min()))
        if exceed == 0 and bound is None and design.tail_bound and units is None and (
                drawn >= limit or t_obs - null_top > null_top - null_bottom):
            # nothing reached it, and it stands clear of every permutation so far: its bound may decide at once
            bound = _tail_bound(concept, levels[0]) / BOUND_SHARE
        if bound is not None and bound <= 1 / (1 + design.permutations):
            p_value = bound                             # below any p-value the permutations could give
        elif drawn < limit:
            continue
        elif exceed == 0 and stages:                    # nothing reached it: a smaller p-value is worth its cost
            limit = stages.pop(0)
        else:
            p_value = (1 + exceed) / (1 + drawn)
    by_bound = bound is not None and bound <= p_value
    return t_obs, min(p_value, bound) if by_bound else p_value, encoded / drawn, drawn, by_bound


def _tail_bound(concept: SortedConcept, level: float) -> float:
    """A bound on the chance that a random relabelling's statistic reaches ``level``: the union over directions
    (and orientations) of each direction's AP reaching it. One tie-free direction's tail (:func:`ap_tail_bound`)
    serves every direction, at ``level`` lowered by the most its ties can raise its AP; a direction of one value
    has AP ``P / N`` whatever the labels."""
    slack = concept.tie_slack if concept.both else concept.tie_slack[:1]
    varying = ~concept.constant
    tails = ap_tail_bound(concept.n, concept.positives, (level - slack[:, varying]).numpy())
    fixed = float(slack.shape[0] * int(concept.constant.sum())) if level <= concept.positives / concept.n else 0.0
    return min(1.0, float(tails.sum()) + fixed)


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
                         stop_after: int | None = DEFAULT_STOP_AFTER, first_stage: int = FIRST_STAGE,
                         units: Any = "auto") -> ConceptSignificance:
    """Unique concepts (eq. 5) and how many of them survive a label-permutation test with BH correction.

    Each concept draws permutations until one of three things happens: its ``stop_after``-th exceedance (Besag
    and Clifford's sequential p-value ``stop_after / drawn``: null concepts cost a few dozen permutations); the
    end of the first stage (``first_stage`` permutations; p-value ``(1 + exceedances) / (1 + first_stage)``); or,
    for a concept that none of the first stage reached, the end of the whole budget (``permutations``). Going on
    only after zero exceedances keeps the p-value valid (it is at most ``1 / (1 + first_stage)`` either way). Before
    it goes on, such a concept tries an analytic bound, valid whatever the directions' dependence: the number of
    directions (times 2 for ``"both"``) times a Chernoff bound on one direction's AP reaching the statistic under a
    random relabelling (exact dynamic programme over the ranks, shared by every concept of the same size). When
    that bound is below ``1 / (1 + permutations)`` it is the p-value and no more permutations are drawn; it can be
    far smaller, so a concept far beyond chance passes BH on its own.

    Args:
        scores: the paper's balanced per-concept sets: a list of C matrices ``N_c x D`` (the projections of the
            concept's positive and negative images on the D probed directions).
        labels: a list of C boolean vectors ``N_c`` (True: the image shows the concept); each with both classes.
        threshold: AP at or above which a direction encodes a concept (paper: 0.9).
        permutations: label permutations per concept at most (the smallest permutation p-value is
            ``1 / (1 + permutations)``).
        alpha: the false discovery rate of the Benjamini-Hochberg procedure.
        seed: seeds the permutations (the same seed gives the same p-values).
        orientation: ``"positive"`` (the paper's: high projections are positives) or ``"both"`` (max of
            ``AP(s)`` and ``AP(-s)``); use the orientation the AP matrix was computed with.
        device: where the permutations run (default: the scores' device); ``"cuda"`` at paper scale.
        stop_after: the exceedances at which a concept stops (None: never before its stage's end).
        first_stage: permutations before a concept may go on to ``permutations``.
        units: the exchangeable units of each set. Permuting labels between copies of one image is not
            exchangeable (a set with every image twice makes pure noise significant), so rows of one unit move
            together, onto units of the same size. ``"auto"``: rows with identical scores on every direction are one
            unit; a list: one integer id per row for each concept (e.g. from the images' contents); None: every row
            its own unit.

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
                                orientation=orientation, device=device, stop_after=stop_after,
                                first_stage=first_stage, units=units)
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
                             for name in ("max_ap", "p_values", "null_encoded", "drawn", "bounded")),
                           first.permutations, first.threshold, first.orientation)
