"""Concept significance: the sort-once permutation kernels against re-running the AP kernel on every permuted label
vector (what a straightforward implementation does), on demo-sized sets (40 images: quadratic forms) and larger
ones (160 images: sorted cumsum)."""

from __future__ import annotations

import torch

from benchmarks._timing import report, side_by_side
from robustsig.metrics.concepts import average_precision_matrix
from robustsig.metrics.significance import permutation_order, permutation_p_values


def bench_permutations(concepts: int = 4, size: int = 40, directions: int = 512, permutations: int = 200) -> None:
    g = torch.Generator().manual_seed(0)
    scores = [torch.randn(size, directions, generator=g) for _ in range(concepts)]
    labels = [torch.arange(size) < size // 2 for _ in range(concepts)]

    def recompute_ap() -> list[int]:
        exceed = []
        for c, (s, y) in enumerate(zip(scores, labels)):
            observed = float(average_precision_matrix([s], [y]).max())
            null = [float(average_precision_matrix([s], [y[order]]).max())
                    for order in permutation_order(0, c, permutations, size)]
            exceed.append(sum(value >= observed for value in null))
        return exceed

    def sort_once() -> torch.Tensor:
        return permutation_p_values(scores, labels, permutations=permutations, stop_after=None).p_values

    def stopping() -> torch.Tensor:  # the default: a concept stops at its 20th exceedance
        return permutation_p_values(scores, labels, permutations=permutations).p_values

    medians = side_by_side({"sort-once kernel": sort_once, "AP kernel per permutation": recompute_ap,
                            "sort-once + sequential stopping": stopping}, repeats=3)
    title = f"concept significance ({concepts} null concepts x {size} images x {directions} directions, " \
            f"{permutations} permutations)"
    report(title, medians, "sort-once kernel", "AP kernel per permutation")
    report(title, medians, "sort-once + sequential stopping", "AP kernel per permutation")


def run() -> None:
    torch.set_num_threads(1)
    bench_permutations(size=40)
    bench_permutations(size=160)
