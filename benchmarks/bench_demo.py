"""`robustsig demo` from an empty folder, then again: wall and CPU seconds of every phase and of every kind of
study step.

    python -m benchmarks demo                   # the default demo (the target: <= 4 min from empty, <= 10 s again)
    python -m benchmarks demo --scale 0.1       # any --scale runs the tiny demo instead (the tests' size)
    python -m benchmarks demo --keep            # keep the demo folder in .bench/demo (its report, results)

The demo runs in a fresh folder in a subprocess (``python -m robustsig demo --json``), so the first run pays every
import and build as a user's does, and the second run is the user's rerun. Inside that subprocess each study step's
CPU seconds (this process, all threads) are summed per step kind next to its wall seconds.

On these shared machines a wall time says how loaded the machine was as much as what the demo costs. The CPU
seconds are the work: on a quiet machine with 2 cores the wall time lies between CPU / 2 (every step spread over
both cores, as torch's convolutions are) and CPU (every step on one core); the report prints both bounds. OpenMP
threads are told to sleep rather than spin while they wait (``OMP_WAIT_POLICY=PASSIVE``), so that waiting on a
loaded machine is not counted as work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchmarks

_CHILD = r"""
import json, sys, time
from collections import defaultdict
import robustsig.study.tasks as tasks_module

cpu = defaultdict(float)
wall = defaultdict(float)


def timed(execute):
    def run(self, ctx):
        begin, clock = time.process_time(), time.perf_counter()
        try:
            return execute(self, ctx)
        finally:
            cpu[self.tag] += time.process_time() - begin
            wall[self.tag] += time.perf_counter() - clock
    return run


def wrap(cls):
    if "execute" in vars(cls):
        cls.execute = timed(vars(cls)["execute"])
    for sub in cls.__subclasses__():
        wrap(sub)


from robustsig.demo.run import run_demo
import robustsig.runner, robustsig.study.registry  # every task class exists before it is wrapped
wrap(tasks_module.Task)
run = run_demo(sys.argv[1], size=sys.argv[2], progress=False)
print(json.dumps({"ok": run.ok, "timings": run.timings, "steps_cpu": cpu, "steps_wall": wall,
                  "counts": run.summary.to_dict()["counts"]}))
"""


def _run(out: Path, size: str) -> tuple[float, dict]:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    begin = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _CHILD, str(out), size], capture_output=True, text=True, env=env,
                          check=False)
    seconds = time.perf_counter() - begin
    if done.returncode != 0:
        raise SystemExit(f"the demo failed:\n{done.stderr[-4000:]}")
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])


def _report(title: str, seconds: float, record: dict) -> None:
    t = record["timings"]
    print(f"-- {title}: {seconds:.1f} s wall for the whole process (imports included); ok={record['ok']}; "
          f"steps {record['counts']}")
    print(f"   {'phase':<22}{'wall s':>9}{'cpu s':>9}")
    for phase in ("data", "finetune", "wiseft", "study", "total"):
        print(f"   {phase:<22}{t[phase]:>9.1f}{t['cpu_' + phase]:>9.1f}")
    print(f"   {'study step kind':<22}{'wall s':>9}{'cpu s':>9}")
    for tag, cpu in sorted(record["steps_cpu"].items(), key=lambda item: -item[1]):
        print(f"   {tag:<22}{record['steps_wall'][tag]:>9.1f}{cpu:>9.1f}")
    work = t["cpu_total"]
    print(f"   on a quiet 2-core machine: between {work / 2:.0f} s (all on both cores) and {work:.0f} s (all on one "
          f"core), plus the imports ({seconds - t['total']:.1f} s wall here)")


def run() -> None:
    size = "tiny" if benchmarks.OPTIONS.get("scale") else "default"
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as folder:
        out = Path(".bench") / "demo" if benchmarks.OPTIONS.get("keep") else Path(folder) / "demo"
        if out.exists():
            raise SystemExit(f"{out} exists: remove it, the benchmark starts from an empty folder")
        first, record = _run(out, size)
        _report(f"{size} demo from an empty folder", first, record)
        again, record = _run(out, size)
        _report(f"{size} demo again (everything reused)", again, record)
