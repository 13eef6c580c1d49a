"""Concept significance: the permutation statistic and p-values against a brute-force sklearn loop (ties, both
orientations, chunked, sequential stopping), pure-noise sets (BH keeps the count near zero while the raw count
is large), planted concepts found, grouped calls equal one call, and input validation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

import robustsig as rs
from robustsig.errors import InputError
from robustsig.metrics._ap_tail import _moments, ap_tail_bound
from robustsig.metrics.significance import FIRST_STAGE, exchangeable_units, permutation_order, permutation_p_values


def as_float64(scores):
    return [s.double().numpy() for s in scores]


def brute_statistic(scores: np.ndarray, labels: np.ndarray, orientation: str) -> float:
    signs = (1, -1) if orientation == "both" else (1,)
    return max(average_precision_score(labels, sign * scores[:, d]) for sign in signs for d in range(scores.shape[1]))


def brute_p_values(scores, labels, permutations, seed, orientation, stop_after=None, first_stage=None, units="auto"):
    """p-values by looping over sklearn, with the permutations the function draws: Besag-Clifford stopping, a
    concept goes on past the end of a stage (``first_stage``, then five times as many each time) only when no
    permutation reached it, rows with equal scores move together."""
    out, observed = [], []
    for c, (s, y) in enumerate(zip(scores, labels)):
        s, y = np.asarray(s), np.asarray(y)
        t_obs = brute_statistic(s, y, orientation)
        observed.append(t_obs)
        exceed, drawn, p = 0, 0, None
        limit = min(first_stage or permutations, permutations)
        ids = exchangeable_units(s) if units == "auto" else None if units is None else units[c]
        for order in permutation_order(seed, c, permutations, len(y), ids).numpy():
            drawn += 1
            exceed += brute_statistic(s, y[order], orientation) >= t_obs - 1e-9
            if stop_after is not None and exceed == stop_after:
                p = exceed / drawn
                break
            if drawn == limit:
                if exceed == 0 and limit < permutations:   # the next stage: five times as many, at most all
                    limit = min(permutations, 5 * (limit + 1) - 1)
                    continue
                break
        out.append(p if p is not None else (1 + exceed) / (1 + drawn))
    return np.array(observed), np.array(out)


def tiny_sets(seed: int, concepts: int, size: int, directions: int, ties: bool):
    rng = np.random.default_rng(seed)
    scores, labels = [], []
    for c in range(concepts):
        y = np.zeros(size, dtype=bool)
        y[: size // 2] = True
        rng.shuffle(y)
        s = rng.normal(size=(size, directions)) + (1.5 * y[:, None] * (np.arange(directions) == c % directions))
        if ties == "some":                                    # ties in every other direction only
            s[:, ::2] = np.round(s[:, ::2] * 2) / 2
        elif ties == "few":                                   # a pair and a triple of equal scores per direction
            for d in range(1, directions):                    # (direction 0 keeps none)
                a, b, c, e, f = rng.choice(size, 5, replace=False)
                s[[b, c], d] = s[a, d]
                s[f, d] = s[e, d]
        elif ties:
            s = np.round(s * 2) / 2
        scores.append(torch.tensor(s, dtype=torch.float32))
        labels.append(torch.tensor(y))
    return scores, labels


@pytest.mark.parametrize("orientation", ["positive", "both"])
@pytest.mark.parametrize("ties", [False, True, "some", "few"])
def test_p_values_equal_brute_force_sklearn(orientation, ties):
    scores, labels = tiny_sets(3, concepts=3, size=10, directions=3, ties=ties)
    test = permutation_p_values(scores, labels, permutations=60, seed=5, orientation=orientation, tail_bound=False)
    observed, expected = brute_p_values(as_float64(scores), labels, 60, 5, orientation)
    np.testing.assert_allclose(test.max_ap.numpy(), observed, atol=1e-12)
    np.testing.assert_allclose(test.p_values.numpy(), expected, atol=1e-12)
    assert test.drawn.tolist() == [60] * 3


def test_sequential_stopping_equals_brute_force():
    scores, labels = tiny_sets(4, concepts=4, size=10, directions=3, ties=False)
    test = permutation_p_values(scores, labels, permutations=100, seed=2, stop_after=4, tail_bound=False)
    _, expected = brute_p_values(as_float64(scores), labels, 100, 2, "positive", stop_after=4)
    np.testing.assert_allclose(test.p_values.numpy(), expected, atol=1e-12)
    assert int(test.drawn.min()) < 100  # some concept stopped early


def small_chunks(monkeypatch):
    """The kernel in pieces: 16-position segments, sorting two directions at a time, exact batches of 3 rows."""
    from robustsig.metrics import _null_kernel

    monkeypatch.setattr(_null_kernel, "CHUNK", 64)
    monkeypatch.setattr(_null_kernel, "_SORT_ROWS", 2 * 120)
    monkeypatch.setattr(_null_kernel, "_EXACT_ENTRIES", 3 * 120)


@pytest.mark.parametrize("ties", [False, True, "some", "few"])
@pytest.mark.parametrize("size", [30, 120])
def test_statistic_equals_sklearn_in_chunks(size, ties, monkeypatch):
    scores, labels = tiny_sets(9, concepts=3, size=size, directions=7, ties=ties)
    whole = permutation_p_values(scores, labels, permutations=40, seed=1, orientation="both", tail_bound=False)
    small_chunks(monkeypatch)
    for orientation in ("positive", "both"):
        expected = [brute_statistic(s.double().numpy(), y.numpy(), orientation) for s, y in zip(scores, labels)]
        test = permutation_p_values(scores, labels, permutations=3, orientation=orientation)
        np.testing.assert_allclose(test.max_ap.numpy(), expected, atol=1e-12)
    chunked = permutation_p_values(scores, labels, permutations=40, seed=1, orientation="both", tail_bound=False)
    np.testing.assert_array_equal(whole.p_values.numpy(), chunked.p_values.numpy())
    expected = brute_p_values(as_float64(scores), labels, 40, 1, "both")[1]
    np.testing.assert_allclose(chunked.p_values.numpy(), expected, atol=1e-12)
    # with the analytic bound a p-value can only be smaller (the planted concepts' are, at 120 images)
    bounded = permutation_p_values(scores, labels, permutations=40, seed=1, orientation="both")
    assert bool((bounded.p_values <= chunked.p_values).all())


def noise_sets(seed: int, concepts: int, size: int = 12, directions: int = 150):
    g = torch.Generator().manual_seed(seed)
    labels = [torch.randperm(size, generator=g) < size // 2 for _ in range(concepts)]
    return [torch.randn(size, directions, generator=g) for _ in range(concepts)], labels


def test_pure_noise_keeps_significant_count_near_chance_while_raw_count_is_large():
    scores, labels = noise_sets(0, concepts=120)
    result = rs.concept_significance(scores, labels, threshold=0.9, permutations=200, alpha=0.05, seed=1)
    assert result.unique_concepts >= 40               # AP >= 0.9 by chance on 150 directions of 12 images
    assert result.significant_concepts <= 0.05 * 120  # BH: no more than alpha * C
    assert abs(result.unique_concepts - result.chance_unique) < 4 * np.sqrt(120 * 0.25)  # the chance level is right
    p = result.p_values.numpy()
    assert 0.3 < np.mean(p <= 0.5) < 0.7              # null p-values are roughly uniform


def test_planted_concepts_are_found():
    scores, labels = noise_sets(1, concepts=40, size=24, directions=100)
    planted = list(range(0, 40, 4))
    for c in planted:
        scores[c][:, c] += 3.0 * labels[c]
    result = rs.concept_significance(scores, labels, permutations=400, alpha=0.05, seed=0)
    significant = set(result.significant.nonzero().flatten().tolist())
    assert set(planted) <= significant
    assert len(significant - set(planted)) <= 2
    assert float(result.p_values[planted].max()) <= 3 / 401 + 1e-12  # at most 2 noise permutations reach it
    assert result.discoveries >= len(planted)
    assert result.as_dict()["significant_concepts"] == result.significant_concepts


def test_groups_give_the_same_p_values_as_one_call():
    scores, labels = noise_sets(2, concepts=6, directions=20)
    whole = permutation_p_values(scores, labels, permutations=50, seed=3)
    parts = [permutation_p_values(scores[i:i + 2], labels[i:i + 2], permutations=50, seed=3, first_concept=i)
             for i in range(0, 6, 2)]
    np.testing.assert_array_equal(whole.p_values.numpy(), torch.cat([p.p_values for p in parts]).numpy())


def test_a_concept_split_over_idle_threads_gives_the_single_thread_result(monkeypatch):
    # one large concept among small ones: once the small ones are done, its blocks of label rows are read by both
    # threads (both read the large one's rows); every number equals the one-thread run's
    import threading

    from robustsig.metrics import _null_kernel

    rng = np.random.default_rng(12)
    scores = [rng.standard_normal((n, 48)).astype(np.float32) for n in (1200, 30, 40)]
    labels = [rng.permutation(np.arange(len(s)) < len(s) // 2) for s in scores]
    readers = set()
    reach = _null_kernel.SortedConcept.reach

    def counted(self, flags, levels):
        if self.n == 1200:
            readers.add(threading.get_ident())
        return reach(self, flags, levels)

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = permutation_p_values(scores, labels, permutations=3_000, seed=5, first_stage=3_000)
        torch.set_num_threads(2)
        monkeypatch.setattr(_null_kernel.SortedConcept, "reach", counted)
        split = permutation_p_values(scores, labels, permutations=3_000, seed=5, first_stage=3_000)
    finally:
        torch.set_num_threads(threads)
    assert len(readers) == 2 and int(split.drawn[0]) == 3_000
    for name in ("max_ap", "p_values", "null_encoded", "drawn", "bounded"):
        np.testing.assert_array_equal(getattr(alone, name).numpy(), getattr(split, name).numpy(), err_msg=name)


@pytest.mark.parametrize("call, message", [
    (lambda s, y: rs.concept_significance(s[0], y), "lists"),
    (lambda s, y: rs.concept_significance(s, y[:1]), "same concepts"),
    (lambda s, y: rs.concept_significance(s, [torch.ones(12, dtype=torch.bool), y[1]]), "both positive"),
    (lambda s, y: rs.concept_significance(s, y, permutations=0), "permutations"),
    (lambda s, y: rs.concept_significance(s, y, orientation="negative"), "orientation"),
    (lambda s, y: rs.concept_significance(s, y, alpha=1.5), "alpha"),
    (lambda s, y: rs.concept_significance([s[0], s[1][:, :3]], y), "same directions"),
])
def test_bad_input_names_the_problem(call, message):
    scores, labels = noise_sets(3, concepts=2, directions=5)
    with pytest.raises(InputError, match=message):
        call(scores, labels)


def test_permutations_drawn_block_by_block_are_the_whole_draw():
    from robustsig.metrics.significance import _Shuffles

    for units in (None, np.arange(3001) // 3):
        shuffles = _Shuffles(4, 7, 3001, units)
        pieces = torch.cat([shuffles.draw(n) for n in (10, 1, 289, 400)])
        assert torch.equal(pieces, permutation_order(4, 7, 700, 3001, units))


def test_integer_scores_float32_cannot_hold_are_not_tied():
    # 2**24 + k for k = 0..11 collapse to a handful of float32 values: the statistic and its null must not
    rng = np.random.default_rng(5)
    scores = (2**24 + rng.permutation(np.arange(24)).reshape(12, 2)).astype(np.int64)
    labels = np.arange(12) % 2 == 0
    test = permutation_p_values([scores], [labels], permutations=40, seed=3, tail_bound=False)
    observed, expected = brute_p_values([scores], [labels], 40, 3, "positive")
    assert test.max_ap.item() == pytest.approx(observed[0], abs=1e-12)
    np.testing.assert_allclose(test.p_values.numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("orientation", ["positive", "both"])
def test_large_sets_with_sparse_ties_equal_sklearn(orientation):
    # 2,000 images: the fast path runs in many blocks and segments, and float16-rounded scores tie here and there
    rng = np.random.default_rng(11)
    y = rng.permutation(np.arange(2000) < 1000)
    s = (rng.normal(size=(2000, 4)) + 0.3 * y[:, None] * np.array([0.0, 1.0, 0.2, -1.0])).astype(np.float16)
    scores = [torch.from_numpy(s.astype(np.float32))]
    test = permutation_p_values(scores, [torch.from_numpy(y)], permutations=12, seed=4, orientation=orientation,
                                tail_bound=False)
    observed, expected = brute_p_values(as_float64(scores), [y], 12, 4, orientation)
    assert test.max_ap.item() == pytest.approx(observed[0], abs=1e-12)
    np.testing.assert_allclose(test.p_values.numpy(), expected, atol=1e-12)


def doubled_noise(seed: int, double: bool, size: int = 20, directions: int = 100):
    g = torch.Generator().manual_seed(seed)
    scores, labels = torch.randn(size, directions, generator=g), torch.randperm(size, generator=g) < size // 2
    return (scores.repeat_interleave(2, 0), labels.repeat_interleave(2)) if double else (scores, labels)


def test_duplicated_images_are_permuted_as_one_unit():
    # pure noise, each image listed twice: permuting the copies apart is not exchangeable and made noise significant
    def discoveries(double: bool, units) -> tuple[int, list[float]]:
        found, p_values = 0, []
        for seed in range(20):
            scores, labels = doubled_noise(seed, double)
            result = rs.concept_significance([scores], [labels], permutations=199, seed=seed, units=units)
            found += result.discoveries
            p_values.append(float(result.p_values[0]))
        return found, p_values

    plain, plain_p = discoveries(False, "auto")
    naive, _ = discoveries(True, None)          # every row its own unit: the old behaviour
    fixed, fixed_p = discoveries(True, "auto")
    assert plain <= 2 and naive >= 12
    assert fixed == plain and fixed_p == plain_p  # the copies move together: the test of the images themselves


def test_units_from_identical_rows_and_explicit_ids_equal_brute_force():
    # some images twice, one three times, and one "image" whose copies disagree on the label
    rng = np.random.default_rng(2)
    s = rng.normal(size=(14, 3))
    rows = np.r_[np.arange(14), [0, 3, 3, 7, 9]]
    scores = s[rows].astype(np.float32)
    labels = rng.random(14) < 0.5
    labels[:2] = [True, False]
    y = labels[rows]
    y[-1] = not y[9]                              # the second copy of image 9 disagrees
    units = exchangeable_units(torch.from_numpy(scores))
    assert np.array_equal(units, np.r_[np.arange(14), [0, 3, 3, 7, 9]])
    for orientation in ("positive", "both"):
        test = permutation_p_values([scores], [y], permutations=50, seed=6, orientation=orientation,
                                    tail_bound=False)
        _, expected = brute_p_values([scores.astype(np.float64)], [y], 50, 6, orientation)
        np.testing.assert_allclose(test.p_values.numpy(), expected, atol=1e-12)
        relabelled = permutation_p_values([scores], [y], permutations=50, seed=6, orientation=orientation,
                                          units=[100 - rows], tail_bound=False)
        np.testing.assert_array_equal(relabelled.p_values.numpy(), test.p_values.numpy())
    sizes = np.bincount(units)
    for order in permutation_order(6, 0, 50, len(y), units).numpy():
        for u in np.unique(units):               # the rows of a unit take the labels of one unit of the same size
            source = np.unique(units[order[units == u]])
            assert len(source) == 1 and sizes[source[0]] == sizes[u]


def test_bad_units_are_named():
    scores, labels = noise_sets(3, concepts=2, directions=5)
    with pytest.raises(InputError, match="units"):
        rs.concept_significance(scores, labels, units="images")
    with pytest.raises(InputError, match="units"):
        rs.concept_significance(scores, labels, units=[np.zeros(12, dtype=int)])
    with pytest.raises(InputError, match=r"units\[1\]"):
        rs.concept_significance(scores, labels, units=[np.zeros(12, dtype=int), np.zeros(5, dtype=int)])


@pytest.mark.parametrize("orientation", ["positive", "both"])
def test_stages_equal_brute_force(orientation):
    # stages of 9, 49 and 60 permutations: a concept goes on only while no permutation reached it
    scores, labels = tiny_sets(4, concepts=4, size=12, directions=3, ties="few")
    scores[1][:, 0] = torch.from_numpy(np.where(labels[1].numpy(), 5.0, -5.0) + np.arange(12) * 1e-3).float()
    test = permutation_p_values(scores, labels, permutations=60, seed=8, orientation=orientation, first_stage=9,
                                stop_after=3, tail_bound=False)
    _, expected = brute_p_values(as_float64(scores), labels, 60, 8, orientation, stop_after=3, first_stage=9)
    np.testing.assert_allclose(test.p_values.numpy(), expected, atol=1e-12)
    assert int(test.drawn[1]) == 60 and int(test.drawn.min()) < 60


def exact_null(scores: np.ndarray, positives: int, orientation: str) -> np.ndarray:
    """The statistic of every one of the C(N, P) labellings: the exact permutation null."""
    n = len(scores)
    out = []
    for chosen in itertools.combinations(range(n), positives):
        y = np.zeros(n, dtype=bool)
        y[list(chosen)] = True
        out.append(brute_statistic(scores, y, orientation))
    return np.array(out)


@pytest.mark.parametrize("n, positives", [(12, 6), (14, 4), (16, 8)])
def test_one_direction_tail_bound_holds_and_is_close(n, positives):
    # the AP of one tie-free direction under every labelling: the bound is at least the exact tail, and within a
    # small factor of it where a test needs it (tails below 1 %)
    ap = np.sort(exact_null(np.arange(n, 0, -1.0)[:, None], positives, "positive"))
    mean, sd = _moments(n, positives)
    assert mean == pytest.approx(positives * ap.mean(), rel=1e-12)
    assert sd == pytest.approx(positives * ap.std(), rel=1e-9)
    for level in np.unique(ap)[::7]:
        exact = float(np.mean(ap >= level - 1e-12))
        bound = ap_tail_bound(n, positives, level - 1e-12)
        assert bound >= exact
        if exact < 0.01:
            assert bound <= 20 * exact


@pytest.mark.parametrize("orientation", ["positive", "both"])
def test_tail_bound_of_the_max_holds_against_the_exact_null(orientation):
    # three directions (one with ties) of 14 images: the union bound is at least the exact p-value over all 3,432
    # labellings, for every observed statistic
    from robustsig.metrics._null_kernel import SortedConcept
    from robustsig.metrics.significance import _tail_bound

    rng = np.random.default_rng(3)
    scores = rng.normal(size=(14, 3))
    scores[[2, 9], 1] = scores[5, 1]
    null = exact_null(scores, 7, orientation)
    concept = SortedConcept(torch.from_numpy(scores), 7, orientation)
    for level in np.quantile(null, [0.5, 0.9, 0.99, 0.999, 1.0]):
        assert _tail_bound(concept, level - 1e-9) >= np.mean(null >= level - 1e-9)


def test_concepts_far_beyond_chance_take_the_bound():
    # 400 images, a direction that separates the concept well: no permutation reaches it, it stands clear of them
    # all, and the bound gives a p-value far below 1 / (1 + permutations) after the first few permutations
    rng = np.random.default_rng(4)
    y = rng.permutation(np.arange(400) < 200)
    s = rng.normal(size=(400, 64)).astype(np.float32)
    s[:, 3] += 2.5 * y
    test = permutation_p_values([s], [y], permutations=49_999, stop_after=10)
    assert bool(test.bounded[0]) and int(test.drawn[0]) < 100
    assert float(test.p_values[0]) < 1e-12
    weak = s.copy()
    weak[:, 3] -= 2.3 * y                          # barely separated: the permutations decide
    test = permutation_p_values([weak], [y], permutations=2_000, stop_after=10)
    assert not bool(test.bounded[0])


@pytest.mark.parametrize("budget, stages", [(24_999, [999, 4999, 24999]), (49_999, [999, 4999, 24999, 49999])])
@pytest.mark.parametrize("alpha", [1 / 50_000, 1 / 25_000, 7e-4, 0.011, 0.05])
def test_staged_besag_clifford_p_value_is_valid(alpha, budget, stages):
    # the exact size of the design (the default budget, 24,999, and a larger one; stop at the 5th exceedance):
    # under the null the chance p that a permutation reaches T_c is uniform, and given p the exceedances are
    # Bernoulli(p) draws; P(p-value <= alpha) integrates the design's outcomes over p
    from scipy import integrate, stats

    from robustsig.metrics.significance import DEFAULT_PERMUTATIONS, DEFAULT_STOP_AFTER, _stages

    assert DEFAULT_PERMUTATIONS == 24_999
    assert _stages(FIRST_STAGE, budget) == stages
    h = DEFAULT_STOP_AFTER
    p = np.unique(np.r_[np.geomspace(1e-10, 1.0, 20_001), np.linspace(0.0, 1.0, 20_001)])
    rejects, before, none_yet = np.zeros_like(p), 0, np.ones_like(p)
    for k, end in enumerate(stages):
        width = end - before
        first = max(before + 1, math.ceil(h / alpha - 1e-9))      # stopped at the h-th exceedance, draw >= h / alpha
        if first <= end:
            rejects += none_yet * (stats.binom.sf(h - 1, width, p) - stats.binom.sf(h - 1, first - before - 1, p))
        for exceed in range(0 if k == len(stages) - 1 else 1, h):    # stopped at the stage's end
            if (1 + exceed) / (1 + end) <= alpha:
                rejects += none_yet * stats.binom.pmf(exceed, width, p)
        none_yet *= (1 - p) ** width
        before = end
    assert integrate.simpson(rejects, x=p) <= alpha * (1 + 1e-4)


def test_exchangeable_units_find_the_copies_among_many_rows():
    rng = np.random.default_rng(9)
    rows = rng.standard_normal((3000, 64)).astype(np.float32)
    rows[5, 0] = 0.0
    copies = np.concatenate([rows, rows[[5, 17, 17]]])
    copies[-3, 0] = -0.0                                   # -0.0 is the same score as 0.0
    units = exchangeable_units(torch.from_numpy(copies))
    assert units.max() + 1 == 3000 and units[-3] == units[5] and units[-2] == units[-1] == units[17]
    assert np.array_equal(exchangeable_units(rows), np.arange(3000))


@pytest.mark.parametrize("orientation", ["positive", "both"])
def test_densely_tied_directions_read_from_group_counts_equal_sklearn(orientation):
    # heavily quantised scores (every direction dense): the grouped exact path against sklearn, label row by row
    from robustsig.metrics._null_kernel import SortedConcept

    rng = np.random.default_rng(11)
    for _ in range(40):
        n = int(rng.integers(4, 40))
        positives = int(rng.integers(1, n))
        scores = np.round(rng.normal(size=(n, 4)) * 2) / 2
        scores[:, 3] = 0.0                                            # a constant direction: AP = P / N
        concept = SortedConcept(torch.tensor(scores, dtype=torch.float32), positives, orientation)
        flags = torch.zeros(6, n, dtype=torch.bool)
        for row in flags:
            row[rng.choice(n, positives, replace=False)] = True
        got = concept._dense_exact(flags).numpy()
        for j, direction in enumerate(concept.dense.tolist()):
            for r, y in enumerate(flags.numpy()):
                expected = average_precision_score(y, scores[:, direction])
                if orientation == "both":
                    expected = max(expected, average_precision_score(y, -scores[:, direction]))
                assert got[j, r] == pytest.approx(expected, abs=1e-12)
        assert 3 in concept.dense.tolist()
