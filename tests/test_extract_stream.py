"""Iterable datasets (WebDataset-like streams): positions in the stream, sample keys, workers, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import IterableDataset

import robustsig as rs
from robustsig.data.base import read_image
from robustsig.errors import CorruptImageError
from robustsig.extraction.store import MANIFEST

from extract_helpers import CrashAt, assert_same_store, image_folder, tiny_classifier


class FolderStream(IterableDataset):
    """The images of an :class:`ImageDataset` as a stream of ``(image, label)`` or ``(key, image, label)``, in
    file order (like a WebDataset over tar shards); no length."""

    def __init__(self, dataset, keys: bool = False) -> None:
        self.dataset, self.keys = dataset, keys
        self.transform = None

    def __iter__(self):
        for path, label in self.dataset.samples:
            try:
                image = read_image(path)
            except CorruptImageError:
                image = None
            yield (Path(path).stem, image, label) if self.keys else (image, label)

    def describe(self):
        return {**self.dataset.describe(), "kind": "stream", "keys": self.keys}


class SizedFolderStream(FolderStream):
    def __len__(self) -> int:
        return len(self.dataset)


def run(clf, ds, out, **options):
    options = {"batch_size": 3, "shard_size": 4, "num_workers": 0, "progress": False, "layers": ["conv1"]} | options
    return rs.extract(clf, ds, out, **options)


@pytest.fixture
def folder(tmp_path):
    return image_folder(tmp_path / "images", 15, corrupt=(4, 9))


def assert_same_rows(store, reference):
    for key in ("h", "logits", "labels", "ids", "conv1"):
        assert torch.equal(store.read(key), reference.read(key)), key


def test_sized_stream_equals_the_map_style_store(folder, tmp_path):
    clf = tiny_classifier()
    reference = run(clf, folder, tmp_path / "map")
    store = run(clf, SizedFolderStream(folder), tmp_path / "stream")
    assert_same_rows(store, reference)
    assert store.skipped == [{"id": 4}, {"id": 9}]
    assert store.sample_keys() is None
    workers = run(clf, SizedFolderStream(folder), tmp_path / "workers", num_workers=2)
    assert_same_rows(workers, reference)


def test_keyed_stream_of_unknown_length(folder, tmp_path):
    clf = tiny_classifier()
    reference = run(clf, folder, tmp_path / "map")
    store = run(clf, FolderStream(folder, keys=True), tmp_path / "stream")
    assert_same_rows(store, reference)
    assert store.manifest["num_samples"] == 15 and len(store.manifest["shards"]) == 4
    assert store.sample_keys() == [f"img{i:04d}" for i in range(15) if i not in (4, 9)]
    assert store.skipped == [{"id": 4, "key": "img0004"}, {"id": 9, "key": "img0009"}]


def test_stream_resumes_by_position(folder, tmp_path):
    clf = tiny_classifier()
    reference = run(clf, FolderStream(folder, keys=True), tmp_path / "reference")
    crash = CrashAt(4, RuntimeError("interrupted"))  # batches of 3 in shards of 4: pass 4 is in shard 1
    handle = clf.encoder.register_forward_pre_hook(crash)
    with pytest.raises(RuntimeError, match="interrupted"):
        run(clf, FolderStream(folder, keys=True), tmp_path / "store")
    handle.remove()
    counter = CrashAt(None, RuntimeError())
    clf.encoder.register_forward_pre_hook(counter)
    store = run(clf, FolderStream(folder, keys=True), tmp_path / "store")
    assert counter.calls == 5 and store.summary["reused_shards"] == 1  # shards 1, 2 (2 batches each), 3 (1)
    assert_same_store(store, reference)
    assert store.sample_keys() == reference.sample_keys()


@pytest.mark.parametrize("make", [lambda f: FolderStream(f, keys=True), lambda f: f])
def test_crash_between_last_shard_and_manifest(folder, tmp_path, make):
    clf = tiny_classifier()
    reference = run(clf, make(folder), tmp_path / "reference")
    run(clf, make(folder), tmp_path / "store")
    manifest = json.loads((tmp_path / "store" / MANIFEST).read_text())
    (tmp_path / "store" / MANIFEST).write_text(json.dumps(manifest | {"complete": False}))
    counter = CrashAt(None, RuntimeError())
    clf.encoder.register_forward_pre_hook(counter)
    store = run(clf, make(folder), tmp_path / "store")
    assert counter.calls == 0 and store.summary["written_shards"] == 0
    assert_same_store(store, reference)


def test_bad_streams_are_explained(folder, tmp_path, monkeypatch):
    class Triples(FolderStream):
        def __iter__(self):
            yield from ((1, 2, 3, 4),)

    with pytest.raises(rs.InputError, match=r"\(image, label\) or \(key, image, label\)"):
        run(tiny_classifier(), Triples(folder), tmp_path / "a")

    class RawImages(FolderStream):  # no transform slot: items are used as they come
        def __init__(self, dataset):
            self.dataset, self.keys = dataset, False

    with pytest.raises(rs.InputError, match="yields Image images, not tensors"):
        run(tiny_classifier(), RawImages(folder), tmp_path / "b")

    empty = FolderStream(image_folder(tmp_path / "none", 0))
    with pytest.raises(rs.DataError, match="yielded no samples"):
        run(tiny_classifier(), empty, tmp_path / "d")

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(rs.InputError, match="under torchrun a stream needs a length"):
        run(tiny_classifier(), FolderStream(folder), tmp_path / "c")


def test_stream_batches_are_cut_per_shard_and_map_batches_are_consecutive_chunks():
    from robustsig.extraction.loader import _PositionBatches, plan_batches

    assert plan_batches(0, 10, 4, 3) == [[0, 1, 2], [3], [4, 5, 6], [7], [8, 9]]
    assert plan_batches(8, 10, 4, 3) == [[8, 9]]  # a stream resumed at shard 2 cuts the same batches
    sampler = _PositionBatches([range(0, 4), [5, 8, 9, 11]], 3)
    assert list(sampler) == [[0, 1, 2], [3, 5, 8], [9, 11]] and len(sampler) == 3
