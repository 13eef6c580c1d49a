"""Stores keyed by the contents of their images (issue 21): a copy, a touch or a moved folder reuses the store, a
changed byte is always caught, and a changed folder is updated row by row into what a fresh extraction of it
gives, bit for bit; a run killed during an update leaves the old store valid."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import robustsig as rs
import robustsig._contents as contents
from robustsig.extraction.store import ActivationStore

from extract_helpers import assert_same_store, image_folder, kill_9_when, mobilenet_classifier, tiny_classifier
from imagefiles import write_image

pytestmark = pytest.mark.usefixtures("one_thread")  # bit-for-bit equality with the one-thread subprocesses


@pytest.fixture(autouse=True)
def trust_fresh_stamps(monkeypatch):
    """Files written by a test are hashed within 2 s of their last change, which the stat cache does not trust
    (racily clean, see robustsig._contents); the tests that count re-reads trust them at once."""
    monkeypatch.setattr(contents, "RACY_NS", 0)


def run(ds, out, classifier=None, **options):
    options = {"batch_size": 3, "shard_size": 4, "num_workers": 0, "progress": False, "layers": ["conv1"]} | options
    return rs.extract(classifier or tiny_classifier(), ds, out, **options)


def folder(root: Path):
    """The folder dataset of ``root``, listed from disk now."""
    return rs.open_dataset("folder", root)


def write_ppm(path: Path, seed: int) -> Path:
    """A real uncompressed image (PPM): any byte of its pixels can change without changing its size."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(path)
    return path


def flip_last_byte_keeping_stat_times(path: Path) -> None:
    """Change the last pixel byte in place, then put the size and mtime back (``touch -r``)."""
    before = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([byte[0] ^ 0x5A]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)


def counting(classifier):
    """Forward passes of ``classifier`` (their batch sizes)."""
    calls = []
    classifier.encoder.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    return calls


# --- 1. keys by contents, with stat as a cache ----------------------------------------------------------------
def test_a_copy_reuses_the_store(tmp_path):
    image_folder(tmp_path / "images", 6)
    first = run(folder(tmp_path / "images"), tmp_path / "store")
    subprocess.run(["cp", "-a", str(tmp_path / "images"), str(tmp_path / "copy")], check=True)
    clf = tiny_classifier()
    calls = counting(clf)
    again = run(folder(tmp_path / "copy"), tmp_path / "store", clf)
    assert calls == [] and again.check["status"] == "reused"
    assert again.check["files"]["hashed"] == 6  # each file of the copy read once...
    assert_same_store(again, first)
    third = run(folder(tmp_path / "copy"), tmp_path / "store")
    assert third.check["files"]["hashed"] == 0  # ...and then vouched for by its stat data


def test_touch_and_a_moved_folder_reuse_the_store(tmp_path):
    image_folder(tmp_path / "images", 6)
    run(folder(tmp_path / "images"), tmp_path / "store")
    for path in (tmp_path / "images").rglob("*.*"):
        os.utime(path)  # touch: new mtime (and ctime), same bytes
    clf = tiny_classifier()
    calls = counting(clf)
    touched = run(folder(tmp_path / "images"), tmp_path / "store", clf)
    assert calls == [] and touched.check["status"] == "reused"
    assert touched.check["files"]["stat_only"] == 6 and touched.check["files"]["hashed"] == 6
    (tmp_path / "images").rename(tmp_path / "renamed")  # the same folder under another name: its cache follows it
    moved = run(folder(tmp_path / "renamed"), tmp_path / "store", clf)
    assert calls == [] and moved.check["status"] == "reused" and moved.check["files"]["hashed"] == 0


