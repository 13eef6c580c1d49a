"""Generic formats (class folders, CSV, WebDataset shards written with tarfile), the registry, and corrupt images
through a real DataLoader."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

import robustsig as rs
from robustsig.data.base import image_loader
from robustsig.data.classes import subset_indices
from robustsig.data.registry import KINDS

from imagefiles import write_image, write_truncated_jpeg


def test_folder_classes_and_flat(tmp_path):
    for name, seed in [("dog/a.jpg", 1), ("cat/x/b.png", 2), ("cat/c.jpg", 3), ("dog/.hidden.jpg", 4)]:
        write_image(tmp_path / "set" / name, seed=seed)
    (tmp_path / "set" / "dog" / "notes.txt").write_text("not an image")
    ds = rs.open_dataset("folder", tmp_path / "set")
    assert ds.classnames == ["cat", "dog"]
    assert [(p.split("set/")[1], label) for p, label in ds.samples] == [("cat/c.jpg", 0), ("cat/x/b.png", 0),
                                                                        ("dog/a.jpg", 1)]
    flat = rs.open_dataset("folder", tmp_path / "set" / "cat" / "x")
    assert flat.samples[0][1] == -1 and flat.classnames == []
    write_image(tmp_path / "set" / "loose.jpg")
    with pytest.raises(rs.DataError, match="both loose images"):
        rs.open_dataset("folder", tmp_path / "set")
    (tmp_path / "empty").mkdir()
    with pytest.raises(rs.DataError, match="folder: .*empty: no images; expected class sub-folders"):
        rs.open_dataset("folder", tmp_path / "empty")


def test_csv_labels_names_and_concepts(tmp_path):
    for k in range(3):
        write_image(tmp_path / "img" / f"{k}.jpg", seed=k)
    (tmp_path / "numbers.csv").write_text("path,label\nimg/0.jpg,2\nimg/1.jpg,0\nimg/2.jpg,\n")
    ds = rs.open_dataset("csv", tmp_path / "numbers.csv")
    assert ds.targets == [2, 0, -1] and ds.classnames == ["0", "1", "2"]
    assert ds.samples[0][0] == str(tmp_path / "img" / "0.jpg")
    (tmp_path / "names.csv").write_text("path,label,note\nimg/0.jpg,dog,x\nimg/1.jpg,cat,y\nimg/2.jpg,dog,z\n")
    assert rs.open_dataset("csv", tmp_path / "names.csv").targets == [1, 0, 1]
    (tmp_path / "concepts.csv").write_text("path,concepts\nimg/0.jpg,sky;tree\nimg/1.jpg,tree\nimg/2.jpg,\n")
    concepts = rs.open_dataset("csv", tmp_path / "concepts.csv")
    assert concepts.concepts == ["sky", "tree"]
    assert concepts.concept_matrix.tolist() == [[True, True], [False, True], [False, False]]
    assert concepts.balanced_sets(min_positives=1)[0].name == "sky"


def test_csv_errors(tmp_path):
    (tmp_path / "bad.csv").write_text("file,class\na.jpg,1\n")
    with pytest.raises(rs.DataError, match="header file,class; expected a CSV file with a header 'path,label'"):
        rs.open_dataset("csv", tmp_path / "bad.csv")
    (tmp_path / "missing.csv").write_text("path,label\nnope/a.jpg,1\n")
    with pytest.raises(rs.DataError, match="1 listed images do not exist: .*nope/a.jpg"):
        rs.open_dataset("csv", tmp_path / "missing.csv")
    with pytest.raises(rs.DataError, match="no such file"):
        rs.open_dataset("csv", tmp_path / "absent.csv")


def encoded(seed, fmt):
    buffer = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def write_shard(path, samples):
    """``samples``: (key, {extension: bytes}) written in order, as webdataset.ShardWriter does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def clip_benchmark_shards(root, per_shard, shards, label_of=lambda n: n % 3, nshards=True):
    n = 0
    for s in range(shards):
        samples = []
        for _ in range(per_shard):
            fmt = ["WEBP", "PNG", "JPEG"][n % 3]
            ext = {"WEBP": "webp", "PNG": "png", "JPEG": "jpg"}[fmt]
            samples.append((f"s{n:07d}", {ext: encoded(n, fmt), "cls": str(label_of(n)).encode()}))
            n += 1
        write_shard(root / "test" / f"{s}.tar", samples)
    if nshards:
        (root / "test" / "nshards.txt").write_text(f"{shards}\n")
    return root


