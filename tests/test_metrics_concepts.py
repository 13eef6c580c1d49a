"""Concept AP matrix against sklearn (random and heavily tied scores, both input forms, chunking), degenerate
concepts, and the summary (eq. 5, polysemanticity, top concepts, Venn regions)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

import oracles
import robustsig as rs


def sklearn_matrix(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.array([[average_precision_score(labels[:, c], scores[:, d]) for d in range(scores.shape[1])]
                     for c in range(labels.shape[1])])


def sklearn_both(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The orientation-free AP: the larger of sklearn's AP of the scores and of their negation."""
    return np.maximum(sklearn_matrix(scores, labels), sklearn_matrix(-scores, labels))


def numpy_polysemanticity(ap: np.ndarray, threshold: float) -> tuple[int, float, float]:
    """Eq. 5 and Section 4 (the oracle of tests/oracles.py): unique concepts, the paper's polysemanticity
    d_H^-1 sum_i N_concept(i) over all directions, and the mean over the directions encoding at least one."""
    counts = oracles.concept_counts(ap, threshold)
    return counts["unique"], counts["polysemanticity"], counts["polysemanticity_active"]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("max_elements", [1 << 23, 2000])
def test_dense_form_equals_sklearn(ties, max_elements):
    rng = np.random.default_rng(7)
    scores = rng.normal(size=(500, 24))
    if ties:
        scores = np.round(scores * 2) / 2  # ~13 distinct values per column: heavy ties
    labels = rng.random((500, 30)) < rng.uniform(0.01, 0.6, size=30)
    labels[:, 3] = True  # a concept present everywhere: AP 1
    ap = rs.average_precision_matrix(torch.tensor(scores), torch.tensor(labels), max_elements=max_elements)
    assert ap.dtype == torch.float64 and ap.shape == (30, 24)
    assert np.abs(ap.numpy() - sklearn_matrix(scores, labels)).max() <= 1e-9
    assert bool((ap[3] == 1).all())


@pytest.mark.parametrize("ties", [False, True])
def test_per_concept_sets_equal_sklearn(ties):
    rng = np.random.default_rng(8)
    sets, flags = [], []
    for c in range(40):
        n = int(rng.integers(6, 120))
        s = rng.normal(size=(n, 16)).astype(np.float32)
        if ties:
            s = np.round(s)
        sets.append(s)
        flags.append(rng.random(n) < 0.5)
        flags[-1][0] = True
    ap = rs.average_precision_matrix(sets, flags, max_elements=5000)
    expected = np.array([[average_precision_score(flags[c], sets[c][:, d]) for d in range(16)] for c in range(40)])
    assert np.abs(ap.numpy() - expected).max() <= 1e-9


def test_per_concept_sets_equal_the_dense_form_on_the_same_images():
    rng = np.random.default_rng(9)
    scores = torch.tensor(rng.normal(size=(200, 10)))
    labels = torch.tensor(rng.random((200, 5)) < 0.3)
    dense = rs.average_precision_matrix(scores, labels)
    per_concept = rs.average_precision_matrix([scores] * 5, list(labels.T))
    torch.testing.assert_close(per_concept, dense, rtol=0, atol=1e-15)


def test_concept_without_positives_is_nan_with_a_warning():
    scores = torch.randn(50, 4, dtype=torch.float64)
    labels = torch.zeros(50, 3, dtype=torch.bool)
    labels[::3, 1] = True
    with pytest.warns(RuntimeWarning, match=r"2 concept\(s\) have no positive sample \(concepts 0, 2\)"):
        ap = rs.average_precision_matrix(scores, labels)
    assert torch.isnan(ap[[0, 2]]).all() and not torch.isnan(ap[1]).any()
    with pytest.warns(RuntimeWarning, match="no positive"):
        per_concept = rs.average_precision_matrix([scores, scores], [labels[:, 1], labels[:, 0]])
    assert torch.isnan(per_concept[1]).all()
    torch.testing.assert_close(per_concept[0], ap[1], rtol=0, atol=1e-15)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert average_precision_score(np.zeros(5), np.arange(5.0)) == 0.0  # sklearn's value, documented


