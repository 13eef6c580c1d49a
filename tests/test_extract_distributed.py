"""torchrun scale-out: 2 CPU processes (gloo) write disjoint shards; the merged store equals a single-process one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import robustsig as rs
from robustsig.distributed import World
from robustsig.extraction.ranks import rank_shards

from extract_helpers import CrashAt, assert_same_store, image_folder, reopen_folder, tiny_classifier

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


def torchrun(images: Path, out: Path, nproc: int = 2) -> str:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)]), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(TESTS / "extract_helpers.py"), str(images), str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def single_process(ds, out, clf=None):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # torchrun workers run one thread each: equal reductions, equal bits
    try:
        return rs.extract(clf or tiny_classifier(), ds, out, layers=["conv1"], batch_size=3, shard_size=4,
                          num_workers=0, progress=False)
    finally:
        torch.set_num_threads(threads)


def test_rank_shards_are_contiguous_and_disjoint():
    for shards in (0, 1, 5, 8, 13):
        for size in (1, 2, 3, 8):
            parts = [rank_shards(shards, World(rank, size)) for rank in range(size)]
            assert [k for part in parts for k in part] == list(range(shards))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.torchrun
def test_two_process_torchrun_equals_single_process(tmp_path):
    image_folder(tmp_path / "images", 18, corrupt=(3, 13))
    ds = reopen_folder(tmp_path / "images")
    reference = single_process(ds, tmp_path / "reference")

    output = torchrun(tmp_path / "images", tmp_path / "store")
    assert "rank 0: 16 rows" in output and "rank 1: 16 rows" in output
    store = rs.ActivationStore(tmp_path / "store")
    assert_same_store(store, reference)
    ranks = store.summary["ranks"]
    assert [(r["rank"], r["written_shards"]) for r in ranks] == [(0, 2), (1, 3)]  # 5 shards: [0, 2) and [2, 5)
    assert store.summary["world_size"] == 2 and store.skipped == reference.skipped

    # a store started by one process (crashed after its first shard) is finished by two
    clf = tiny_classifier()
    clf.encoder.register_forward_pre_hook(CrashAt(3, RuntimeError("stop")))
    with pytest.raises(RuntimeError):
        single_process(ds, tmp_path / "mixed", clf)
    torchrun(tmp_path / "images", tmp_path / "mixed")
    mixed = rs.ActivationStore(tmp_path / "mixed")
    assert [(r["reused_shards"], r["written_shards"]) for r in mixed.summary["ranks"]] == [(1, 1), (0, 3)]
    assert_same_store(mixed, reference)