@pytest.mark.parametrize("how", ["in place", "through a hard link"])
def test_a_changed_byte_with_size_and_mtime_kept_is_caught_and_only_its_row_recomputed(tmp_path, how):
    root = tmp_path / "images"
    for i in range(7):
        write_ppm(root / f"c{i % 2}" / f"img{i}.ppm", seed=i)
    run(folder(root), tmp_path / "store")
    before = ActivationStore(tmp_path / "store").read("h").clone()
    target = root / "c0" / "img2.ppm"
    if how == "through a hard link":
        os.link(target, tmp_path / "link.ppm")
        target = tmp_path / "link.ppm"
    flip_last_byte_keeping_stat_times(target)
    clf = tiny_classifier()
    calls = counting(clf)
    store = run(folder(root), tmp_path / "store", clf)
    assert store.check["status"] == "update"
    assert store.check["changes"]["changed"] == 1 and store.check["changes"]["examples"]["changed"] == ["c0/img2.ppm"]
    assert calls == [3] and store.summary["computed"] == 1 and clf.preprocess.calls == 1  # one image, one padded pass
    position = [os.path.relpath(p, root) for p, _ in folder(root).samples].index("c0/img2.ppm")
    after = store.read("h")
    assert not torch.equal(after[position], before[position])
    others = [i for i in range(7) if i != position]
    assert torch.equal(after[others], before[others])
    assert_same_store(store, run(folder(root), tmp_path / "fresh"))


def test_the_stat_cache_is_only_a_cache(tmp_path, monkeypatch, caplog):
    """What the cache cannot see (bytes changed with every stat field as it was: a lying or stale cache, a clock
    turned back) is caught by a forced re-hash; a garbled cache file is ignored and rewritten; a file changed
    within the clock tick it was hashed in is not trusted (racily clean)."""
    root = tmp_path / "images"
    image_folder(root, 4)
    paths = [str(p) for p in sorted(root.rglob("*.*"))]
    digests, report = contents.digest_files(paths, root)
    truth = [contents.digest_bytes(Path(p).read_bytes()) for p in paths]
    assert digests == truth and report.hashed == 4
    cache = contents.cache_file(root)
    # a cache entry that lies (as if a file had been rewritten with every stat field put back)
    header, _, body = cache.read_bytes().partition(b"\n")
    lying = body.replace(truth[0].encode(), b"0" * 32)
    import json

    meta = json.loads(header) | {"checksum": contents.digest_bytes(lying)}
    cache.write_bytes(json.dumps(meta).encode() + b"\n" + lying)
    assert contents.digest_files(paths, root)[0][0] == "0" * 32  # the limit of any stat cache
    with contents.rehashing():
        forced, report = contents.digest_files(paths, root)
    assert forced == truth and report.hashed == 4 and report.changed_count == 1
    assert contents.digest_files(paths, root)[0] == truth  # the re-hash rewrote the cache
    monkeypatch.setenv("ROBUSTSIG_REHASH", "1")
    assert contents.digest_files(paths, root)[1].hashed == 4
    monkeypatch.delenv("ROBUSTSIG_REHASH")
    # a garbled cache file: ignored (every file hashed again), then rewritten
    cache.write_bytes(cache.read_bytes()[:-40] + b"garbage")
    with caplog.at_level("WARNING", logger="robustsig.contents"):
        again, report = contents.digest_files(paths, root)
    assert again == truth and report.hashed == 4 and "garbled" in caplog.text
    assert contents.digest_files(paths, root)[1].hashed == 0
    # racily clean: with the real 2 s margin, files changed just now are read again on every run until they age
    monkeypatch.setattr(contents, "RACY_NS", 2_000_000_000)
    os.utime(paths[1])
    assert contents.digest_files(paths, root)[1].hashed >= 1
    assert contents.digest_files(paths, root)[1].hashed >= 1


def test_rehash_option_of_extract_reads_every_image(tmp_path):
    image_folder(tmp_path / "images", 5)
    run(folder(tmp_path / "images"), tmp_path / "store")
    assert run(folder(tmp_path / "images"), tmp_path / "store").check["files"]["hashed"] == 0
    forced = run(folder(tmp_path / "images"), tmp_path / "store", rehash=True)
    assert forced.check["status"] == "reused" and forced.check["files"]["hashed"] == 5


