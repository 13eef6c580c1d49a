"""DoC and ATC against hand computations (numpy, written out here), with each dataset's scoring rule: the softmax
over ImageNet-R/-A's class subset and over ObjectNet's class-map classes; batching the confidences changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import robustsig as rs
from robustsig.errors import InputError
from robustsig.metrics.labelfree import atc_from_scores, atc_threshold, confidence_scores, doc_from_scores


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def hand_atc(id_scores: np.ndarray, acc: float, shift_scores: np.ndarray) -> float:
    """ATC by scanning every candidate threshold (minus infinity, then each id score ascending)."""
    best, best_gap = -np.inf, abs(1.0 - acc)
    for t in np.sort(np.unique(id_scores)):
        gap = abs(np.mean(id_scores > t) - acc)
        if gap < best_gap:
            best, best_gap = t, gap
    return float(np.mean(shift_scores > best))


def test_doc_by_hand():
    id_logits = np.array([[4.0, 0.0, 1.0], [3.0, 0.0, 0.0], [0.0, 1.0, 0.0], [2.0, 0.0, 2.5]])
    id_labels = np.array([0, 0, 0, 2])
    shift = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.2]])
    acc = 3 / 4  # rows 0, 1 and 3 right
    expected = acc - (softmax(id_logits).max(1).mean() - softmax(shift).max(1).mean())
    assert rs.doc_accuracy(torch.tensor(id_logits), torch.tensor(id_labels), torch.tensor(shift)) == pytest.approx(
        expected, abs=1e-12)


@pytest.mark.parametrize("score", ["maxprob", "entropy"])
def test_atc_by_hand(score):
    rng = np.random.default_rng(0)
    id_logits, shift = rng.normal(size=(60, 5)) * 2, rng.normal(size=(40, 5))
    id_labels = rng.integers(0, 5, size=60)
    id_labels[:25] = id_logits[:25].argmax(1)  # some right
    acc = np.mean(id_logits.argmax(1) == id_labels)

    def score_of(z):
        p = softmax(z)
        return p.max(1) if score == "maxprob" else (p * np.log(p)).sum(1)

    expected = hand_atc(score_of(id_logits), acc, score_of(shift))
    got = rs.atc_accuracy(torch.tensor(id_logits), torch.tensor(id_labels), torch.tensor(shift), score=score)
    assert got == pytest.approx(expected, abs=1e-12)
    # distinct scores: exactly k of the N id images lie above the threshold
    t = atc_threshold(torch.tensor(score_of(id_logits)), acc)
    assert np.sum(score_of(id_logits) > t) == round(acc * 60)


def test_atc_threshold_extremes_and_ties():
    assert atc_threshold(torch.tensor([0.2, 0.5, 0.9]), 1.0) == -np.inf          # all right: everything above
    assert atc_threshold(torch.tensor([0.2, 0.5, 0.9]), 0.0) == pytest.approx(0.9)  # none right: nothing above
    # ties: 0.5 x3; share above -inf 1, above 0.2 0.75, above 0.5 0; acc 0.5 -> 0.75 is closest
    assert atc_threshold(torch.tensor([0.2, 0.5, 0.5, 0.5]), 0.5) == pytest.approx(0.2)


def test_subset_rule_softmax_over_the_200_classes():
    """ImageNet-R/-A: confidences are a softmax over the scored class subset only."""
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(30, 10))
    subset = [1, 4, 7]
    rule = {"class_indices": subset}
    np.testing.assert_allclose(confidence_scores(torch.tensor(logits), rule=rule).numpy(),
                               softmax(logits[:, subset]).max(1), atol=1e-12)
    id_logits, id_labels = rng.normal(size=(50, 10)), rng.integers(0, 10, size=50)
    acc = np.mean(id_logits.argmax(1) == id_labels)
    expected = acc - (softmax(id_logits).max(1).mean() - softmax(logits[:, subset]).max(1).mean())
    assert rs.doc_accuracy(torch.tensor(id_logits), torch.tensor(id_labels), torch.tensor(logits),
                           shift_rule=rule) == pytest.approx(min(1.0, max(0.0, expected)), abs=1e-12)


def test_class_map_rule_projects_then_softmax():
    """ObjectNet: class k scores the max of its logits; the softmax runs over the K projected classes, and the id
    set's own class map decides which id images are right."""
    rng = np.random.default_rng(2)
    class_map = [[0, 3], [1], [2, 5]]
    id_logits, shift = rng.normal(size=(40, 6)) * 2, rng.normal(size=(25, 6))
    project = lambda z: np.stack([z[:, ids].max(1) for ids in class_map], axis=1)  # noqa: E731
    id_labels = rng.integers(0, 3, size=40)
    id_labels[:15] = project(id_logits[:15]).argmax(1)
    acc = np.mean(project(id_logits).argmax(1) == id_labels)
    rule = {"class_map": class_map}
    expected = hand_atc(softmax(project(id_logits)).max(1), acc, softmax(project(shift)).max(1))
    got = rs.atc_accuracy(torch.tensor(id_logits), torch.tensor(id_labels), torch.tensor(shift), id_rule=rule,
                          shift_rule=rule)
    assert got == pytest.approx(expected, abs=1e-12)


