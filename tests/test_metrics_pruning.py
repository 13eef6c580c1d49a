"""Pruning curves against rebuilding the pruned head per level, planted low-rank signal, class subsets and
mappings, streaming, and ER per fraction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import robustsig as rs
from robustsig.metrics.pruning import PruningAccumulator, pruned_counts, pruning_order
from robustsig.metrics.scoring import top1_correct


def naive_curve(h, labels, W, b, fractions, order, **scoring):
    """Rebuild W from the directions kept at every level and score the full logits."""
    svd = rs.head_svd(W)
    perm = pruning_order(svd, order, scoring.pop("importance", None), scoring.pop("seed", 0))
    out = []
    for k in pruned_counts(fractions, svd.rank):
        keep = perm[k:]
        Wk = svd.U[:, keep] @ torch.diag(svd.s[keep]) @ svd.V[:, keep].T
        logits = h @ Wk.T + (0 if b is None else b)
        out.append(float(top1_correct(logits, labels, **scoring).double().mean()))
    return np.array(out)


@pytest.fixture
def head_and_data():
    g = torch.Generator().manual_seed(5)
    W = torch.randn(30, 48, dtype=torch.float64, generator=g)
    b = torch.randn(30, dtype=torch.float64, generator=g)
    h = torch.randn(400, 48, dtype=torch.float64, generator=g)
    labels = (h @ W.T + b + 2.0 * torch.randn(400, 30, dtype=torch.float64, generator=g)).argmax(1)
    return W, b, h, labels


@pytest.mark.parametrize("order", ["singular", "importance", "random"])
def test_curve_equals_rebuilding_the_head_per_level(head_and_data, order):
    W, b, h, labels = head_and_data
    fractions = np.linspace(0, 1, 17)
    importance = rs.direction_importance(W, h)
    curve = rs.pruning_curve(h, labels, W, b, fractions, order, importance=importance, seed=3, chunk_rows=64)
    expected = naive_curve(h, labels, W, b, fractions, order, importance=importance, seed=3)
    np.testing.assert_array_equal(curve["accuracy"], expected)
    assert curve["n_pruned"].tolist() == pruned_counts(fractions, 30).tolist()
    assert (curve["n_kept"] + curve["n_pruned"] == 30).all()
    assert curve.meta == {"order": order, "rank": 30, "n_samples": 400}
    assert curve["accuracy"][0] > 0.5  # the full head: labels were drawn from its logits


def test_importance_order_computed_from_h_when_not_given(head_and_data):
    W, b, h, labels = head_and_data
    given = rs.pruning_curve(h, labels, W, b, order="importance", importance=rs.direction_importance(W, h))
    computed = rs.pruning_curve(h, labels, W, b, order="importance")
    np.testing.assert_array_equal(given["accuracy"], computed["accuracy"])


def test_float32_curve_agrees(head_and_data):
    W, b, h, labels = head_and_data
    f64 = rs.pruning_curve(h, labels, W, b)
    f32 = rs.pruning_curve(h.float(), labels, W.float(), b.float())
    assert np.abs(f64["accuracy"] - f32["accuracy"]).max() <= 2 / 400  # at most a near-tie or two flip


def test_head_whose_signal_lives_in_20_percent_of_directions_survives_80_percent_pruning():
    g = torch.Generator().manual_seed(7)
    d, classes, rank, signal = 64, 50, 50, 10
    V, _ = torch.linalg.qr(torch.randn(d, rank, dtype=torch.float64, generator=g))
    U, _ = torch.linalg.qr(torch.randn(classes, rank, dtype=torch.float64, generator=g))
    s = torch.cat([torch.linspace(10, 6, signal), torch.linspace(1.0, 0.2, rank - signal)]).double()
    W = U @ torch.diag(s) @ V.T
    n = 3000
    coefficients = 10.0 * torch.randn(n, signal, dtype=torch.float64, generator=g)
    h = coefficients @ V[:, :signal].T + torch.randn(n, d, dtype=torch.float64, generator=g)
    clean_logits = (coefficients * s[:signal]) @ U[:, :signal].T
    labels = clean_logits.argmax(1)  # the truth lives in the top 20% of singular directions
    curve = rs.pruning_curve(h, labels, W, fractions=[0.0, 0.8, 0.9], order="singular")
    control = rs.pruning_curve(h, labels, W, fractions=[0.0, 0.8], order="random", seed=0)
    full, pruned_80, pruned_90 = curve["accuracy"]
    assert full > 0.85
    assert pruned_80 >= full - 0.01
    assert pruned_90 < full - 0.2  # pruning into the signal hurts: the test can fail
    assert control["accuracy"][1] < 0.5 * full


def test_class_mask_restricts_the_argmax(head_and_data):
    W, b, h, _ = head_and_data
    subset = torch.tensor([2, 5, 11, 17, 23, 29])
    logits = h @ W.T + b
    labels = subset[(logits[:, subset] + torch.randn(400, 6, dtype=torch.float64)).argmax(1)]
    fractions = [0.0, 0.25, 0.5, 1.0]
    mask = torch.zeros(30, dtype=torch.bool)
    mask[subset] = True
    curve = rs.pruning_curve(h, labels, W, b, fractions, class_mask=mask)
    np.testing.assert_array_equal(curve["accuracy"], naive_curve(h, labels, W, b, fractions, "singular",
                                                                 class_indices=subset))
    by_index = rs.pruning_curve(h, labels, W, b, fractions, class_mask=subset.tolist())
    np.testing.assert_array_equal(by_index["accuracy"], curve["accuracy"])
    # the subset's own labels (0..5) with one-logit classes in a class_map give the same curve
    own = rs.pruning_curve(h, torch.searchsorted(subset, labels), W, b, fractions,
                           class_map=[[i] for i in subset.tolist()])
    np.testing.assert_array_equal(own["accuracy"], curve["accuracy"])
    with pytest.raises(rs.InputError, match="not among the 6 scored class_indices"):
        rs.pruning_curve(h, torch.zeros(400, dtype=torch.long), W, b, fractions, class_mask=mask)


def test_class_sets_score_like_objectnet(head_and_data):
    W, b, h, _ = head_and_data
    sets = [[0, 1, 2], [7], [10, 12], [20, 21, 22, 25]]
    labels = torch.randint(0, 4, (400,), generator=torch.Generator().manual_seed(1))
    fractions = [0.0, 0.5, 0.9]
    curve = rs.pruning_curve(h, labels, W, b, fractions, class_map=sets)
    np.testing.assert_array_equal(curve["accuracy"], naive_curve(h, labels, W, b, fractions, "singular",
                                                                 class_map=sets))


def test_top1_rule_by_hand():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0, 9.0],
                           [5.0, 0.0, 1.0, 4.0, 0.0],
                           [0.0, 1.0, 6.0, 2.0, 0.0]])
    assert top1_correct(logits, [4, 3, 2]).tolist() == [True, False, True]
    assert top1_correct(logits, [1, 3, 2], class_indices=[1, 2, 3]).tolist() == [True, True, True]
    # ObjectNet-style: label 0 -> logits {1, 3}, label 1 -> {0}, label 2 -> {2}; logit 4 is never scored
    assert top1_correct(logits, [0, 1, 0], class_map=[[1, 3], [0], [2]]).tolist() == [True, True, False]
    with pytest.raises(rs.InputError, match="not both"):
        top1_correct(logits, [0, 0, 0], class_map=[[0]], class_indices=[0])
    with pytest.raises(rs.InputError, match="logit indices in"):
        top1_correct(logits, [0, 0, 0], class_map=[[0], [7]])


def test_accumulator_streams_batches_and_memory_maps(head_and_data, tmp_path):
    W, b, h, labels = head_and_data
    one_shot = rs.pruning_curve(h, labels, W, b)
    acc = PruningAccumulator(W, b)
    for hb, yb in zip(h.split(33), labels.split(33)):
        acc.update(hb, yb)
    np.testing.assert_array_equal(acc.compute()["accuracy"], one_shot["accuracy"])
    np.save(tmp_path / "h.npy", h.numpy())
    mapped = rs.pruning_curve(np.load(tmp_path / "h.npy", mmap_mode="r"), labels.numpy(), W, b, chunk_rows=50)
    np.testing.assert_array_equal(mapped["accuracy"], one_shot["accuracy"])
    assert len(one_shot) == 65 and one_shot["fraction"][-1] == 1.0


def test_er_per_fraction(head_and_data):
    W, b, h, labels = head_and_data
    fractions = [0.0, 0.5, 0.8]
    id_curve = rs.pruning_curve(h, labels, W, b, fractions)
    shifted = {name: rs.pruning_curve(h + scale * torch.randn_like(h), labels, W, b, fractions)
               for name, scale in (("noise1", 1.0), ("noise2", 2.0))}
    table = rs.pruning_effective_robustness(id_curve, shifted)
    acc_shift = (shifted["noise1"]["accuracy"] + shifted["noise2"]["accuracy"]) / 2
    np.testing.assert_allclose(table["acc_shift"], acc_shift)
    np.testing.assert_allclose(table["er"], rs.effective_robustness(id_curve["accuracy"], acc_shift))
    assert table.names == ["fraction", "n_pruned", "acc_id", "acc_noise1", "acc_noise2", "acc_shift", "er"]
    rows = table.rows()
    assert rows[0]["fraction"] == 0.0 and isinstance(rows[0]["n_pruned"], int)
    assert table.to_csv().splitlines()[0] == ",".join(table.names)
    other = rs.pruning_curve(h, labels, W, b, [0.0, 0.5])
    with pytest.raises(rs.InputError, match="other pruning levels"):
        rs.pruning_effective_robustness(id_curve, {"x": other})


def test_bad_arguments_are_named(head_and_data):
    W, b, h, labels = head_and_data
    with pytest.raises(rs.InputError, match="order must be one of"):
        rs.pruning_curve(h, labels, W, order="largest")
    with pytest.raises(rs.InputError, match=r"fractions must lie in \[0, 1\]"):
        rs.pruning_curve(h, labels, W, fractions=[0.5, 80])
    with pytest.raises(rs.InputError, match="got nan"):
        rs.pruning_curve(h, labels, W, fractions=[float("nan")])
    with pytest.raises(rs.InputError, match="one label per row"):
        rs.pruning_curve(h, labels[:-1], W)
    with pytest.raises(rs.InputError, match="48 columns"):
        rs.pruning_curve(h[:, :40], labels, W)
    with pytest.raises(rs.InputError, match="-1 marks an unlabelled image"):
        rs.pruning_curve(h, torch.full((400,), -1), W)
    with pytest.raises(rs.InputError, match="30 entries"):
        rs.pruning_curve(h, labels, W, b[:5])


@pytest.mark.parametrize("scoring", [{}, {"class_mask": [3, 5, 7, 11, 13, 17]},
                                     {"class_map": [[0, 1, 2], [7], [10, 12], [20, 21, 22, 25]]}])
def test_curves_of_several_orders_equal_rebuilding_the_head(scoring, monkeypatch):
    # 1,300 rows in batches of 1,100 and 200, scored 512 rows at a time: blocks end inside a batch and at its end
    from robustsig.metrics import pruning

    monkeypatch.setattr(pruning, "_SCORE_ROWS", 512)
    g = torch.Generator().manual_seed(8)
    W = torch.randn(30, 48, dtype=torch.float64, generator=g)
    b = torch.randn(30, dtype=torch.float64, generator=g)
    h = torch.randn(1300, 48, dtype=torch.float64, generator=g)
    if "class_map" in scoring:
        labels = torch.randint(0, 4, (1300,), generator=g)
    elif "class_mask" in scoring:
        labels = torch.tensor(scoring["class_mask"])[torch.randint(0, 6, (1300,), generator=g)]
    else:
        labels = (h @ W.T + b + 2.0 * torch.randn(1300, 30, dtype=torch.float64, generator=g)).argmax(1)
    fractions = [0.0, 0.1, 0.35, 0.5, 0.8, 1.0]
    importance = rs.direction_importance(W, h)
    curves = rs.PruningCurves(W, b, fractions, ["singular", "importance", "random"], importance=importance, seed=4,
                              **scoring)
    for rows in (slice(0, 1100), slice(1100, 1300)):
        curves.update(h[rows], labels[rows])
    result = curves.compute()
    assert list(result) == ["singular", "importance", "random"]
    for order, curve in result.items():
        reference = {"class_indices" if name == "class_mask" else name: value for name, value in scoring.items()}
        expected = naive_curve(h, labels, W, b, fractions, order, importance=importance, seed=4, **reference)
        np.testing.assert_array_equal(curve["accuracy"], expected)
        assert curve.meta == {"order": order, "rank": 30, "n_samples": 1300}
    assert not np.array_equal(result["singular"]["accuracy"], result["random"]["accuracy"])


def test_row_argmax_is_torch_argmax_with_ties_nan_and_views():
    from robustsig.metrics.scoring import row_argmax

    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 4, (300, 40), generator=g).double()           # many ties: the first maximum wins
    x[5, 7] = float("nan")
    x[6, :] = float("-inf")
    x[7, [3, 9]] = float("nan")                                          # the first NaN wins
    for view in (x, x.float(), x[:, 5:30], x.T.contiguous().T, x.float()[::2]):
        assert row_argmax(view).tolist() == view.argmax(dim=1).tolist()
    half = x.half()
    assert row_argmax(half).tolist() == half.argmax(dim=1).tolist()
