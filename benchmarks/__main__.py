"""`make bench`: every benchmark module's ``run()``, each printing side-by-side medians and ratios.

    python -m benchmarks                        # all
    python -m benchmarks metrics                # modules whose name contains 'metrics'
    python -m benchmarks scale --scale 0.25     # only the paper-scale study, at a quarter of the paper's size
    python -m benchmarks scale --scale 1 --keep # the paper's size, keeping the synthetic data in .bench/
    python -m benchmarks scale --scale 1 --significance  # ... with the permutation test inside the study

Options (for the modules that read them, from ``benchmarks.OPTIONS``): ``--scale FRACTION`` of the paper's sizes
(``bench_scale``; default 0.02), ``--keep`` the data written.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import benchmarks


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("selected", nargs="*", help="run only the modules whose name contains one of these")
    parser.add_argument("--scale", type=float, default=None, help="fraction of the paper's sizes (bench_scale)")
    parser.add_argument("--keep", action="store_true", help="keep the data a benchmark writes under .bench/")
    parser.add_argument("--significance", action="store_true",
                        help="bench_scale: the study runs the concept permutation test itself (default: timed apart)")
    args = parser.parse_args(argv)
    if args.scale is not None:
        if not 0 < args.scale <= 1:
            parser.error(f"--scale must be in (0, 1], got {args.scale}")
        benchmarks.OPTIONS["scale"] = args.scale
    benchmarks.OPTIONS["keep"] = args.keep
    benchmarks.OPTIONS["significance"] = args.significance
    names = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_"))
    if args.selected:
        names = [n for n in names if any(s in n for s in args.selected)]
    if not names:
        sys.exit(f"no benchmark module matches {args.selected}")
    for name in names:
        print(f"== {name}", flush=True)
        importlib.import_module(f"benchmarks.{name}").run()


if __name__ == "__main__":
    main(sys.argv[1:])
