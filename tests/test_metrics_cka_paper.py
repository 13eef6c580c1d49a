"""The paper's CKA estimator (torch_cka's minibatch CKA) and the scaling guard of every CKA estimator.

Oracles: a transcription of PyTorch-Model-Compare's ``_HSIC`` and ``compare`` loop (torch_cka 0.21, the package the
paper used), run in float64, and the package itself where installed (run in float64 too: its own float32 HSIC loses
up to ~1e-3 to cancellation on ReLU activations, which is rounding, not the estimator).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from robustsig.errors import DataError, InputError
from robustsig.metrics.cka import LinearCKA, MinibatchCKA, MinibatchCKAMatrix, cka, minibatch_cka

from cka_oracle import torch_cka_compare


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(16 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 10))


LAYERS = ["1", "3", "6", "7"]


def _pair() -> tuple[nn.Module, nn.Module]:
    a, b = _net(0), _net(0)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return a.eval(), b.eval()


def _features(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    handles = [model.get_submodule(name).register_forward_hook(lambda m, i, o: out.append(o)) for name in LAYERS]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return out


def _images(n: int = 200) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 + 1  # large means: cancellation


def test_matrix_equals_torch_cka_transcription():
    a, b = _pair()
    x = _images()
    batches = list(x.split(50))
    feats_a = [_features(a, xb) for xb in batches]
    feats_b = [_features(b, xb) for xb in batches]
    oracle = torch_cka_compare(feats_a, feats_b)
    acc = MinibatchCKAMatrix()
    for fa, fb in zip(feats_a, feats_b):
        acc.update(fa, fb)
    ours = acc.compute()
    assert ours.shape == (4, 4)
    assert float((ours - oracle).abs().max()) <= 1e-5                     # float32 Grams: measured 1.8e-7
    acc64 = MinibatchCKAMatrix()                                           # float64 outputs: the same to rounding
    for fa, fb in zip(feats_a, feats_b):
        acc64.update([f.double() for f in fa], [f.double() for f in fb])
    assert float((acc64.compute() - oracle).abs().max()) <= 1e-10
    # the pure function on one layer pair, over the same minibatches
    layer_a = torch.cat([fa[1] for fa in feats_a])
    layer_b = torch.cat([fb[2] for fb in feats_b])
    assert minibatch_cka(layer_a, layer_b, batch_size=50) == pytest.approx(float(oracle[1, 2]), abs=1e-5)


def test_matrix_equals_the_torch_cka_package():
    torch_cka = pytest.importorskip("torch_cka")
    from torch.utils.data import DataLoader, TensorDataset

    a, b = _pair()
    x = _images()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # its HSIC builds float32 `ones`: run it in float64, as the reference
    try:
        loader = DataLoader(TensorDataset(x.double(), torch.zeros(len(x))), batch_size=50)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = torch_cka.CKA(a.double(), b.double(), model1_layers=LAYERS, model2_layers=LAYERS)
            reference.compare(loader, loader)
        expected = reference.export()["CKA"].double()
    finally:
        torch.set_default_dtype(previous)
    a, b = _pair()                                                         # float32 models, as a study runs them
    acc = MinibatchCKAMatrix()
    for xb in x.split(50):
        acc.update(_features(a, xb), _features(b, xb))
    assert float((acc.compute() - expected).abs().max()) <= 1e-5


def test_invariants():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(300, 6, 5, generator=g, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=torch.float64))
    assert minibatch_cka(X, 2.5 * X.flatten(1) @ Q, batch_size=100) == pytest.approx(1.0, abs=1e-12)
    Y = X.flatten(1)[:, :10] @ torch.randn(10, 7, generator=g, dtype=torch.float64) + torch.randn(300, 7, generator=g,
                                                                                                    dtype=torch.float64)
    forward, backward = minibatch_cka(X, Y, batch_size=60), minibatch_cka(Y, X, batch_size=60)
    assert forward == pytest.approx(backward, abs=1e-14)
    assert 0.05 < forward < 0.95
    acc = MinibatchCKAMatrix()
    back = MinibatchCKAMatrix()
    for xb, yb in zip(X.split(60), Y.split(60)):
        acc.update([xb, yb], [yb])
        back.update([yb], [xb, yb])
    assert torch.allclose(acc.compute().T, back.compute(), atol=1e-14)
    assert float(acc.compute()[0, 0]) == pytest.approx(forward, abs=1e-14)
    assert float(acc.compute()[1, 0]) == pytest.approx(1.0, abs=1e-12)


def test_minibatches_and_guards():
    X = torch.randn(103, 8, generator=torch.Generator().manual_seed(4))
    Y = X + 0.5 * torch.randn(103, 8, generator=torch.Generator().manual_seed(5))
    with pytest.warns(RuntimeWarning, match="last 3 sample"):
        short = minibatch_cka(X, Y, batch_size=50)
    assert short == pytest.approx(minibatch_cka(X[:100], Y[:100], batch_size=50), abs=1e-15)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                     # 103 = 3 x 33 + 4: the tail is used
        assert minibatch_cka(X, Y, batch_size=33) != pytest.approx(minibatch_cka(X[:99], Y[:99], batch_size=33),
                                                                   abs=1e-6)
    with pytest.raises(InputError, match="batch_size"):
        minibatch_cka(X, Y, batch_size=3)
    with pytest.raises(InputError, match="same samples"):
        minibatch_cka(X, Y[:50])
    acc = MinibatchCKAMatrix()
    with pytest.raises(InputError, match="at least 4"):
        acc.update(X[:3], Y[:3])
    acc.update([X[:10], Y[:10]], [Y[:10]])
    with pytest.raises(InputError, match="same layers"):
        acc.update([X[10:20]], [Y[10:20]])
    with pytest.raises(DataError, match="constant"):
        minibatch_cka(torch.ones(40, 3), Y[:40], batch_size=20)
    constant = MinibatchCKAMatrix()
    constant.update([torch.zeros(20, 3), X[:20]], [Y[:20]])
    with pytest.warns(RuntimeWarning, match="undefined"):
        values = constant.compute()
    assert bool(values[0, 0].isnan()) and not bool(values[1, 0].isnan())


# --- issue 13.16: tiny (subnormal) and huge inputs -----------------------------------------------------------
def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(6)
    X = torch.randn(200, 8, generator=g, dtype=torch.float64)
    Y = X[:, :4] @ torch.randn(4, 6, generator=g, dtype=torch.float64) + 3 * torch.randn(200, 6, generator=g,
                                                                                          dtype=torch.float64)
    return X, Y


def _streamed(estimator, X, Y, rows=50):
    for x, y in zip(X.split(rows), Y.split(rows)):
        estimator.update(x, y)
    value = estimator.compute()
    return float(value[0, 0]) if isinstance(value, torch.Tensor) else value


ESTIMATORS = {
    "linear": lambda X, Y: cka(X, Y),
    "linear-unbiased": lambda X, Y: cka(X, Y, unbiased=True),
    "rbf": lambda X, Y: cka(X, Y, kernel="rbf"),
    "rbf-unbiased": lambda X, Y: cka(X, Y, kernel="rbf", unbiased=True),
    "LinearCKA": lambda X, Y: _streamed(LinearCKA(), X, Y),
    "LinearCKA-unbiased": lambda X, Y: _streamed(LinearCKA(unbiased=True), X, Y),
    "MinibatchCKA": lambda X, Y: _streamed(MinibatchCKA(), X, Y),
    "MinibatchCKA-rbf": lambda X, Y: _streamed(MinibatchCKA(kernel="rbf"), X, Y),
    "minibatch_cka": lambda X, Y: minibatch_cka(X, Y, batch_size=50),
    "MinibatchCKAMatrix": lambda X, Y: _streamed(MinibatchCKAMatrix(), X, Y),
}


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_subnormal_and_huge_inputs(name):
    """float32 inputs near 1e-40 are subnormal: their products underflow to 0 (CKA was 1.0, a ZeroDivisionError or
    'constant' before the scaling). The reference is the same stored values, exactly upcast and rescaled."""
    estimator = ESTIMATORS[name]
    X, Y = _data()
    truth = estimator(X, Y)
    assert 0.05 < truth < 0.95
    X32, Y32 = (X * 1e-40).float(), (Y * 1e-40).float()
    assert float(X32.abs().max()) < torch.finfo(torch.float32).tiny                    # subnormal indeed
    exact = estimator(X32.double() * 2.0**140, Y32.double() * 2.0**140)     # what the stored values say
    assert estimator(X32, Y32) == pytest.approx(exact, abs=1e-6)
    assert exact == pytest.approx(truth, abs=1e-3)                          # subnormals keep ~16 bits
    assert estimator(X * 1e-160, Y * 1e-160) == pytest.approx(truth, abs=1e-9)      # float64 products underflow
    assert estimator((X * 1e25).float(), (Y * 1e25).float()) == pytest.approx(truth, abs=1e-5)  # overflow
    assert estimator(X * 1e200, Y * 1e-200) == pytest.approx(truth, abs=1e-9)


def test_scaling_is_exact_on_ordinary_inputs():
    X, Y = _data()
    # a power of two is exact: values on ordinary inputs are unchanged by the guard (numpy oracle of biased CKA)
    Xc, Yc = (X - X.mean(0)).numpy(), (Y - Y.mean(0)).numpy()
    expected = np.linalg.norm(Xc.T @ Yc) ** 2 / (np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc))
    assert cka(X, Y) == pytest.approx(expected, abs=1e-12)


def test_grams_stay_in_float32_under_autocast():
    """A forward hook runs under the model's autocast: the Gram product must not drop to bfloat16 (or fp16, where
    Gram entries of a wide layer overflow 65504)."""
    X = torch.randn(16, 3000, generator=torch.Generator().manual_seed(8)) * 8.0
    acc, reference = MinibatchCKAMatrix(), MinibatchCKAMatrix()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        K = acc.gram("a", 0, X)
    torch.testing.assert_close(K, reference.gram("a", 0, X), rtol=1e-6, atol=0)
