"""Broden: a small Broden-format folder written here (real JPEGs and label PNGs), its presence matrix from pixel
and image-level labels with multi-valued cells, the cache, and the balanced concept sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import robustsig as rs
from robustsig.data import broden

from broden_helpers import LABELS, label_png, write_broden


@pytest.fixture
def small_broden(tmp_path):
    root = tmp_path / "broden1_224"

    def png(name, numbers):
        path = root / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        label_png(path, numbers)
        return name

    rows = [
        ("ade/a.jpg", "train", {"object": png("ade/a_object.png", [0, 2, 3, 3]),
                                "part": png("ade/a_part_1.png", [5]) + ";" + png("ade/a_part_2.png", [0, 3]),
                                "scene": "8"}),
        ("ade/b.jpg", "val", {"object": png("ade/b_object.png", [0, 300]),
                              "material": png("ade/b_material.png", [4]), "texture": "6"}),
        ("dtd/c.jpg", "train", {"color": png("dtd/c_color.png", [1, 0]), "texture": "6;1"}),
        ("dtd/d.jpg", "val", {}),
    ]
    return write_broden(root, rows)


EXPECTED = {0: {"sky", "tree", "leg", "kitchen"}, 1: {"kitchen-island", "wood", "striped"},
            2: {"red-c", "striped"}, 3: set()}


def test_presence_matrix_from_pixels_and_image_labels(small_broden, tmp_path):
    ds = rs.open_dataset("broden", small_broden.parent, cache_dir=tmp_path / "cache", workers=0)
    assert ds.concepts == [name for _, name, _ in LABELS]
    assert ds.concept_numbers == [n for n, _, _ in LABELS]
    assert ds.concept_matrix.dtype == torch.bool and ds.concept_matrix.shape == (4, len(LABELS))
    for n, names in EXPECTED.items():
        assert {ds.concepts[c] for c in ds.concept_matrix[n].nonzero().flatten().tolist()} == names
    category = dict(zip(ds.concepts, ds.concept_categories))
    assert category["tree"] == "object"  # larger coverage in c_object.csv than in c_part.csv
    assert category["unused"] == "scene"  # in no c_*.csv: label.csv's category
    assert category["kitchen-island"] == "object"
    image, label = ds[0]
    assert image.size == (8, 6) and label == -1
    assert ds.samples[2][0].endswith("broden1_224/images/dtd/c.jpg")


def test_split_selects_rows(small_broden, tmp_path):
    val = rs.open_dataset("broden", small_broden, split="val", cache_dir=tmp_path / "cache", workers=0)
    assert [p.split("/")[-1] for p, _ in val.samples] == ["b.jpg", "d.jpg"]
    assert val.concept_matrix[0].sum() == 3 and val.concept_matrix[1].sum() == 0


def test_cache_is_reused_and_never_stale(small_broden, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = rs.open_dataset("broden", small_broden, cache_dir=cache, workers=0)
    build = broden._build_presence

    def refuse(*args, **kwargs):
        raise AssertionError("rebuilt although the cache is valid")

    monkeypatch.setattr(broden, "_build_presence", refuse)
    again = rs.open_dataset("broden", small_broden, cache_dir=cache, workers=0)
    assert torch.equal(again.concept_matrix, first.concept_matrix)
    # an edited index (dtd/d.jpg gets the scene 'kitchen') must rebuild
    index = small_broden / "index.csv"
    index.write_text(index.read_text().replace("dtd/d.jpg,val,6,8,4,6,,,,,,", "dtd/d.jpg,val,6,8,4,6,,,,,8,"))
    with pytest.raises(AssertionError, match="rebuilt"):
        rs.open_dataset("broden", small_broden, cache_dir=cache, workers=0)
    monkeypatch.setattr(broden, "_build_presence", build)
    changed = rs.open_dataset("broden", small_broden, cache_dir=cache, workers=0)
    assert changed.concept_matrix[3, changed.concepts.index("kitchen")]
    assert len(list(cache.glob("broden-*.npz"))) == 2 and not list(cache.glob("*partial*"))


def test_worker_processes_give_the_same_matrix(small_broden, tmp_path, monkeypatch):
    inline = rs.open_dataset("broden", small_broden, cache_dir=tmp_path / "a", workers=0)
    monkeypatch.setattr(broden, "CHUNK", 1)
    pooled = rs.open_dataset("broden", small_broden, cache_dir=tmp_path / "b", workers=2)
    assert torch.equal(inline.concept_matrix, pooled.concept_matrix)


def test_bad_label_files(small_broden, tmp_path):
    (small_broden / "images" / "ade" / "b_material.png").write_bytes(b"not a png")
    with pytest.warns(RuntimeWarning, match="1 label PNGs could not be decoded.*b_material.png"):
        ds = rs.open_dataset("broden", small_broden, cache_dir=tmp_path / "a", workers=0)
    assert not ds.concept_matrix[1, ds.concepts.index("wood")]
    assert not list((tmp_path / "a").glob("broden-*.npz"))  # a partial read is not cached
    with pytest.raises(rs.DataError, match="b_material.png"):
        rs.open_dataset("broden", small_broden, cache_dir=tmp_path / "b", workers=0, strict=True)
    (small_broden / "label.csv").unlink()
    with pytest.raises(rs.DataError, match="label.csv is missing"):
        rs.open_dataset("broden", small_broden, cache_dir=tmp_path / "c")
    with pytest.raises(rs.DataError, match="no index.csv"):
        rs.open_dataset("broden", small_broden / "images")


def test_balanced_sets(tmp_path):
    rng = np.random.default_rng(5)
    rows = []
    for k in range(60):
        scene = ["8"] if k < 30 else []  # kitchen: 30 of 60
        texture = ["6"] if k % 10 == 0 else []  # striped: 6 of 60
        color = ["1"] if k < 55 else []  # red: 55 positives, only 5 negatives
        extra = ["4"] if rng.random() < 0.3 else []
        rows.append((f"img/{k}.jpg", "train", {"scene": ";".join(scene), "texture": ";".join(texture),
                                               "color": ";".join(color), "material": ";".join(extra)}))
    ds = rs.open_dataset("broden", write_broden(tmp_path / "b", rows), cache_dir=tmp_path / "cache", workers=0)
    sets = ds.balanced_sets(min_positives=5, seed=1)
    by_name = {s.name: s for s in sets}
    assert set(by_name) == {"kitchen", "striped", "red-c", "wood"}
    for s in sets:
        assert s.labels.sum() * 2 == len(s.labels)  # balanced
        assert torch.equal(ds.concept_matrix[s.indices, s.concept], s.labels)
        assert torch.equal(s.indices, s.indices.sort().values) and len(set(s.indices.tolist())) == len(s.indices)
    assert len(by_name["kitchen"].indices) == 60 and len(by_name["striped"].indices) == 12
    assert len(by_name["red-c"].indices) == 10  # capped by its 5 negatives
    assert {s.name for s in ds.balanced_sets(min_positives=7)} == {"kitchen", "wood"}
    again = {s.name: s.indices for s in ds.balanced_sets(min_positives=5, seed=1)}
    assert all(torch.equal(again[n], by_name[n].indices) for n in again)
    other = {s.name: s.indices for s in ds.balanced_sets(min_positives=5, seed=2)}
    assert not torch.equal(other["striped"], by_name["striped"].indices)
    capped = {s.name: s for s in ds.balanced_sets(min_positives=5, max_positives=8, seed=1)}
    assert len(capped["kitchen"].indices) == 16 and capped["kitchen"].labels.sum() == 8
