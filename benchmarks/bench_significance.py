"""Concept significance (issue 20, point 1):

- the permutation test of one model and basis at the paper's size: 1,197 concepts whose positives follow the
  synthetic study's Zipf law (rank r has ``max(10, 31652 // r)`` positives and as many negatives: 20 to 63,304
  images), 1,000 directions (the RN50 stand-in's singular basis), the default budget, pure noise as in the
  full-size synthetic study; printed with its floor (:func:`permutation_floor`) and the extrapolation to the
  paper preset's 56 tests (28 models x 2 bases: 36,696 directions in all). Then the same sets on 256 directions
  with every tenth concept planted on one direction at graded strengths, from barely to clearly detectable (what
  concepts with a signal cost, and what BH finds);
- demo-sized sets: the test against re-running the AP kernel on every permuted label vector (what a
  straightforward implementation does).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from benchmarks._timing import report, side_by_side
from robustsig.metrics.concepts import average_precision_matrix
from robustsig.metrics.significance import (DEFAULT_PERMUTATIONS, DEFAULT_STOP_AFTER, FIRST_STAGE,
                                            benjamini_hochberg, permutation_order, permutation_p_values)

PAPER_CONCEPTS = 1197
PAPER_IMAGES = 63305
PAPER_DIRECTIONS = 36696
"""Directions of the paper preset's 56 tests: per model min(width, 1000) singular and ``width`` neuron directions
(7 models of width 1024, 19 of 512, 2 of 768)."""


def paper_sets(directions: int, planted: int = 0, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Balanced per-concept score sets at the paper's size, drawn from one pool of images (each concept's rows a
    random subset, as Broden's balanced sets are); ``planted`` concepts (every tenth) get a signal on one direction
    graded from barely to clearly detectable."""
    rng = np.random.default_rng(seed)
    pool = torch.from_numpy(rng.standard_normal((PAPER_IMAGES, directions), dtype=np.float32))
    positives = np.maximum(10, (PAPER_IMAGES // 2) // np.arange(1, PAPER_CONCEPTS + 1))
    scores, labels = [], []
    strengths = iter(np.geomspace(0.15, 3.0, planted)) if planted else iter(())
    for c, k in enumerate(positives.tolist()):
        rows = torch.from_numpy(np.sort(rng.choice(PAPER_IMAGES, 2 * k, replace=False)))
        y = torch.from_numpy(rng.permutation(np.arange(2 * k) < k))
        s = pool[rows]
        if planted and c % 10 == 0 and c // 10 < planted:
            s[:, c % directions] += float(next(strengths)) * y
        scores.append(s)
        labels.append(y)
    return scores, labels


def permutation_floor(elements: np.ndarray, drawn: np.ndarray, directions: int) -> float:
    """Seconds a test must take at least on this machine's cores: one numpy sort of every concept's directions (the
    test sorts each once) plus one float32 cumulative sum over every permuted label it drew (it reads each at least
    once), at one core's rates (measured on one thread: repeatable) times the cores the test uses."""
    block = torch.rand(64, 256, 400)
    rows = np.random.default_rng(1).standard_normal((directions, 4000), dtype=np.float32)
    threads = torch.get_num_threads()
    rates = []
    try:
        torch.set_num_threads(1)
        for work, size in ((lambda: block.cumsum(-1), block.numel()), (lambda: np.argsort(-rows, axis=1), rows.size)):
            times = []
            for _ in range(5):
                begin = time.perf_counter()
                work()
                times.append(time.perf_counter() - begin)
            rates.append(size / sorted(times)[2])
    finally:
        torch.set_num_threads(threads)
    return float((drawn * elements).sum() / rates[0] + elements.sum() / rates[1]) / threads


def bench_paper_scale(directions: int = 1000, planted: int = 0) -> None:
    scores, labels = paper_sets(directions, planted)
    elements = np.array([s.numel() for s in scores])
    begin = time.perf_counter()
    test = permutation_p_values(scores, labels, permutations=DEFAULT_PERMUTATIONS, seed=0,
                                stop_after=DEFAULT_STOP_AFTER)
    seconds = time.perf_counter() - begin
    drawn = test.drawn.numpy()
    floor = permutation_floor(elements, drawn, directions)
    kind = "pure noise" if not planted else f"{planted} planted concepts"
    full = int((drawn >= DEFAULT_PERMUTATIONS).sum())
    print(f"  concept significance at paper size ({kind}; {PAPER_CONCEPTS} concepts of 20-{PAPER_IMAGES - 1} images, "
          f"{directions} directions, at most {DEFAULT_PERMUTATIONS:,} permutations, first stage {FIRST_STAGE}, "
          f"stop at the {DEFAULT_STOP_AFTER}th exceedance): {seconds:.1f} s per model and basis; floor (one sort "
          f"of every direction + one float32 cumsum of every permuted label, on {torch.get_num_threads()} cores) "
          f"{floor:.1f} s = {seconds / floor:.1f}x; "
          f"{(drawn * elements).sum() / elements.sum():.0f} permutations drawn per element; "
          f"{int(test.bounded.sum())} concepts by the analytic bound, {full} drew all {DEFAULT_PERMUTATIONS:,}; the "
          f"paper's 56 tests ({PAPER_DIRECTIONS:,} directions): ~{seconds * PAPER_DIRECTIONS / directions / 60:.1f} "
          "min", flush=True)
    if planted:
        chosen = np.arange(0, 10 * planted, 10)
        found = benjamini_hochberg(test, 0.05).adjusted.numpy() <= 0.05
        print(f"    BH discoveries at FDR 0.05: {int(found[chosen].sum())} of the {planted} planted concepts "
              f"({int(test.bounded[chosen].sum())} p-values by the bound), {int(np.delete(found, chosen).sum())} of "
              f"the {PAPER_CONCEPTS - planted} null ones; the planted concepts drew {int(drawn[chosen].sum()):,} of "
              f"the {int(drawn.sum()):,} permutations", flush=True)


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

    def stopping() -> torch.Tensor:  # the default: a concept stops at its 5th exceedance
        return permutation_p_values(scores, labels, permutations=permutations,
                                    stop_after=DEFAULT_STOP_AFTER).p_values

    medians = side_by_side({"sort-once kernel": sort_once, "AP kernel per permutation": recompute_ap,
                            "sort-once + sequential stopping": stopping}, repeats=3)
    title = f"concept significance ({concepts} null concepts x {size} images x {directions} directions, " \
            f"{permutations} permutations)"
    report(title, medians, "sort-once kernel", "AP kernel per permutation")
    report(title, medians, "sort-once + sequential stopping", "AP kernel per permutation")


def run() -> None:
    print(f"(torch threads {torch.get_num_threads()})", flush=True)
    bench_paper_scale(1000)
    bench_paper_scale(256, planted=120)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bench_permutations(size=40)
        bench_permutations(size=160)
    finally:
        torch.set_num_threads(threads)
