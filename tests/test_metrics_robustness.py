"""Effective robustness (eq. 1) and the baseline fit, against numpy and the published testbed accuracies."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

import robustsig as rs
from robustsig.metrics.robustness import SHIFT_SETS

TESTBED_COLUMNS = ["val", "imagenetv2-matched-frequency-format-val", "imagenet-r", "imagenet-sketch",
                   "objectnet-1.0-beta", "imagenet-a"]


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_er_formula_and_kinds():
    acc_id = np.array([0.55, 0.7, 0.82])
    acc_shift = np.array([0.3, 0.5, 0.45])
    expected = acc_shift - sigmoid(0.76 * np.log(acc_id / (1 - acc_id)) - 1.49)
    out = rs.effective_robustness(acc_id, acc_shift)
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, expected, rtol=1e-14)
    scalar = rs.effective_robustness(0.7, 0.5)
    assert isinstance(scalar, float) and scalar == pytest.approx(expected[1], rel=1e-14)
    tensor = rs.effective_robustness(torch.tensor(acc_id), torch.tensor(acc_shift))
    assert isinstance(tensor, torch.Tensor)
    np.testing.assert_allclose(tensor.numpy(), expected, rtol=1e-14)
    listed = rs.effective_robustness([0.55, 0.7, 0.82], 0.5, b1=1.0, b0=0.0)  # broadcast; identity line
    np.testing.assert_allclose(listed, 0.5 - acc_id, rtol=1e-12)


def test_accuracies_outside_the_interval_are_rejected():
    with pytest.raises(rs.InputError, match="divided by 100"):
        rs.effective_robustness(76.2, 0.5)
    with pytest.raises(rs.InputError, match="strictly between 0 and 1"):
        rs.effective_robustness(1.0, 0.5)
    with pytest.raises(rs.InputError, match="acc_shift.*position 1"):
        rs.effective_robustness([0.5, 0.6], [0.3, -0.1])
    with pytest.raises(rs.InputError, match="strictly between"):
        rs.fit_baseline([0.5, 0.6, 0.7], [0.3, 0.0, 0.4])
    with pytest.raises(rs.InputError, match="nan"):
        rs.effective_robustness(float("nan"), 0.5)
    assert rs.effective_robustness(0.7, 0.0) < 0  # a shift accuracy of 0 is a valid value


def test_fit_baseline_equals_numpy_polyfit():
    rng = np.random.default_rng(6)
    acc_id = rng.uniform(0.3, 0.9, size=40)
    logit = np.log(acc_id / (1 - acc_id))
    acc_shift = sigmoid(0.8 * logit - 1.5 + 0.1 * rng.normal(size=40))
    b1, b0, r = rs.fit_baseline(acc_id, acc_shift)
    ref_b1, ref_b0 = np.polyfit(logit, np.log(acc_shift / (1 - acc_shift)), 1)
    assert b1 == pytest.approx(ref_b1, abs=1e-12) and b0 == pytest.approx(ref_b0, abs=1e-12)
    assert r == pytest.approx(np.corrcoef(logit, np.log(acc_shift / (1 - acc_shift)))[0, 1], abs=1e-12)
    with pytest.raises(rs.InputError, match="at least 2 models"):
        rs.fit_baseline([0.5], [0.4])
    with pytest.warns(RuntimeWarning, match="undefined"):
        b1, b0, r = rs.fit_baseline([0.5, 0.6, 0.7], [0.4, 0.4, 0.4])
    assert b1 == pytest.approx(0, abs=1e-12) and b0 == pytest.approx(np.log(0.4 / 0.6)) and np.isnan(r)


def test_fit_baseline_on_the_published_testbed(reference_dir):
    testbed = reference_dir / "imagenet-testbed"
    with open(testbed / "model_types_derived.csv") as handle:
        types = {row["model"]: row["model_type"] for row in csv.DictReader(handle)}
    with open(testbed / "robustness_top1s_er_columns.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if all(r.get(c) for c in TESTBED_COLUMNS)]
    assert len(rows) == 329

    def fit(selected):
        acc = np.array([[float(r[c]) / 100 for c in TESTBED_COLUMNS] for r in selected])
        acc_shift = rs.mean_shift_accuracy(dict(zip(SHIFT_SETS, acc[:, 1:].T)))
        line = rs.fit_baseline(acc[:, 0], acc_shift)
        x, y = np.log(acc[:, 0] / (1 - acc[:, 0])), np.log(acc_shift / (1 - acc_shift))
        np.testing.assert_allclose(line[:2], np.polyfit(x, y, 1), atol=1e-12)
        return line

    # the testbed's standard models with the low-accuracy CNNs: inside the README's range
    b1, b0, r = fit([row for row in rows if types[row["model"]] in ("STANDARD", "LOW_ACCURACY_CNN")])
    assert 0.75 <= b1 <= 0.79 and -1.60 <= b0 <= -1.53 and r > 0.99
    assert (round(b1, 3), round(b0, 3)) == (0.751, -1.597)
    # STANDARD models alone: the README's 1.04, -1.89
    b1, b0, _ = fit([row for row in rows if types[row["model"]] == "STANDARD"])
    assert (round(b1, 2), round(b0, 2)) == (1.04, -1.89)
    # every model with all six accuracies: slope in range, intercept just above it
    b1, b0, _ = fit(rows)
    assert (round(b1, 3), round(b0, 3)) == (0.783, -1.519)


def test_mean_shift_accuracy_needs_every_set():
    accs = {"imagenet-v2": 0.6, "imagenet-r": 0.7, "imagenet-sketch": 0.4, "objectnet": 0.5}
    with pytest.raises(rs.InputError, match="missing for imagenet-a"):
        rs.mean_shift_accuracy(accs)
    assert rs.mean_shift_accuracy({**accs, "imagenet-a": 0.3, "imagenet": 0.9}) == pytest.approx(0.5)
