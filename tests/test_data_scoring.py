"""Top-1 scoring rules (plain, class subset, class map) against a numpy restatement, the streaming twin, and the
guards that catch a label convention mix-up."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import robustsig as rs
from robustsig.data.base import ImageDataset
from robustsig.metrics.scoring import TopOneAccumulator, project_logits, top1_accuracy, top1_correct

G = torch.Generator().manual_seed(0)


def test_subset_rule_matches_numpy():
    logits = torch.randn(300, 50, generator=G)
    subset = [3, 7, 11, 20, 49]
    labels = torch.tensor(subset)[torch.randint(0, 5, (300,), generator=G)]
    expected = np.array(subset)[logits.numpy()[:, subset].argmax(1)] == labels.numpy()
    np.testing.assert_array_equal(top1_correct(logits, labels, class_indices=subset).numpy(), expected)
    mask = torch.zeros(50, dtype=torch.bool)
    mask[subset] = True
    np.testing.assert_array_equal(top1_correct(logits, labels, class_indices=mask).numpy(), expected)
    assert expected.mean() > (logits.argmax(1) == labels).float().mean().item()  # the subset matters


def test_class_map_rule_and_ties():
    logits = torch.tensor([[1.0, 4.0, 4.0, 0.0], [2.0, 0.0, 0.0, 2.0]])
    class_map = [[2], [1, 3], [0]]
    torch.testing.assert_close(project_logits(logits, class_map), torch.tensor([[4.0, 4.0, 1.0], [0.0, 2.0, 2.0]]))
    # ties go to the first class, like wise-ft's argmax over the projected logits
    assert top1_correct(logits, torch.tensor([0, 1]), class_map=class_map).tolist() == [True, True]


def test_accumulator_equals_one_shot():
    logits = torch.randn(257, 10, generator=G)
    labels = torch.randint(0, 4, (257,), generator=G)
    class_map = [[0, 5], [1], [2, 6, 7], [3, 4, 8, 9]]
    accumulator = TopOneAccumulator(class_map=class_map)
    for start in range(0, 257, 64):
        accumulator.update(logits[start:start + 64], labels[start:start + 64])
    assert accumulator.compute() == top1_accuracy(logits, labels, class_map=class_map)
    assert accumulator.total == 257


def test_guards():
    logits = torch.randn(4, 10, generator=G)
    with pytest.raises(rs.InputError, match="not among the 3 scored class_indices"):
        top1_correct(logits, torch.tensor([0, 1, 2, 0]), class_indices=[2, 5, 9])  # labels as subset positions
    with pytest.raises(rs.InputError, match="not both"):
        top1_correct(logits, torch.zeros(4, dtype=torch.long), class_indices=[1], class_map=[[1]])
    with pytest.raises(rs.InputError, match="-1 marks an unlabelled image"):
        top1_correct(logits, torch.tensor([0, -1, 0, 0]))
    with pytest.raises(rs.InputError, match="class numbers 0..1"):
        top1_correct(logits, torch.tensor([0, 2, 0, 0]), class_map=[[0], [1]])
    with pytest.raises(rs.InputError, match="array of 4 integer labels"):
        top1_correct(logits, torch.zeros(3, dtype=torch.long))
    with pytest.warns(RuntimeWarning, match="zero samples"):
        assert np.isnan(top1_accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)))


def test_accuracy_reads_the_rule_off_the_dataset():
    ds = ImageDataset([("a.png", 2), ("b.png", 0)], class_indices=[0, 2])
    logits = torch.tensor([[0.0, 9.0, 1.0], [1.0, 9.0, 0.0]])
    assert rs.accuracy(logits, ds) == 1.0
    plain = ImageDataset([("a.png", 2), ("b.png", 0)])
    assert rs.accuracy(logits, plain) == 0.0
    with pytest.raises(rs.InputError, match="pass labels="):
        rs.accuracy(logits[:1], ds)
    assert rs.accuracy(logits[:1], ds, labels=torch.tensor([2])) == 1.0
