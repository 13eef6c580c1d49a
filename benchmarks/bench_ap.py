"""Concept AP on the per-concept balanced sets (the path the study uses; issue 12, point 2), side by side in one
process:

- ``average_precision_matrix`` against a loop of ``sklearn.metrics.average_precision_score`` over every (concept,
  direction), at 60 concepts x 256 directions with 40-400 samples per concept (target >= 250x), for the paper's
  orientation and for ``orientation="both"``;
- against the floor, one torch sort of the same elements (the sum over concepts of N_c x D): the rows of each
  concept sorted (``torch.sort`` of each D x N_c matrix, the least sorting that sees every element in its row;
  target: within 1.5x), for reference one flat ``torch.sort`` of all the elements, and numpy's sort of each
  concept's rows (the sort the kernel itself runs on the CPU: float32 rows here, float64 keys in the kernel);
- both on one torch thread (repeatable ratios) and on torch's default threads (what a user gets); the sklearn
  loop is single-threaded either way;
- peak extra memory at paper scale for one model: 1,197 concepts x 768 directions, balanced sets whose positives
  follow a Zipf law over the concepts' frequency ranks (rank r has ``max(10, 31652 // r)`` positives, as many
  negatives: from 63,304 samples down to 20; 485k samples in all).

Values are checked against sklearn (ties included) before anything is timed.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from benchmarks._timing import report, side_by_side
from benchmarks.bench_metrics import peak_extra_memory_mb


def balanced_sets(sizes: np.ndarray, directions: int, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    rng = np.random.default_rng(seed)
    scores = [torch.from_numpy(rng.normal(size=(int(n), directions)).astype(np.float32)) for n in sizes]
    labels = [torch.from_numpy(rng.permutation(np.arange(n) < n // 2)) for n in sizes]
    return scores, labels


def bench_against_sklearn(concepts: int = 60, directions: int = 256) -> None:
    from sklearn.metrics import average_precision_score

    from robustsig.metrics.concepts import average_precision_matrix

    sizes = 2 * np.random.default_rng(0).integers(20, 201, size=concepts)         # 40-400 samples, balanced
    scores, labels = balanced_sets(sizes, directions, seed=1)
    arrays = [(y.numpy(), s.numpy()) for s, y in zip(scores, labels)]
    rows = [s.T.contiguous() for s in scores]                                       # the floor's rows, D x N_c
    numpy_rows = [r.numpy() for r in rows]
    flat = torch.cat([s.flatten() for s in scores])

    def sklearn_loop(sign: float = 1.0) -> np.ndarray:
        return np.array([[average_precision_score(y, sign * s[:, d]) for d in range(directions)] for y, s in arrays])

    reference = sklearn_loop()
    error = float(np.abs(average_precision_matrix(scores, labels).numpy() - reference).max())
    both_error = float(np.abs(average_precision_matrix(scores, labels, orientation="both").numpy()
                              - np.maximum(reference, sklearn_loop(-1.0))).max())
    assert max(error, both_error) <= 1e-12, (error, both_error)
    contenders = {
        "average_precision_matrix": lambda: average_precision_matrix(scores, labels),
        "orientation='both'": lambda: average_precision_matrix(scores, labels, orientation="both"),
        "sklearn loop": sklearn_loop,
        "torch.sort of each concept's rows": lambda: [torch.sort(r, dim=-1) for r in rows],
        "numpy sort of each concept's rows": lambda: [np.sort(r, axis=-1) for r in numpy_rows],
        "one flat torch.sort": lambda: torch.sort(flat),
    }
    medians = side_by_side(contenders, repeats=3, warmup=0)
    elements = int(sizes.sum()) * directions
    print(f"AP, balanced per-concept sets: {concepts} concepts x {directions} directions x {sizes.min()}-"
          f"{sizes.max()} samples ({elements:,} elements; max |diff| vs sklearn {error:.1e}, both orientations "
          f"{both_error:.1e})", flush=True)
    report("  vs the sklearn loop", medians, "average_precision_matrix", "sklearn loop", target=250)
    report("  orientation='both' vs the sklearn loop (one orientation)", medians, "orientation='both'",
           "sklearn loop", target=250)
    for floor in ("torch.sort of each concept's rows", "one flat torch.sort", "numpy sort of each concept's rows"):
        for name in ("average_precision_matrix", "orientation='both'"):
            ratio = medians[name] / medians[floor]
            verdict = "met" if ratio <= 1.5 else "NOT met"
            print(f"  {name} / {floor}: {medians[name]:.4g} s / {medians[floor]:.4g} s = {ratio:.2f}x "
                  f"[target <= 1.5x: {verdict}]", flush=True)


def _resident_mb() -> float:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:")) / 1024


def bench_paper_scale_memory(concepts: int = 1197, directions: int = 768, images: int = 63305) -> None:
    from robustsig.metrics.concepts import average_precision_matrix

    positives = np.maximum(10, (images // 2) // np.arange(1, concepts + 1))
    sizes = 2 * positives
    # every set is a view into one block of random scores, so the inputs cost one block, not 485k x 768 floats
    block = torch.randn(int(sizes.max()), directions, generator=torch.Generator().manual_seed(3))
    rng = np.random.default_rng(4)
    scores = [block[:n] for n in sizes.tolist()]
    labels = [torch.from_numpy(rng.permutation(np.arange(n) < n // 2)) for n in sizes.tolist()]
    elements = int(sizes.sum()) * directions
    before = _resident_mb()
    begin = time.perf_counter()
    extra = peak_extra_memory_mb(lambda: average_precision_matrix(scores, labels))
    seconds = time.perf_counter() - begin
    shown = "n/a" if extra is None else f"{max(extra, 0.0):.0f} MB above the {before:.0f} MB resident before the call"
    print(f"AP at paper scale (one model): {concepts} concepts x {directions} directions, {sizes.sum():,} samples "
          f"(Zipf positives, {sizes.min()}-{sizes.max()} per set), {elements:,} elements: {seconds:.1f} s, peak extra "
          f"resident memory {shown} (inputs {block.numel() * 4 / 2**20:.0f} MB as views of one block; the result "
          f"{concepts * directions * 8 / 2**20:.0f} MB)", flush=True)


def run() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see bench_metrics: one thread for every contender, repeatable ratios
    print(f"(torch on 1 thread for every contender; {threads} available)", flush=True)
    try:
        bench_paper_scale_memory()  # first: a fresh process, so freed memory of other benchmarks cannot hide a peak
        bench_against_sklearn()
    finally:
        torch.set_num_threads(threads)
    if threads > 1:  # what a user gets: torch's default threads (the sklearn loop is single-threaded either way)
        print(f"(torch on its default {threads} threads)", flush=True)
        bench_against_sklearn()


if __name__ == "__main__":
    run()
