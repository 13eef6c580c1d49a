"""Concept significance: the permutation statistic and p-values against a brute-force sklearn loop (ties, both
orientations, chunked, sequential stopping), pure-noise sets (BH keeps the count near zero while the raw count
is large), planted concepts found, grouped calls equal one call, and input validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

import robustsig as rs
from robustsig.errors import InputError
from robustsig.metrics.significance import permutation_order, permutation_p_values


def brute_statistic(scores: np.ndarray, labels: np.ndarray, orientation: str) -> float:
    signs = (1, -1) if orientation == "both" else (1,)
    return max(average_precision_score(labels, sign * scores[:, d]) for sign in signs for d in range(scores.shape[1]))


def brute_p_values(scores, labels, permutations, seed, orientation, stop_after=None):
    """p-values by looping over sklearn, with the permutations the function draws (and Besag-Clifford stopping)."""
    out, observed = [], []
    for c, (s, y) in enumerate(zip(scores, labels)):
        s, y = s.numpy().astype(np.float64), y.numpy()
        t_obs = brute_statistic(s, y, orientation)
        observed.append(t_obs)
        exceed, drawn = 0, 0
        for order in permutation_order(seed, c, permutations, len(y)).numpy():
            drawn += 1
            exceed += brute_statistic(s, y[order], orientation) >= t_obs - 1e-9
            if stop_after is not None and exceed == stop_after:
                break
        out.append(exceed / drawn if stop_after is not None and exceed == stop_after
                   else (1 + exceed) / (1 + permutations))
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
    test = permutation_p_values(scores, labels, permutations=60, seed=5, orientation=orientation)
    observed, expected = brute_p_values(scores, labels, 60, 5, orientation)
    np.testing.assert_allclose(test.max_ap.numpy(), observed, atol=1e-12)
    np.testing.assert_allclose(test.p_values.numpy(), expected, atol=1e-12)
    assert test.drawn.tolist() == [60] * 3


def test_sequential_stopping_equals_brute_force():
    scores, labels = tiny_sets(4, concepts=4, size=10, directions=3, ties=False)
    test = permutation_p_values(scores, labels, permutations=100, seed=2, stop_after=4)
    _, expected = brute_p_values(scores, labels, 100, 2, "positive", stop_after=4)
    np.testing.assert_allclose(test.p_values.numpy(), expected, atol=1e-12)
    assert int(test.drawn.min()) < 100  # some concept stopped early


@pytest.mark.parametrize("ties", [False, True, "some", "few"])
@pytest.mark.parametrize("size", [30, 120])
def test_statistic_equals_sklearn_in_chunks(size, ties):
    # max_elements 500 splits the directions and the permutations into many chunks
    scores, labels = tiny_sets(9, concepts=3, size=size, directions=7, ties=ties)
    for orientation in ("positive", "both"):
        expected = [brute_statistic(s.double().numpy(), y.numpy(), orientation) for s, y in zip(scores, labels)]
        test = permutation_p_values(scores, labels, permutations=3, orientation=orientation, max_elements=500)
        np.testing.assert_allclose(test.max_ap.numpy(), expected, atol=1e-12)
    whole = permutation_p_values(scores, labels, permutations=40, seed=1, orientation="both")
    chunked = permutation_p_values(scores, labels, permutations=40, seed=1, orientation="both", max_elements=500)
    np.testing.assert_array_equal(whole.p_values.numpy(), chunked.p_values.numpy())
    np.testing.assert_allclose(chunked.p_values.numpy(), brute_p_values(scores, labels, 40, 1, "both")[1], atol=1e-12)


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
    from robustsig.metrics.significance import _blocks, _permutation_blocks

    bounds = _blocks(700, stop_after=20)
    assert bounds[0] == (0, 60) and bounds[-1][1] == 700 and all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    pieces = torch.cat(list(_permutation_blocks(4, 7, 3001, bounds)))
    assert torch.equal(pieces, permutation_order(4, 7, 700, 3001))