def test_local_weights_are_keyed_by_their_bytes_not_their_path(tmp_path):
    from robustsig.extraction.key import portable_spec

    weights = tmp_path / "a" / "ft.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"weights-v1")
    spec = f"timm:resnet18@{weights}"
    shutil.copytree(tmp_path / "a", tmp_path / "b", copy_function=shutil.copy2)
    assert portable_spec(spec) == portable_spec(f"timm:resnet18@{tmp_path / 'b' / 'ft.safetensors'}")
    assert str(tmp_path) not in portable_spec(spec)
    before = portable_spec(spec)
    weights.write_bytes(b"weights-v2")
    assert portable_spec(spec) != before
    assert portable_spec("openclip:ViT-B-32@openai") == "openclip:ViT-B-32@openai"


# --- 2. incremental re-extraction -----------------------------------------------------------------------------
def test_a_row_does_not_depend_on_the_batch_it_ran_in(tmp_path):
    """On CPU a model's output for an image changes in the last bits with the batch size (below), so every
    forward pass runs a full batch: one image extracted alone equals its row in a larger extraction."""
    model = mobilenet_classifier().eval()
    x = torch.rand(8, 3, 32, 32)
    with torch.inference_mode():
        in_eight, alone = model.encode(x)[0], model.encode(x[:1])[0]
        others = torch.cat([x[:1], torch.rand(7, 3, 32, 32)])
        assert torch.equal(model.encode(others)[0], in_eight)  # other images of the batch: no effect
        assert torch.equal(model.encode(x[[3, 1, 2, 0, 4, 5, 6, 7]])[3], in_eight)  # its place: no effect
    assert not torch.equal(in_eight, alone)  # the batch size: an effect
    write_image(tmp_path / "one" / "c" / "3.png", seed=3)
    for i in range(7):  # the same image at position 3 of 7
        write_image(tmp_path / "many" / "c" / f"{i}.png", seed=3 if i == 3 else 10 + i)
    one = run(folder(tmp_path / "one"), tmp_path / "s1", mobilenet_classifier(), batch_size=8, layers=None)
    many = run(folder(tmp_path / "many"), tmp_path / "s7", mobilenet_classifier(), batch_size=8, layers=None)
    assert torch.equal(one.read("h")[0], many.read("h")[3]) and torch.equal(one.read("logits")[0],
                                                                             many.read("logits")[3])


def test_a_changed_folder_is_updated_row_by_row_into_a_fresh_extraction(tmp_path):
    root = tmp_path / "images"
    image_folder(root, 20, corrupt=(9,))
    old = run(folder(root), tmp_path / "store")
    old_rows = {name: old.read("h")[row].clone() for row, name in
                enumerate(os.path.relpath(folder(root).samples[i][0], root) for i in old.read("ids").tolist())}
    write_image(root / "class0" / "img0000b.png", seed=100)  # added early: every later position shifts
    write_image(root / "class4" / "zzz.png", seed=101)  # added last
    (root / "class1" / "img0001.png").unlink()  # removed
    write_image(root / "class2" / "img0002.png", seed=102)  # another picture under the same name
    (root / "class3" / "img0003.jpg").rename(root / "class3" / "moved.jpg")  # moved: same bytes
    (root / "class4" / "img0004.png").rename(root / "class0" / "img0004.png")  # relabelled: same bytes
    clf = tiny_classifier()
    store = run(folder(root), tmp_path / "store", clf)
    changes = store.check["changes"]
    assert {k: v for k, v in changes.items() if k != "examples"} == {
        "added": 2, "removed": 1, "changed": 1, "relabelled": 0, "moved": 2, "unchanged": 16}
    assert changes["examples"]["changed"] == ["class2/img0002.png"]
    assert clf.preprocess.calls == 3 and store.summary["computed"] == 3  # the 2 added and the 1 changed image
    fresh = run(folder(root), tmp_path / "fresh")
    assert_same_store(store, fresh)
    assert store.summary["copied_rows"] == 17  # 21 images, 1 undecodable (read again), 3 computed
    kept = os.path.relpath(folder(root).samples[5][0], root)
    assert torch.equal(store.read("h")[store.read("ids").tolist().index(5)], old_rows[kept])
    assert sorted(p.name for p in (tmp_path / "store").glob("shard-*")) == [s["file"] for s in
                                                                          store.manifest["shards"]]


