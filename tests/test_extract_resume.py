"""Interrupted extractions resume from their complete shards and end equal to an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import robustsig as rs
from robustsig._atomic import temporary_name
from robustsig.extraction.store import ActivationStore

from extract_helpers import CrashAt, assert_same_store, image_folder, kill_9_when, reopen_folder, tiny_classifier


pytestmark = pytest.mark.usefixtures("one_thread")  # bit-for-bit equality with the one-thread subprocesses


def run(clf, ds, out, **options):
    options = {"batch_size": 3, "shard_size": 4, "num_workers": 0, "progress": False, "layers": ["conv1"]} | options
    return rs.extract(clf, ds, out, **options)


def shard_files(folder: Path) -> list[str]:
    """The shard files of a store folder, as ``shard-NNNNNN`` (their tags left out)."""
    return sorted(p.name[:len("shard-000000")] for p in folder.glob("shard-*.safetensors"))


@pytest.mark.parametrize("error", [RuntimeError("batch failed"), KeyboardInterrupt()])
def test_resume_after_a_crash_in_batch_k(tmp_path, error):
    ds = image_folder(tmp_path / "images", 18, corrupt=(6,))
    reference = run(tiny_classifier(), ds, tmp_path / "reference")
    clf = tiny_classifier()
    crash = CrashAt(4, error)  # batches of 3 in shards of 4: passes 1-3 finish positions 0-8, pass 4 fails
    handle = clf.encoder.register_forward_pre_hook(crash)
    with pytest.raises(type(error)):
        run(clf, ds, tmp_path / "store")
    handle.remove()
    assert shard_files(tmp_path / "store") == ["shard-000000", "shard-000001"]
    with pytest.raises(rs.DataError, match="unfinished"):
        ActivationStore(tmp_path / "store")
    assert clf.training, "the classifier's mode is restored after a failure"

    counter = CrashAt(None, error)
    clf.encoder.register_forward_pre_hook(counter)
    store = run(clf, ds, tmp_path / "store")
    assert counter.calls == 4  # positions 8-17 of shards 2, 3 and 4 only: 10 positions in batches of 3
    assert store.summary["reused_shards"] == 2 and store.summary["written_shards"] == 3
    assert_same_store(store, reference)


def test_resume_after_kill_9(tmp_path):
    image_folder(tmp_path / "images", 20, corrupt=(9,))
    ds = reopen_folder(tmp_path / "images")
    reference = run(tiny_classifier(), ds, tmp_path / "reference")
    # the child hangs on its 10th decoded image (position 10; position 9 does not decode) until it is killed:
    # batches [0-2], [3-5], [6-8] are done, so shards 0 and 1 (positions 0-7) are written
    out = tmp_path / "store"
    kill_9_when(tmp_path / "images", out, lambda: out.exists() and "shard-000001" in shard_files(out), 9)
    kept = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("shard-*")}
    assert shard_files(out) == ["shard-000000", "shard-000001"]
    # what a crash can leave: a temp file of a shard being written, and (disk trouble) a garbled shard under the
    # very name this run wants
    fourth = reference.manifest["shards"][4]["file"]
    (out / temporary_name(fourth, 12345)).write_bytes(b"partial")
    (out / fourth).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")

    store = run(tiny_classifier(), ds, out)
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
