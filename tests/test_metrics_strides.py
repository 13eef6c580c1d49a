"""Every public metric accepts numpy arrays with negative strides (``x[::-1]``), as numpy, scipy and sklearn do
(``torch.from_numpy`` refuses them: a raw ValueError before the fix), and gives the contiguous array's answer."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

import robustsig as rs
from robustsig.metrics.cka import MinibatchCKAMatrix


def reversed_view(a: np.ndarray) -> np.ndarray:
    """The same values as ``a``, as a view with a negative stride on every axis."""
    flip = (slice(None, None, -1),) * a.ndim
    view = np.ascontiguousarray(a[flip])[flip]
    assert all(stride < 0 for stride in view.strides) and np.array_equal(view, a)
    return view


def _data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    h = rng.normal(size=(60, 12))
    h[:, 3] += 6.0                                                          # an outlier dimension
    W = rng.normal(size=(5, 12))
    labels = (h @ W.T).argmax(1)
    labels[::4] = rng.integers(0, 5, 15)
    return {"h": h, "W": W, "b": rng.normal(size=5), "labels": labels, "logits": h @ W.T,
            "shift_logits": rng.normal(size=(40, 5)), "concepts": rng.random((60, 3)) < 0.4,
            "Y": np.tanh(h[:, :6] @ rng.normal(size=(6, 7))), "acc_id": np.array([0.6, 0.7, 0.8, 0.75]),
            "acc_shift": np.array([0.3, 0.42, 0.5, 0.44]), "mask": np.array([True, False, True, False, True])}


def _accumulate(acc, *batches):
    for rows in np.array_split(np.arange(len(batches[0])), 3):
        acc.update(*[batch[rows] for batch in batches])
    return acc


def _sets(d):
    return ([d["h"][:30], d["h"][30:]], [d["concepts"][:30, 0], d["concepts"][30:, 1]])


METRICS = {
    "activation_kurtosis": lambda d: rs.activation_kurtosis(d["h"]),
    "KurtosisAccumulator": lambda d: _accumulate(rs.KurtosisAccumulator(), d["h"]).compute(),
    "outlier_dimensions": lambda d: rs.outlier_dimensions(d["h"]),
    "head_svd": lambda d: rs.head_svd(d["W"]),
    "direction_importance": lambda d: rs.direction_importance(d["W"], d["h"]),
    "ImportanceAccumulator": lambda d: _accumulate(rs.ImportanceAccumulator(d["W"]), d["h"]).compute(),
    "privileged_directions": lambda d: rs.privileged_directions(np.abs(d["b"])),
    "importance_spearman": lambda d: rs.importance_spearman(np.abs(d["b"]), d["acc_shift"][[0, 1, 2, 3, 0]]),
    "pruning_curve": lambda d: rs.pruning_curve(d["h"], d["labels"] // 2 * 2, d["W"], d["b"], fractions=[0.0, 0.4, 0.8],
                                                class_mask=d["mask"]),
    "pruning_curve-importance": lambda d: rs.pruning_curve(d["h"], d["labels"], d["W"], fractions=[0.0, 0.4],
                                                           order="importance", importance=d["b"] ** 2),
    "PruningAccumulator": lambda d: _accumulate(rs.PruningAccumulator(d["W"], d["b"], fractions=[0.0, 0.6]),
                                                d["h"], d["labels"]).compute(),
    "top1_correct": lambda d: rs.top1_correct(d["logits"], d["labels"], class_indices=np.array([4, 2, 0, 1, 3])),
    "TopOneAccumulator": lambda d: _accumulate(rs.TopOneAccumulator(), d["logits"], d["labels"]).compute(),
    "effective_robustness": lambda d: rs.effective_robustness(d["acc_id"], d["acc_shift"]),
    "fit_baseline": lambda d: rs.fit_baseline(d["acc_id"], d["acc_shift"]),
    "mean_shift_accuracy": lambda d: rs.mean_shift_accuracy({"a": d["acc_id"], "b": d["acc_shift"]}, ["a", "b"]),
    "average_precision_matrix": lambda d: rs.average_precision_matrix(d["h"], d["concepts"]),
    "average_precision_matrix-sets": lambda d: rs.average_precision_matrix(*_sets(d), orientation="both"),
    "concept_summary": lambda d: rs.concept_summary(d["acc_id"].reshape(2, 2), threshold=0.7),
    "concept_threshold_sweep": lambda d: rs.concept_threshold_sweep(d["acc_id"].reshape(2, 2), [0.65, 0.75]),
    "concept_significance": lambda d: rs.concept_significance(*_sets(d), threshold=0.6, permutations=50),
    "doc_accuracy": lambda d: rs.doc_accuracy(d["logits"], d["labels"], d["shift_logits"]),
    "atc_accuracy": lambda d: rs.atc_accuracy(d["logits"], d["labels"], d["shift_logits"], score="entropy"),
    "cka": lambda d: rs.cka(d["h"], d["Y"]),
    "cka-unbiased": lambda d: rs.cka(d["h"], d["Y"], unbiased=True),
    "cka-rbf": lambda d: rs.cka(d["h"], d["Y"], kernel="rbf"),
    "LinearCKA": lambda d: _accumulate(rs.LinearCKA(), d["h"], d["Y"]).compute(),
    "MinibatchCKA": lambda d: _accumulate(rs.MinibatchCKA(), d["h"], d["Y"]).compute(),
    "minibatch_cka": lambda d: rs.minibatch_cka(d["h"], d["Y"], batch_size=20),
    "MinibatchCKAMatrix": lambda d: _accumulate(MinibatchCKAMatrix(), d["h"], d["Y"]).compute(),
}


def _plain(value):
    """A comparable form of a metric's result (tensors, arrays, named tuples, dataclasses, tables)."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if dataclasses.is_dataclass(value):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    if isinstance(value, rs.MetricTable):
        return _plain(value.rows())
    return value


@pytest.mark.parametrize("name", list(METRICS))
def test_negative_strides_give_the_contiguous_answer(name):
    data = _data()
    flipped = {key: reversed_view(value) for key, value in data.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = _plain(METRICS[name](data))
        got = _plain(METRICS[name](flipped))
    assert got == expected


def test_every_public_metric_is_covered():
    """A metric added to the public API joins the list above (its input conversion is checked here)."""
    import importlib

    metrics = {name for name, module in rs._PUBLIC.items() if module.startswith("robustsig.metrics.")
               and callable(getattr(importlib.import_module(module), name))}
    # result types, and the metrics of results (tables, concept name sets), take no arrays
    metrics -= {"MetricTable", "PruningCurves", "pruning_effective_robustness", "concept_overlaps"}
    assert metrics <= {name.split("-")[0] for name in METRICS}, sorted(metrics - set(METRICS))
