"""`make bench`: every benchmark module's ``run()``, each printing side-by-side medians and ratios.

    python -m benchmarks            # all
    python -m benchmarks metrics    # modules whose name contains 'metrics'
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import benchmarks


def main(selected: list[str]) -> None:
    names = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_"))
    if selected:
        names = [n for n in names if any(s in n for s in selected)]
    if not names:
        sys.exit(f"no benchmark module matches {selected}")
    for name in names:
        print(f"== {name}", flush=True)
        importlib.import_module(f"benchmarks.{name}").run()


if __name__ == "__main__":
    main(sys.argv[1:])
