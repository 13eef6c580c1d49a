"""Interrupted extractions resume from their complete shards and end equal to an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import robustsig as rs
from robustsig._atomic import temporary_name
from robustsig.extraction.store import ActivationStore

from extract_helpers import CrashAt, assert_same_store, image_folder, reopen_folder, tiny_classifier

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


pytestmark = pytest.mark.usefixtures("one_thread")  # bit-for-bit equality with the one-thread subprocesses


def run(clf, ds, out, **options):
    options = {"batch_size": 3, "shard_size": 4, "num_workers": 0, "progress": False, "layers": ["conv1"]} | options
    return rs.extract(clf, ds, out, **options)


@pytest.mark.parametrize("error", [RuntimeError("batch failed"), KeyboardInterrupt()])
def test_resume_after_a_crash_in_batch_k(tmp_path, error):
    ds = image_folder(tmp_path / "images", 18, corrupt=(6,))
    reference = run(tiny_classifier(), ds, tmp_path / "reference")
    clf = tiny_classifier()
    crash = CrashAt(6, error)  # batches of 3 in shards of 4: 2 per shard; pass 6 is shard 2's second batch
    handle = clf.encoder.register_forward_pre_hook(crash)
    with pytest.raises(type(error)):
        run(clf, ds, tmp_path / "store")
    handle.remove()
    written = sorted(p.name for p in (tmp_path / "store").glob("shard-*"))
    assert written == ["shard-000000.safetensors", "shard-000001.safetensors"]
    with pytest.raises(rs.DataError, match="unfinished"):
        ActivationStore(tmp_path / "store")
    assert clf.training, "the classifier's mode is restored after a failure"

    counter = CrashAt(None, error)
    clf.encoder.register_forward_pre_hook(counter)
    store = run(clf, ds, tmp_path / "store")
    assert counter.calls == 5  # shards 2 and 3 (2 batches each) and 4 (positions 16, 17: 1 batch) only
    assert store.summary["reused_shards"] == 2 and store.summary["written_shards"] == 3
    assert_same_store(store, reference)


def test_resume_after_kill_9(tmp_path):
    image_folder(tmp_path / "images", 20, corrupt=(9,))
    # the child hangs on its 9th image (position 8, the first of shard 2) until it is killed
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)]), "ROBUSTSIG_TEST_STALL_AFTER": "8",
                        "OMP_NUM_THREADS": "1"}
    out = tmp_path / "store"
    child = subprocess.Popen([sys.executable, str(TESTS / "extract_helpers.py"), str(tmp_path / "images"), str(out)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not (out / "shard-000001.safetensors").exists():
        assert child.poll() is None, child.stdout.read().decode()
        assert time.monotonic() < deadline, "the child wrote no shard in time"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    kept = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("shard-*")}
    assert sorted(kept) == ["shard-000000.safetensors", "shard-000001.safetensors"]
    # what a crash can leave: a temp file of a shard being written, and (disk trouble) a garbled shard
    (out / temporary_name("shard-000004.safetensors", 12345)).write_bytes(b"partial")
    (out / "shard-000004.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")

    ds = reopen_folder(tmp_path / "images")
    store = run(tiny_classifier(), ds, out)
    reference = run(tiny_classifier(), ds, tmp_path / "reference")
    assert_same_store(store, reference)
    for name, stamp in kept.items():  # the complete shards were kept, not rewritten
        assert ((out / name).stat().st_ino, (out / name).stat().st_mtime_ns) == stamp
    assert not list(out.glob(".tmp-*"))
    assert store.summary["reused_shards"] == 2 and store.summary["written_shards"] == 3


def test_resume_keeps_its_shard_size_and_restores_a_missing_head(tmp_path):
    ds = image_folder(tmp_path / "images", 10)
    reference = run(tiny_classifier(), ds, tmp_path / "reference")
    clf = tiny_classifier()
    handle = clf.encoder.register_forward_pre_hook(CrashAt(3, RuntimeError("stop")))
    with pytest.raises(RuntimeError):
        run(clf, ds, tmp_path / "store")
    handle.remove()
    (tmp_path / "store" / "head.safetensors").unlink()  # as if killed between the manifest and the head
    with pytest.warns(UserWarning, match="with its shard_size 4"):
        store = run(clf, ds, tmp_path / "store", shard_size=6)
    assert store.manifest["shard_size"] == 4
    assert_same_store(store, reference)
    assert torch.equal(store.read("W"), reference.read("W"))
