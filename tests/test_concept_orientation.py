"""The two AP orientations of the concept analysis: the paper's one-sided AP (the projection h . v_i is the
classifier, Section 4 after Suau et al.) and the ``both`` variant, max(AP(s), AP(-s)); both one-sided matrices from
one call (``orientation="sides"``); the sign convention of ``head_svd`` that makes the one-sided AP reproducible;
and a toy whose counts differ between the orientations and are known. Oracles: scikit-learn's
``average_precision_score`` and numpy's SVD, computed here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

import robustsig as rs
from robustsig.study.analyses.concepts.options import ConceptsOptions
from robustsig.study.analyses.concepts.summary import orientation_counts


def sklearn_sides(scores, labels) -> np.ndarray:
    """``2 x C x D``: scikit-learn's AP of every direction for every concept, of the scores then of their negation."""
    return np.array([[[average_precision_score(np.asarray(y), sign * np.asarray(s, dtype=np.float64)[:, d])
                       for d in range(np.asarray(s).shape[1])] for s, y in zip(scores, labels)] for sign in (1, -1)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sides_are_sklearns_ap_of_s_and_of_minus_s_from_one_call(dtype):
    generator = torch.Generator().manual_seed(3)
    sizes = (9, 14, 30, 6, 21)
    # integer-valued scores: many ties, which sklearn counts as one threshold
    scores = [torch.randint(0, 5, (n, 7), generator=generator).to(dtype) for n in sizes]
    labels = [torch.arange(n) % 3 == 0 for n in sizes]
    sides = rs.average_precision_matrix(scores, labels, orientation="sides")
    assert sides.shape == (2, len(sizes), 7) and sides.dtype == torch.float64
    np.testing.assert_allclose(sides.numpy(), sklearn_sides(scores, labels), atol=1e-12)
    # the same values as the one-sided and the both calls, bit for bit
    assert torch.equal(sides[0], rs.average_precision_matrix(scores, labels, orientation="positive"))
    assert torch.equal(torch.fmax(sides[0], sides[1]), rs.average_precision_matrix(scores, labels,
                                                                                  orientation="both"))


def test_sides_in_the_dense_form():
    generator = torch.Generator().manual_seed(4)
    scores = torch.randn(50, 6, generator=generator)
    labels = torch.rand(50, 3, generator=generator) > 0.5
    sides = rs.average_precision_matrix(scores, labels, orientation="sides")
    expected = np.array([[[average_precision_score(labels[:, c], sign * scores[:, d].double()) for d in range(6)]
                          for c in range(3)] for sign in (1, -1)])
    np.testing.assert_allclose(sides.numpy(), expected, atol=1e-12)
    assert torch.equal(torch.fmax(sides[0], sides[1]), rs.average_precision_matrix(scores, labels,
                                                                                  orientation="both"))
    with pytest.raises(rs.InputError, match="orientation must be one of 'positive', 'both', 'sides'"):
        rs.average_precision_matrix(scores, labels, orientation="negative")


def toy(seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor], np.ndarray]:
    """6 concepts x 5 directions on balanced sets of 10 + 10 images. ``plan[c, d]``: +1 when direction d ranks
    concept c's positives above its negatives (AP(s) = 1), -1 when below (AP(-s) = 1), 0 when it interleaves them
    (AP about 0.6 on either side)."""
    plan = np.array([[+1, 0, 0, 0, 0],
                     [+1, -1, 0, 0, 0],
                     [0, -1, 0, 0, -1],
                     [0, 0, +1, -1, 0],
                     [0, 0, 0, 0, 0],
                     [0, -1, 0, 0, 0]])
    rng = np.random.default_rng(seed)
    labels = np.repeat([True, False], 10)
    scores = []
    for c in range(plan.shape[0]):
        columns = []
        for d in range(plan.shape[1]):
            if plan[c, d]:
                column = np.where(labels, 2.0, 0.0) * plan[c, d] + rng.uniform(0, 1, 20)  # separated
            else:
                column = np.empty(20)
                column[labels] = np.arange(10) * 2 + 1.0  # positives and negatives alternate in rank
                column[~labels] = np.arange(10) * 2 + 0.5
            columns.append(column)
        scores.append(torch.tensor(np.stack(columns, 1), dtype=torch.float32))
    return scores, [torch.from_numpy(labels)] * plan.shape[0], plan


def test_the_orientations_differ_on_a_toy_with_known_counts():
    scores, labels, plan = toy()
    sides = rs.average_precision_matrix(scores, labels, orientation="sides")
    expected = sklearn_sides(scores, labels)
    np.testing.assert_allclose(sides.numpy(), expected, atol=1e-12)
    assert np.allclose(expected[0][plan == 1], 1) and np.allclose(expected[1][plan == -1], 1)
    assert np.all(expected[:, plan == 0] < 0.9)  # the interleaved pairs stay below the threshold on both sides
    paper = rs.concept_summary(sides[0], 0.9)
    both = rs.concept_summary(torch.fmax(sides[0], sides[1]), 0.9)
    # one-sided: concepts 0, 1, 3 (on directions 0, 0, 2): 3 unique, 3 encoded pairs over 5 directions
    assert (paper.unique_concepts, paper.polysemanticity) == (3, pytest.approx(3 / 5))
    assert paper.concepts_per_direction.tolist() == [2, 0, 1, 0, 0]
    # both: also the negative-side pairs (1, 1), (2, 1), (2, 4), (3, 3), (5, 1): 5 unique, 8 pairs over 5
    assert (both.unique_concepts, both.polysemanticity) == (5, pytest.approx(8 / 5))
    assert both.concepts_per_direction.tolist() == [2, 3, 1, 1, 1]
    assert both.polysemanticity_active == pytest.approx(8 / 5) and paper.polysemanticity_active == pytest.approx(1.5)
    # the named columns of concepts.csv: the paper's one-sided counts first, then the both variant's
    assert orientation_counts({"positive": paper, "both": both}) == (3, pytest.approx(0.6), pytest.approx(1.5),
                                                                      5, pytest.approx(1.6), pytest.approx(1.6))


def test_the_sign_convention_makes_the_one_sided_ap_reproducible():
    """head_svd's V is numpy's up to sign, with each column's largest-magnitude entry positive; a head and its
    negation (which an SVD may return with either sign) give the same V, hence the same one-sided AP."""
    generator = torch.Generator().manual_seed(5)
    W = torch.randn(12, 8, generator=generator, dtype=torch.float64)
    V = rs.head_svd(W).V.numpy()
    reference = np.linalg.svd(W.numpy(), full_matrices=False)[2].T
    reference = reference * np.sign(reference[np.abs(reference).argmax(axis=0), np.arange(8)])
    np.testing.assert_allclose(V, reference, atol=1e-12)
    np.testing.assert_allclose(rs.head_svd(-W).V.numpy(), V, atol=1e-12)
    h = torch.randn(40, 8, generator=generator, dtype=torch.float64)
    labels = [torch.arange(40) % 2 == 0]
    ap = rs.average_precision_matrix([h @ rs.head_svd(W).V], labels)
    np.testing.assert_allclose(ap.numpy()[0], [average_precision_score(labels[0], h.numpy() @ reference[:, d])
                                               for d in range(8)], atol=1e-12)


def test_the_default_orientation_is_the_papers():
    assert ConceptsOptions().orientation == "positive"
    assert "the paper's" in ConceptsOptions.model_fields["orientation"].description
    assert "largest-magnitude entry of each v_i" in ConceptsOptions.model_fields["orientation"].description