def test_a_dataset_carries_its_rule():
    from robustsig.data.base import ImageDataset

    dataset = ImageDataset([("a.png", 1), ("b.png", 3)], class_indices=[1, 3])
    logits = torch.tensor([[9.0, 0.0, 0.0, 1.0], [0.0, 2.0, 0.0, 1.0]])
    np.testing.assert_allclose(confidence_scores(logits, rule=dataset).numpy(),
                               softmax(logits.numpy()[:, [1, 3]]).max(1), atol=1e-12)


def test_streamed_scores_equal_one_shot():
    rng = np.random.default_rng(3)
    id_logits, shift = torch.tensor(rng.normal(size=(90, 4))), torch.tensor(rng.normal(size=(70, 4)))
    labels = torch.tensor(rng.integers(0, 4, size=90))
    id_scores = torch.cat([confidence_scores(id_logits[i:i + 32]) for i in range(0, 90, 32)])
    shift_scores = torch.cat([confidence_scores(shift[i:i + 32]) for i in range(0, 70, 32)])
    correct = (id_logits.argmax(1) == labels).double()
    assert atc_from_scores(id_scores, correct, shift_scores) == rs.atc_accuracy(id_logits, labels, shift)
    assert doc_from_scores(float(correct.mean()), id_scores, shift_scores) == rs.doc_accuracy(id_logits, labels,
                                                                                               shift)


def test_bad_input():
    with pytest.raises(InputError, match="score must be"):
        rs.atc_accuracy(torch.zeros(2, 2), torch.tensor([0, 1]), torch.zeros(1, 2), score="margin")
    with pytest.raises(InputError, match="id_labels"):
        rs.doc_accuracy(torch.zeros(2, 2), torch.tensor([0]), torch.zeros(1, 2))
    with pytest.raises(InputError, match="class_indices and/or class_map"):
        rs.doc_accuracy(torch.zeros(2, 2), torch.tensor([0, 1]), torch.zeros(1, 2), id_rule={"classes": [0]})


@pytest.mark.parametrize("rule", [None, {"class_indices": [1, 4, 7]}, {"class_map": [[0, 3], [1], [2, 5]]}])
def test_score_table_equals_the_softmax_by_hand(rule):
    from robustsig.metrics.labelfree import confidence_score_table

    rng = np.random.default_rng(4)
    logits = rng.normal(size=(30, 10)) * 3
    if rule is None:
        classes = logits
    elif "class_indices" in rule:
        classes = logits[:, rule["class_indices"]]
    else:
        classes = np.stack([logits[:, ids].max(1) for ids in rule["class_map"]], axis=1)
    p = softmax(classes)
    table = confidence_score_table(torch.tensor(logits), rule=rule)
    np.testing.assert_allclose(table["maxprob"].numpy(), p.max(1), atol=1e-12)
    np.testing.assert_allclose(table["entropy"].numpy(), (p * np.log(p)).sum(1), atol=1e-12)
    for score in ("maxprob", "entropy"):
        assert torch.equal(confidence_scores(torch.tensor(logits), score=score, rule=rule), table[score])
    assert list(confidence_score_table(torch.tensor(logits), rule=rule, scores=["entropy"])) == ["entropy"]
    with pytest.raises(InputError, match="scores must be among"):
        confidence_score_table(torch.tensor(logits), scores=["margin"])