def test_bad_inputs_are_named():
    with pytest.raises(rs.InputError, match="boolean"):
        rs.average_precision_matrix(torch.randn(5, 2), torch.full((5, 1), 2))
    with pytest.raises(rs.InputError, match="shape"):
        rs.average_precision_matrix(torch.randn(5, 2), torch.ones(4, 1, dtype=torch.bool))
    with pytest.raises(rs.InputError, match="NaN"):
        rs.average_precision_matrix(torch.tensor([[float("nan")], [1.0]]), torch.ones(2, 1, dtype=torch.bool))
    with pytest.raises(rs.InputError, match="same directions"):
        rs.average_precision_matrix([torch.randn(4, 2), torch.randn(4, 3)], [torch.ones(4, dtype=torch.bool)] * 2)
    with pytest.raises(rs.InputError, match="N x C"):
        rs.average_precision_matrix(torch.randn(4, 2), torch.ones(4, dtype=torch.bool))


def test_concept_summary_counts():
    ap = torch.tensor([[0.95, 0.10, 0.92],
                       [0.30, 0.20, 0.91],
                       [0.10, 0.15, 0.40],
                       [float("nan"), 0.99, 0.10]], dtype=torch.float64)
    summary = rs.concept_summary(ap, concepts=["dog", "grass", "sky", "car"])
    assert summary.unique_concepts == 3  # eq. 5: dog, grass, car
    assert summary.concept_indices.tolist() == [0, 1, 3]
    assert summary.concepts_per_direction.tolist() == [1, 1, 2]
    assert summary.polysemanticity == pytest.approx(4 / 3)  # every direction encodes something: both averages agree
    assert summary.polysemanticity_active == pytest.approx(4 / 3)
    assert summary.polysemantic_directions.tolist() == [2]
    assert summary.top_concepts(2, k=2) == [("dog", 0.92), ("grass", 0.91)]
    assert summary.top_concepts(0, k=5)[-1][0] == "sky"  # NaN AP is never a top concept
    assert summary.concept_set() == {"dog", "grass", "car"}
    assert rs.concept_summary(ap, threshold=0.96).unique_concepts == 1
    assert summary.as_dict()["unique_concepts"] == 3
    with pytest.raises(rs.InputError, match="3 concept names"):
        rs.concept_summary(ap, concepts=["a", "b", "c"])


def test_concept_overlaps_are_exclusive_venn_regions():
    ap_a = torch.tensor([[0.95], [0.2], [0.93]], dtype=torch.float64)
    names = ["dog", "grass", "sky"]
    regions = rs.concept_overlaps({"a": rs.concept_summary(ap_a, concepts=names),
                                   "b": {"sky", "car"}, "c": {"sky", "dog", "tree"}})
    assert regions == {("b",): {"car"}, ("c",): {"tree"}, ("a", "c"): {"dog"}, ("a", "b", "c"): {"sky"}}


def sklearn_sets(sets, flags, sign=1.0):
    """sklearn's AP for each (concept, direction) of per-concept sets; NaN where a set has no positive."""
    def one(y, s):
        return average_precision_score(y, sign * s) if y.any() else np.nan
    return np.array([[one(np.asarray(y, bool), np.asarray(s)[:, d]) for d in range(np.asarray(s).shape[1])]
                     for s, y in zip(sets, flags)])


