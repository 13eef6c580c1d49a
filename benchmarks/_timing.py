"""Side-by-side timing for `make bench`.

This machine is shared and noisy (10-20 % swings from outside load), so a benchmark never compares against a
stored time: both contenders run in the same process, interleaved A B A B ..., and we report the median of
each and the ratio of medians.
"""

from __future__ import annotations

import gc
import statistics
import time
import tracemalloc
from collections.abc import Callable


def side_by_side(contenders: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median wall time (s) of each callable, run interleaved ``repeats`` times after ``warmup`` rounds."""
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            gc.collect()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_python_memory(fn: Callable[[], object]) -> int:
    """Peak bytes allocated through Python's allocators (numpy included, torch CPU tensors not) during ``fn``."""
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def report(title: str, medians: dict[str, float], fast: str, slow: str, target: float | None = None,
           unit: str = "s") -> float:
    """Print both medians and ``slow/fast`` (the speed-up), with the target when there is one; return the ratio."""
    ratio = medians[slow] / medians[fast]
    verdict = "" if target is None else ("  [target >= %gx: %s]" % (target, "met" if ratio >= target else "NOT met"))
    print(f"{title}: {fast} {medians[fast]:.4g} {unit} (median), {slow} {medians[slow]:.4g} {unit}; "
          f"ratio {ratio:.1f}x{verdict}", flush=True)
    return ratio
