"""What dividing ``h`` by its norm does to the study's metrics, on a real ImageNet model (``bundled:mobilenet_v2``)
and crops of real photos (:mod:`h_scale_example`, whose printout docs/h.md quotes): kurtosis and importance do not
move (checked against scipy and a numpy eq. 4), the concept AP does, because it ranks images by ``h . v_i``."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from sklearn.metrics import average_precision_score
from threadpoolctl import threadpool_limits

import robustsig as rs

from h_scale_example import (MODEL, THRESHOLDS, ap_matrix, balanced_sets, concept_set, encode, measure,
                             random_row_scales, unit_rows)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def example():
    clf = rs.load_classifier(MODEL, device="cpu")
    concepts = concept_set()
    h = encode(clf, concepts.images)
    return h.double(), clf.W.detach().double(), concepts, measure(h, clf.W, concepts)


def _numpy_importance(W: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Eq. 4 written out: sigma_i / sum sigma times the mean |cos(v_i, h_n)|."""
    with threadpool_limits(1):  # OpenBLAS on two threads of a shared 2-core machine takes 10x longer
        _, s, vt = np.linalg.svd(W, full_matrices=False)
    cos = (h @ vt.T) / np.linalg.norm(h, axis=1, keepdims=True)  # ||v_i|| = 1
    return s / s.sum() * np.abs(cos).mean(axis=0)


def test_kurtosis_and_importance_do_not_see_the_norm_of_h(example):
    h, W, _, result = example
    scaled = random_row_scales(len(h)) * h  # each vector times its own factor in [0.01, 100]
    reference = scipy.stats.kurtosis(h.numpy(), axis=1, fisher=False, bias=True)
    for variant in (unit_rows(h), scaled):
        np.testing.assert_allclose(scipy.stats.kurtosis(variant.numpy(), axis=1, fisher=False, bias=True), reference,
                                   rtol=1e-10)  # eq. 2 per vector: (c h_i - c mu) / (c sigma) = (h_i - mu) / sigma
    for value in result["kurtosis"].values():
        assert value == pytest.approx(reference.mean(), rel=1e-12)
    assert result["kurtosis"]["h"] > 3.5  # not a vacuous case: MobileNetV2's h has heavy tails

    expected = _numpy_importance(W.numpy(), h.numpy())
    svd = rs.head_svd(W)
    for variant in (h, unit_rows(h), scaled):
        np.testing.assert_allclose(rs.direction_importance(svd, variant).numpy(), expected, rtol=1e-9)
    assert result["importance"]["max_relative_difference"] < 1e-12


def test_the_concept_ap_ranks_by_the_projection_so_the_norm_of_h_moves_it(example):
    h, W, concepts, result = example
    V = rs.head_svd(W).V
    sets = balanced_sets(concepts.labels)
    raw, unit = result["ap"]["singular/positive"]["matrices"]
    for c, d in [(0, 0), (3, 10), (len(sets) - 1, 500)]:  # the values are sklearn's, on the raw and the unit h
        rows = sets[c]
        y = concepts.labels[rows, c]
        assert raw[c, d] == pytest.approx(average_precision_score(y, (h[rows] @ V[:, d]).numpy()), abs=1e-12)
        assert unit[c, d] == pytest.approx(average_precision_score(y, (unit_rows(h)[rows] @ V[:, d]).numpy()),
                                           abs=1e-12)
    # one factor for every image changes no ranking: the AP is exactly the same
    assert torch.equal(ap_matrix(3.7 * h @ V, concepts.labels, sets, "positive"), raw)

    # a factor per image (1 / ||h||) does: the norms differ from image to image and carry concepts of their own
    assert result["norm_cv"] > 0.1
    assert max(result["norm_alone_ap"].values()) > 0.8
    for key, entry in result["ap"].items():
        assert entry["max_abs_difference"] > 0.2, key
        assert entry["pairs_moved_over_0.05"] > 0.05 * entry["pairs"], key
        assert entry[0.9]["encoded_pairs"][0] != entry[0.9]["encoded_pairs"][1], key  # polysemanticity moves
    assert any(entry[t]["unique"][0] != entry[t]["unique"][1] for entry in result["ap"].values() for t in THRESHOLDS)
    assert result["cka_h_vs_unit"] < 0.99  # and CKA does not treat them as the same representation
