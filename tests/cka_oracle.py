"""The test oracle of the paper's CKA: PyTorch-Model-Compare's (torch_cka 0.21, the package Crabbé et al. used)
``_HSIC`` and ``CKA.compare`` loop, transcribed, run in float64 (torch_cka's own float32 HSIC terms lose up to
~1e-3 to cancellation on ReLU activations: rounding, not the estimator)."""

from __future__ import annotations

import torch


def torch_cka_hsic(K: torch.Tensor, L: torch.Tensor) -> float:
    N = K.shape[0]
    ones = torch.ones(N, 1, dtype=K.dtype)
    result = torch.trace(K @ L)
    result += ((ones.t() @ K @ ones @ ones.t() @ L @ ones) / ((N - 1) * (N - 2))).item()
    result -= ((ones.t() @ K @ L @ ones) * 2 / (N - 2)).item()
    return (1 / (N * (N - 3)) * result).item()


def torch_cka_compare(batches_a: list[list[torch.Tensor]], batches_b: list[list[torch.Tensor]]) -> torch.Tensor:
    """``CKA.compare``: per batch, every layer of a against every layer of b (features as the hooks saw them)."""
    num_batches = len(batches_a)
    hsic = torch.zeros(len(batches_a[0]), len(batches_b[0]), 3, dtype=torch.float64)
    for feats_a, feats_b in zip(batches_a, batches_b):
        for i, feat1 in enumerate(feats_a):
            X = feat1.double().flatten(1)
            K = X @ X.t()
            K.fill_diagonal_(0.0)
            hsic[i, :, 0] += torch_cka_hsic(K, K) / num_batches
            for j, feat2 in enumerate(feats_b):
                Y = feat2.double().flatten(1)
                L = Y @ Y.t()
                L.fill_diagonal_(0)
                hsic[i, j, 1] += torch_cka_hsic(K, L) / num_batches
                hsic[i, j, 2] += torch_cka_hsic(L, L) / num_batches
    return hsic[:, :, 1] / (hsic[:, :, 0].sqrt() * hsic[:, :, 2].sqrt())


