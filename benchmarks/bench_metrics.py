"""Metrics against the naive ways, side by side in one process (issue 2's targets; the concept AP matrix is in
bench_ap):

- linear CKA in feature space vs the N x N Gram form (Kornblith et al.'s reference code) at N = 10,000 and
  d = 256 and 512 (target >= 20x, and O(d^2) memory: peak resident memory of each is printed). The feature-space
  form costs 3 N d^2 multiply-adds against 2 N^2 d for the Gram form, so its advantage is ~2N/(3d) in flops
  (26x at d = 256, 13x at d = 512 in the same precision) plus the N x N passes the Gram form makes;
- a pruning curve with 65 levels vs rebuilding the pruned head and scoring it per level (target >= 10x).

Every pair is checked to agree before it is timed.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

import numpy as np
import torch

from benchmarks._timing import report, side_by_side


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(field + ":"))


def peak_extra_memory_mb(fn: Callable[[], object]) -> float | None:
    """Peak resident memory above the current level while ``fn`` runs (numpy and torch allocations alike), from
    Linux's high-water mark reset through /proc/self/clear_refs; ``None`` where that is not available."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        before = _status_kb("VmRSS")
        fn()
        return (_status_kb("VmHWM") - before) / 1024
    except OSError:
        return None


def _gram_cka(X: torch.Tensor, Y: torch.Tensor) -> float:
    """Linear CKA through N x N Gram matrices, as in Kornblith et al.'s reference code (in torch, so both
    contenders use the same BLAS)."""
    def centered_gram(Z: torch.Tensor) -> torch.Tensor:
        gram = Z @ Z.T
        means = gram.mean(0)
        means -= means.mean() / 2
        gram -= means[:, None]
        gram -= means[None, :]
        return gram

    gx, gy = centered_gram(X), centered_gram(Y)
    return float((gx * gy).sum() / (gx.square().sum() * gy.square().sum()).sqrt())


def bench_cka(n: int = 10_000, width: int = 512) -> None:
    from robustsig.metrics.cka import cka

    g = torch.Generator().manual_seed(1)
    X = torch.randn(n, width, generator=g)
    Y = torch.tanh(X @ torch.randn(width, width, generator=g) / width**0.5) + 0.5 * torch.randn(n, width, generator=g)
    X64, Y64 = X.double(), Y.double()
    contenders = {"cka (feature space)": lambda: cka(X, Y),
                  "Gram form float64": lambda: _gram_cka(X64, Y64),
                  "Gram form float32": lambda: _gram_cka(X, Y)}
    value, reference, gram32 = cka(X, Y), _gram_cka(X64, Y64), _gram_cka(X, Y)
    assert abs(value - reference) < 1e-6, (value, reference)
    print(f"linear CKA, N={n}, d={width}: Gram form float64 {reference:.9f}; cka (float32 products, float64 sums) "
          f"off by {abs(value - reference):.1e}; Gram form float32 off by {abs(gram32 - reference):.1e}", flush=True)
    medians = side_by_side(contenders, repeats=3, warmup=1)
    report("  vs the Gram form in float64 (the reference)", medians, "cka (feature space)", "Gram form float64",
           target=20)
    report("  vs the Gram form in float32 (the products' precision)", medians, "cka (feature space)",
           "Gram form float32", target=20)
    memory = {name: peak_extra_memory_mb(fn) for name, fn in contenders.items()}
    print("  peak extra resident memory: " + ", ".join(
        f"{name} {'n/a' if mb is None else f'{max(mb, 0.0):.0f} MB'}" for name, mb in memory.items())
          + f" (inputs {2 * X.numel() * 4 / 2**20:.0f} MB float32; d^2 float64 = {width * width * 8 / 2**20:.1f} MB)",
          flush=True)


def bench_pruning(n: int = 2000, classes: int = 1000, width: int = 1280, levels: int = 65) -> None:
    from robustsig.metrics.directions import head_svd
    from robustsig.metrics.pruning import pruned_counts, pruning_curve

    g = torch.Generator().manual_seed(2)
    W = torch.randn(classes, width, generator=g) / width**0.5
    b = 0.1 * torch.randn(classes, generator=g)
    h = torch.randn(n, width, generator=g)
    labels = (h @ W.T + b + 0.5 * torch.randn(n, classes, generator=g)).argmax(1)
    svd = head_svd(W)
    fractions = np.linspace(0, 1, levels)
    s, U, V = (t.float() for t in svd)
    prune_order = torch.arange(svd.rank - 1, -1, -1)  # smallest singular values first

    def rebuild_per_level() -> np.ndarray:
        accuracies = []
        for k in pruned_counts(fractions, svd.rank):
            keep = prune_order[k:]
            Wk = (U[:, keep] * s[keep]) @ V[:, keep].T
            accuracies.append(float(((h @ Wk.T + b).argmax(1) == labels).double().mean()))
        return np.array(accuracies)

    def ours() -> np.ndarray:
        return pruning_curve(h, labels, svd, b, fractions)["accuracy"]

    difference = np.abs(ours() - rebuild_per_level()).max()
    assert difference <= 2 / n, difference  # float32: at most a near-tie or two may flip
    medians = side_by_side({"pruning_curve": ours, "rebuild W per level": rebuild_per_level}, repeats=3, warmup=1)
    report(f"pruning curve, {levels} levels, h {n}x{width}, head {classes}x{width}", medians, "pruning_curve",
           "rebuild W per level", target=10)


def run() -> None:
    # On a shared machine, OpenMP threads spin-waiting for a descheduled sibling make multi-threaded torch
    # timings swing ~10x from run to run; every contender runs on one thread so the ratios are repeatable.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    print(f"(torch on 1 thread for every contender; {threads} available)", flush=True)
    try:
        torch.manual_seed(0)
        bench_pruning()
        for width in (256, 512):
            bench_cka(width=width)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    run()