def test_a_grown_folder_computes_only_the_new_rows(tmp_path):
    root = tmp_path / "images"
    image_folder(root, 40)
    run(folder(root), tmp_path / "store", shard_size=8)
    for k in range(4):  # 10 %: new files at the end of the listing
        write_image(root / "class4" / f"new{k}.png", seed=200 + k)
    clf = tiny_classifier()
    calls = counting(clf)
    store = run(folder(root), tmp_path / "store", clf, shard_size=8)
    assert store.summary["computed"] == 4 and calls == [3, 3]  # 4 images in 2 (padded) passes
    assert store.summary["reused_shards"] == 5  # shards 0-4 hold the same files: kept as they are
    assert_same_store(store, run(folder(root), tmp_path / "fresh", shard_size=8))
    # an update killed between its manifest and the deletion of the old shards leaves strays: the next run, which
    # finds the store finished, deletes them
    stray = tmp_path / "store" / "shard-000005-0123456789ab.safetensors"
    shutil.copy(tmp_path / "store" / store.manifest["shards"][0]["file"], stray)
    assert run(folder(root), tmp_path / "store", shard_size=8).check["status"] == "reused" and not stray.exists()


def test_a_store_of_other_settings_and_other_files_names_both(tmp_path):
    root = tmp_path / "images"
    image_folder(root, 6)
    run(folder(root), tmp_path / "store")
    write_image(root / "class0" / "extra.png", seed=7)
    (root / "class1" / "img0001.png").unlink()
    with pytest.raises(rs.InputError, match=r"layers.*files: 1 file\(s\) added \(class0/extra.png\); 1 file\(s\) "
                                            r"removed \(class1/img0001.png\)"):
        run(folder(root), tmp_path / "store", layers=["conv2"])


def test_kill_9_during_an_update_leaves_the_old_store_valid(tmp_path):
    root = tmp_path / "images"
    image_folder(root, 20)
    old = run(folder(root), tmp_path / "store")
    old_files = sorted(p.name for p in (tmp_path / "store").glob("shard-*"))
    write_image(root / "class0" / "img0000b.png", seed=300)  # shard 0 computes it, shards 1-5 are shifted copies
    out = tmp_path / "store"
    # the child hangs on its first image; the 5 shards it only copies are written before
    kill_9_when(root, out, lambda: len(list(out.glob("shard-*"))) >= len(old_files) + 5, 0, "--folder")
    assert_same_store(ActivationStore(out), old)  # the old store is untouched and still reads as it was
    written = {p.name: p.stat().st_ino for p in out.glob("shard-*") if p.name not in old_files}
    clf = tiny_classifier()
    store = run(folder(root), out, clf)
    assert clf.preprocess.calls == 1 and store.summary["reused_shards"] == 5  # the update takes up where it stopped
    assert {name: (out / name).stat().st_ino for name in written} == written
    assert_same_store(store, run(folder(root), tmp_path / "fresh"))
    assert sorted(p.name for p in out.glob("shard-*")) == sorted(s["file"] for s in store.manifest["shards"])


@pytest.mark.parametrize("name", ["robustsig._contents", "robustsig.extraction.key",
                                  "robustsig.extraction.update", "robustsig.extraction.extractor",
                                  "robustsig.extraction.store"])
def test_docstring_examples_run(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