@pytest.mark.parametrize("nshards", [True, False])
def test_webdataset_streams_in_shard_number_order(tmp_path, nshards):
    root = clip_benchmark_shards(tmp_path / "wds", per_shard=2, shards=12, nshards=nshards)
    (root / "classnames.txt").write_text("a\nb\nc\n")
    ds = rs.open_dataset("webdataset", root)
    assert ds.classnames == ["a", "b", "c"] and len(ds) == 24
    keyed = list(ds.keyed())
    assert [key for key, _, _ in keyed] == [f"s{n:07d}" for n in range(24)]  # 2.tar before 10.tar
    assert [label for _, _, label in keyed] == [n % 3 for n in range(24)]
    assert keyed[0][1].size == (8, 6)
    assert [label for _, label in ds] == [n % 3 for n in range(24)]
    assert rs.open_dataset("webdataset", root / "test" / "3.tar").classnames == []
    parts = [[k for k, _, _ in ds.shard(rank, 5).keyed()] for rank in range(5)]
    assert sorted(sum(parts, [])) == [k for k, _, _ in keyed] and parts[1][:2] == ["s0000002", "s0000003"]


def test_webdataset_through_a_dataloader_with_corrupt_members(tmp_path):
    root = clip_benchmark_shards(tmp_path / "wds", per_shard=4, shards=3)
    write_shard(root / "test" / "3.tar", [("s0000012", {"jpg": encoded(1, "JPEG")[:40], "cls": b"1"}),
                                          ("s0000013", {"cls": b"2"}),  # no image at all
                                          ("s0000014", {"png": encoded(2, "PNG"), "cls": b"0"})])
    (root / "test" / "nshards.txt").write_text("4")
    ds = rs.open_dataset("webdataset", root, transform=pil_to_tensor)
    ids, labels, skipped = [], [], []
    for batch_ids, images, batch_labels, batch_skipped in image_loader(ds, batch_size=3, num_workers=2):
        ids += batch_ids
        labels += batch_labels.tolist()
        skipped += batch_skipped
        assert images.shape[1:] == (3, 6, 8)
    assert sorted(skipped) == ["s0000012", "s0000013"]
    assert sorted(ids) == [f"s{n:07d}" for n in range(12)] + ["s0000014"]
    with pytest.raises(rs.CorruptImageError, match="3.tar:s0000012.jpg"):
        list(rs.open_dataset("webdataset", root, strict=True))


def test_webdataset_families(tmp_path):
    root = clip_benchmark_shards(tmp_path / "wds_r", per_shard=3, shards=1, label_of=lambda n: [0, 199, 57][n])
    ds = rs.open_dataset("webdataset", root, family="imagenet-r")
    r = subset_indices("imagenet-r")
    assert [label for _, label in ds] == [r[0], r[199], r[57]]  # shard labels are positions among the 200
    assert ds.class_indices == r and len(ds.classnames) == 1000
    logits = torch.zeros(3, 1000)
    logits[torch.arange(3), torch.tensor([r[0], r[199], r[56]])] = 1.0
    assert rs.accuracy(logits, ds, labels=torch.tensor([label for _, label in ds])) == pytest.approx(2 / 3)
    (root / "classnames.txt").write_text("x\n" * 10)
    with pytest.raises(rs.DataError, match="10 class names for imagenet-r"):
        rs.open_dataset("webdataset", root, family="imagenet-r")
    with pytest.raises(rs.InputError, match="needs mappings="):
        rs.open_dataset("webdataset", root, family="objectnet")
    with pytest.raises(rs.DataError, match="no .tar shards"):
        rs.open_dataset("webdataset", tmp_path)


def test_registry():
    assert set(KINDS) == {"imagenet", "imagenet-v2", "imagenet-r", "imagenet-a", "imagenet-sketch", "objectnet",
                          "broden", "folder", "csv", "webdataset"}
    assert rs.parse_dataset_spec("imagenet-r:/data/x:y") == ("imagenet-r", "/data/x:y")
    with pytest.raises(rs.InputError, match="unknown dataset kind 'imagenet-c'; choose one of: imagenet, "):
        rs.open_dataset("imagenet-c", ".")
    with pytest.raises(rs.InputError, match="not KIND:ROOT"):
        rs.parse_dataset_spec("photos/")
    with pytest.raises(rs.InputError, match="unknown dataset kind 'photos'"):
        rs.parse_dataset_spec("photos:x")
    with pytest.raises(rs.InputError, match="its options are: ground_truth, transform, strict"):
        rs.open_dataset("imagenet", ".", mappings="x")


def test_truncated_jpeg_through_a_dataloader(tmp_path, caplog):
    for k in range(5):
        write_image(tmp_path / "set" / "a" / f"{k}.jpg", seed=k, size=(8, 8))
    write_truncated_jpeg(tmp_path / "set" / "a" / "2b.jpg")
    ds = rs.open_dataset("folder", tmp_path / "set", transform=pil_to_tensor)
    broken = [p for p, _ in ds.samples].index(str(tmp_path / "set" / "a" / "2b.jpg"))
    batches = list(image_loader(ds, batch_size=4, num_workers=0))
    assert sum(len(b[0]) for b in batches) == 5
    assert [s for b in batches for s in b[3]] == [broken]
    assert "2b.jpg" in caplog.text
    ds.strict = True
    with pytest.raises(rs.CorruptImageError, match="2b.jpg"):
        list(image_loader(ds, batch_size=4, num_workers=0))