def random_sets(rng, count, directions, low, high, dtype, ties):
    sets, flags = [], []
    for _ in range(count):
        n = int(rng.integers(low, high + 1))
        s = rng.normal(size=(n, directions))
        if ties:
            s = np.round(s * 2) / 2  # ~10 distinct values per direction: most rows tie, groups mix labels
        sets.append(s.astype(dtype))
        flags.append(rng.permutation(np.arange(n) < max(1, n // 2)))
    return sets, flags


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("max_elements", [1 << 20, 700])
def test_per_concept_both_orientations_equal_sklearn(dtype, ties, max_elements):
    rng = np.random.default_rng(11)
    sets, flags = random_sets(rng, 30, 12, 1, 150, dtype, ties)
    positive = sklearn_sets(sets, flags)
    negated = sklearn_sets(sets, flags, sign=-1.0)
    ap = rs.average_precision_matrix(sets, flags, max_elements=max_elements)
    both = rs.average_precision_matrix(sets, flags, orientation="both", max_elements=max_elements)
    assert ap.dtype == both.dtype == torch.float64 and ap.shape == both.shape == (30, 12)
    assert np.abs(ap.numpy() - positive).max() <= 1e-14
    assert np.abs(both.numpy() - np.maximum(positive, negated)).max() <= 1e-14
    assert bool((both >= ap).all())


def test_per_concept_degenerate_sets_equal_sklearn():
    zero_ties = np.array([[0.0, 1.0], [-0.0, 1.0], [0.0, -2.0], [1e-45, 3.0]], dtype=np.float32)  # -0.0 == 0.0
    extremes = np.array([[np.finfo(np.float32).max, -1.0], [-np.finfo(np.float32).max, -1.0],
                         [np.finfo(np.float32).tiny, 0.5], [-1e-45, 0.5], [7.0, 0.25]], dtype=np.float32)
    sets = [
        np.full((6, 2), 0.3, dtype=np.float32),                      # constant scores: one threshold, AP = P/n
        np.arange(5, dtype=np.float32)[:, None].repeat(2, 1),        # all positive: AP 1
        np.array([[0.2, -0.2]], dtype=np.float32),                   # a single (positive) sample
        np.array([[1.0, 1.0], [1.0, 2.0]], dtype=np.float32),        # two samples, a tie in direction 0
        zero_ties,
        extremes,
    ]
    flags = [np.array([1, 0, 1, 0, 0, 0], bool), np.ones(5, bool), np.ones(1, bool), np.array([0, 1], bool),
             np.array([1, 0, 0, 1], bool), np.array([1, 0, 0, 1, 0], bool)]
    expected = sklearn_sets(sets, flags)
    ap = rs.average_precision_matrix(sets, flags)
    assert np.abs(ap.numpy() - expected).max() <= 1e-15
    assert ap[0].tolist() == [2 / 6, 2 / 6] and ap[1].tolist() == [1.0, 1.0]
    both = rs.average_precision_matrix(sets, flags, orientation="both")
    assert np.abs(both.numpy() - np.maximum(expected, sklearn_sets(sets, flags, -1.0))).max() <= 1e-15


def test_per_concept_single_class_sets():
    s = np.random.default_rng(3).normal(size=(8, 3))
    with pytest.warns(RuntimeWarning, match=r"1 concept\(s\) have no positive sample \(concepts 1\)"):
        ap = rs.average_precision_matrix([s, s, s[:4]], [np.ones(8, bool), np.zeros(8, bool), np.ones(4, bool)],
                                         orientation="both")
    assert ap[0].tolist() == [1.0] * 3 and ap[2].tolist() == [1.0] * 3 and bool(torch.isnan(ap[1]).all())


def test_orientation_both_finds_a_concept_on_the_negative_side():
    rng = np.random.default_rng(4)
    labels = np.arange(100) < 50
    s = rng.normal(size=(100, 2))
    s[:, 1] -= 10 * labels                                           # direction 1 separates the concept downwards
    ap = rs.average_precision_matrix([s], [labels])
    both = rs.average_precision_matrix([s], [labels], orientation="both")
    assert ap[0, 1] < 0.4 and both[0, 1] == 1.0
    assert float(both[0, 0]) == pytest.approx(max(float(ap[0, 0]), sklearn_sets([s], [labels], -1)[0, 0]), abs=1e-15)


def test_device_argument_gives_the_same_values():
    rng = np.random.default_rng(13)
    sets, flags = random_sets(rng, 9, 5, 2, 60, np.float32, True)
    reference = rs.average_precision_matrix(sets, flags, orientation="both")
    tensors = [torch.from_numpy(s) for s in sets]
    devices = ["cpu", torch.device("cpu")] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        ap = rs.average_precision_matrix(tensors, flags, orientation="both", device=device)
        assert ap.device.type == "cpu"
        torch.testing.assert_close(ap, reference, rtol=0, atol=1e-15)  # a GPU may sum in another order
    if torch.cuda.is_available():
        on_gpu = rs.average_precision_matrix([t.cuda() for t in tensors], [torch.from_numpy(f).cuda() for f in flags],
                                             orientation="both")
        torch.testing.assert_close(on_gpu, reference, rtol=0, atol=1e-15)


def test_per_concept_bad_inputs_are_named():
    good = [torch.randn(4, 2), torch.randn(3, 2)]
    flags = [torch.tensor([True, False, True, False]), torch.tensor([True, False, False])]
    with pytest.raises(rs.InputError, match=r"scores\[1\].*NaN"):
        rs.average_precision_matrix([good[0], torch.tensor([[0.0, 1.0], [float("inf"), 0.0], [1.0, 1.0]])], flags)
    with pytest.raises(rs.InputError, match=r"labels\[1\] must have shape \(3,\)"):
        rs.average_precision_matrix(good, [flags[0], flags[0]])
    with pytest.raises(rs.InputError, match="orientation must be one of 'positive', 'both'"):
        rs.average_precision_matrix(good, flags, orientation="negative")
    with pytest.raises(rs.InputError, match="orientation"):
        rs.average_precision_matrix(torch.randn(4, 2), flags[0][:, None], orientation="Both")
    with pytest.raises(rs.InputError, match="empty list"):
        rs.average_precision_matrix([], [])


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("max_elements", [1 << 23, 2000])
def test_both_orientations_equal_sklearn_dense(ties, max_elements):
    rng = np.random.default_rng(17)
    scores = rng.normal(size=(300, 12))
    labels = rng.random((300, 9)) < rng.uniform(0.05, 0.5, size=9)
    scores[:, 4] = np.where(labels[:, 2], -3.0, 0.0) + 0.1 * scores[:, 4]  # concept 2 on the low side of direction 4
    if ties:
        scores = np.round(scores * 2) / 2
    positive = rs.average_precision_matrix(torch.tensor(scores), torch.tensor(labels), max_elements=max_elements)
    both = rs.average_precision_matrix(torch.tensor(scores), torch.tensor(labels), orientation="both",
                                       max_elements=max_elements)
    assert np.abs(positive.numpy() - sklearn_matrix(scores, labels)).max() <= 1e-9
    assert np.abs(both.numpy() - sklearn_both(scores, labels)).max() <= 1e-9
    assert positive[2, 4] < 0.5 and both[2, 4] == pytest.approx(1.0)  # separated, but on the negative side


@pytest.mark.parametrize("ties", [False, True])
def test_both_orientations_equal_sklearn_per_concept(ties):
    rng = np.random.default_rng(18)
    sets, flags = [], []
    for c in range(25):
        n = int(rng.integers(6, 80))
        flag = rng.random(n) < 0.5
        flag[0], flag[-1] = True, False
        s = rng.normal(size=(n, 10)).astype(np.float32)
        s[:, c % 10] -= 4 * flag  # each concept separated on the low side of one direction
        sets.append(np.round(s) if ties else s)
        flags.append(flag)
    both = rs.average_precision_matrix(sets, flags, orientation="both", max_elements=3000)
    expected = np.array([[max(average_precision_score(flags[c], sets[c][:, d]),
                              average_precision_score(flags[c], -sets[c][:, d])) for d in range(10)]
                         for c in range(25)])
    assert np.abs(both.numpy() - expected).max() <= 1e-9
    positive = rs.average_precision_matrix(sets, flags, max_elements=3000)
    assert bool((both >= positive).all()) and bool((both > positive + 0.3).any())


def test_orientation_is_validated_and_keeps_nan_for_concepts_without_positives():
    scores, labels = torch.randn(20, 3), torch.zeros(20, 2, dtype=torch.bool)
    labels[::2, 0] = True
    with pytest.warns(RuntimeWarning, match=r"1 concept\(s\) have no positive"):
        ap = rs.average_precision_matrix(scores, labels, orientation="both")
    assert torch.isnan(ap[1]).all() and not torch.isnan(ap[0]).any()
    with pytest.raises(rs.InputError, match="orientation must be one of 'positive', 'both'"):
        rs.average_precision_matrix(scores, labels, orientation="negative")


def test_polysemanticity_is_the_papers_mean_over_all_directions():
    rng = np.random.default_rng(3)
    ap = rng.uniform(0.3, 1.0, size=(40, 16))
    ap[:, 8:] = rng.uniform(0.3, 0.6, size=(40, 8))  # half the directions encode nothing
    ap[5, 2] = np.nan
    for threshold in (0.8, 0.85, 0.9, 0.95):
        summary = rs.concept_summary(torch.tensor(ap), threshold)
        unique, paper, active = numpy_polysemanticity(ap, threshold)
        assert summary.unique_concepts == unique
        assert summary.polysemanticity == pytest.approx(paper, abs=1e-12)
        assert summary.polysemanticity_active == pytest.approx(active, abs=1e-12)
    summary = rs.concept_summary(torch.tensor(ap), 0.9)
    assert summary.polysemanticity == pytest.approx(summary.polysemanticity_active / 2, abs=1e-12)
    nothing = rs.concept_summary(torch.full((3, 4), 0.5, dtype=torch.float64))
    assert nothing.polysemanticity == 0.0 and np.isnan(nothing.polysemanticity_active)
    assert summary.as_dict()["polysemanticity_active"] == summary.polysemanticity_active


def test_threshold_sweep_matches_numpy_at_every_threshold():
    rng = np.random.default_rng(4)
    ap = rng.uniform(0.5, 1.0, size=(30, 12))
    thresholds = [0.8, 0.85, 0.9, 0.95]
    sweep = rs.concept_threshold_sweep(torch.tensor(ap), thresholds)
    assert sweep["threshold"].tolist() == thresholds
    for i, threshold in enumerate(thresholds):
        unique, paper, active = numpy_polysemanticity(ap, threshold)
        assert sweep["unique_concepts"][i] == unique
        assert sweep["polysemanticity"][i] == pytest.approx(paper, abs=1e-12)
        assert sweep["polysemanticity_active"][i] == pytest.approx(active, abs=1e-12)
    assert (np.diff(sweep["unique_concepts"]) <= 0).all()  # a higher bar never encodes more


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint32])
def test_integer_scores_float32_cannot_hold_keep_their_ranks(dtype):
    # 2**24 and 2**24 + 1 are one float32: a cast would tie them (0.5833 instead of sklearn's 0.8333)
    big = np.array([[2**24, 7], [2**24 + 1, 8], [5, 2**24 + 3], [6, 2**24 + 2]], dtype=dtype)
    labels = np.array([False, True, False, True])
    expected = np.array([[average_precision_score(labels, big[:, d].astype(np.int64)) for d in range(2)]])
    assert expected[0, 0] == pytest.approx(5 / 6)
    dense = rs.average_precision_matrix(big, labels[:, None])
    per_concept = rs.average_precision_matrix([big], [labels])
    both = rs.average_precision_matrix([big], [labels], orientation="both")
    np.testing.assert_allclose(dense.numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(per_concept.numpy(), expected, atol=1e-12)
    negated = np.array([[average_precision_score(labels, -big[:, d].astype(np.int64)) for d in range(2)]])
    np.testing.assert_allclose(both.numpy(), np.maximum(expected, negated), atol=1e-12)


def test_integer_scores_beyond_float64_keep_their_ranks():
    # 2**60 + 1 and 2**60 are one float64 as well: ranked in their own integer dtype, as sklearn does
    big = np.array([[2**60], [2**60 + 1], [2**60 + 2], [5], [6]], dtype=np.int64)
    labels = np.array([False, True, False, False, True])
    expected = average_precision_score(labels, big[:, 0])
    assert rs.average_precision_matrix(big, labels[:, None]).item() == pytest.approx(expected, abs=1e-12)
    assert rs.average_precision_matrix([big], [labels]).item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("size", [60, 2100])
def test_scores_one_float32_step_apart_keep_their_order(size):
    # the compact sort keys drop each score's lowest bit (sets up to 2,048 samples): neighbours one float32 step
    # apart, with the labels in either order, at every sign and magnitude, must come out as sklearn's
    rng = np.random.default_rng(12)
    base = np.float32(rng.choice([1.0, -1.0], size=(size // 2, 8)) * 10.0 ** rng.uniform(-40, 30, (size // 2, 8)))
    s = np.concatenate([base, np.nextafter(base, np.float32(np.inf))]).astype(np.float32)
    s[:4, 0] = [0.0, -0.0, np.float32(1e-45), np.float32(-1e-45)]
    y = rng.random(size) < 0.5
    y[:2] = [True, False]
    expected = np.array([[average_precision_score(y, s[:, d]) for d in range(8)]])
    negated = np.array([[average_precision_score(y, -s[:, d]) for d in range(8)]])
    np.testing.assert_allclose(rs.average_precision_matrix([s], [y]).numpy(), expected, atol=1e-15)
    np.testing.assert_allclose(rs.average_precision_matrix([s], [y], orientation="both").numpy(),
                               np.maximum(expected, negated), atol=1e-15)
