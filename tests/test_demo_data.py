"""The built demo data: its folders load with ``open_dataset`` (folder + class_map, broden) with hand-checked
ImageNet labels, shifted images differ from the in-distribution ones, the concept matrix agrees with the label
PNGs written, and the build is deterministic, cached, atomic and never overwrites a folder that is not its own."""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

import robustsig as rs
from robustsig.data.classes import imagenet_wnids
from robustsig.demo import build as demo_build
from robustsig.demo import build_demo_data, sources
from robustsig.demo.build import SIZES, DemoSize
from robustsig.demo.concepts import COLOR_NAMES

from demo_helpers import small_demo  # noqa: F401 (a fixture)

# Hand-checked: the wnid of every ImageNet-1k index a class may be called (WordNet: n02123045 is "tabby, tabby cat")
CLASS_WNIDS = {
    "cat": ["n02123045", "n02123159", "n02123394", "n02123597", "n02124075"],  # tabby, tiger cat, Persian, Siamese,
    # Egyptian cat
    "espresso": ["n07920052", "n07930864", "n03063599"],  # espresso, cup, coffee mug
    "motorcycle": ["n03785016", "n03791053"],  # moped, motor scooter
    "palace": ["n03877845", "n03781244", "n04346328"],  # palace, monastery, stupa
    "rocket": ["n03773504", "n04008634", "n04266014"],  # missile, projectile, space shuttle
    "tripod": ["n04485082", "n04069434"],  # tripod, reflex camera
}
CLASS_IDS = {"cat": [281, 282, 283, 284, 285], "espresso": [967, 968, 504], "motorcycle": [665, 670],
             "palace": [698, 663, 832], "rocket": [657, 744, 812], "tripod": [872, 759]}
CLASSES = ["cat", "espresso", "motorcycle", "other", "palace", "rocket", "tripod"]  # folder (label) order
SHIFT_NAMES = ["sketch", "cartoon", "rephoto", "viewpoint", "occlusion"]


def tree_digest(root):
    """Digest of every file's relative path and bytes under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def test_labelled_sets_load_with_their_class_map(small_demo):
    size = SIZES["small"]
    wnids = imagenet_wnids()
    assert {name: [wnids[i] for i in ids] for name, ids in CLASS_IDS.items()} == CLASS_WNIDS
    written = json.loads(small_demo.class_map_path.read_text())
    assert {k: v for k, v in written.items() if k != "other"} == CLASS_IDS
    mapped = {i for ids in CLASS_IDS.values() for i in ids}
    assert written["other"] == [i for i in range(1000) if i not in mapped] and len(written["other"]) == 982
    for name, root in [("photos", small_demo.id_root), *small_demo.shift_roots.items(),
                       ("photos-train", small_demo.train_root)]:
        ds = rs.open_dataset("folder", root, class_map=small_demo.class_map_path)
        assert ds.classnames == CLASSES
        assert ds.class_map == [written[c] for c in CLASSES]
        per_class = {"photos": size.id_per_class, "photos-train": size.train_per_class}.get(name,
                                                                                           size.shift_per_class)
        counts = np.bincount(ds.targets, minlength=len(CLASSES)).tolist()
        assert counts == [0 if c == "other" else per_class for c in CLASSES]
        assert small_demo.counts[name] == len(ds)
        assert all(f"/{name}/{CLASSES[label]}/{CLASSES[label]}_" in path for path, label in ds.samples)
    assert list(small_demo.shift_roots) == SHIFT_NAMES


def test_scoring_is_top1_over_all_imagenet_classes(small_demo):
    ds = rs.open_dataset("folder", small_demo.id_root, class_map=small_demo.class_map_path)
    labels = torch.tensor([CLASSES.index("espresso"), CLASSES.index("cat"), CLASSES.index("rocket")])
    logits = torch.zeros(3, 1000)
    logits[0, 968] = 5.0  # espresso image called "cup": right
    logits[1, [281, 1]] = torch.tensor([3.0, 4.0])  # cat image whose top-1 is a goldfish (1): wrong
    logits[2, [812, 657]] = torch.tensor([2.0, 1.0])  # rocket image called "space shuttle": right
    assert rs.accuracy(logits, ds, labels=labels) == pytest.approx(2 / 3)


def test_images_are_sane_and_shifts_differ_from_the_photos(small_demo):
    short = SIZES["small"].short_side

    def thumbnails(root):
        ds = rs.open_dataset("folder", root)
        images = [ds[i][0] for i in range(len(ds))]
        assert all(im.mode == "RGB" and min(im.size) == short and max(im.size) <= short * 1.3 for im in images)
        return np.stack([np.asarray(im.resize((24, 24)), np.float64) for im in images])

    photos = thumbnails(small_demo.id_root)
    for name, root in small_demo.shift_roots.items():
        shifted = thumbnails(root)
        nearest = np.abs(shifted[:, None] - photos[None]).mean(axis=(2, 3, 4)).min(axis=1)
        assert nearest.min() > 5, name  # no shifted image is (nearly) one of the photos
    for path, _ in rs.open_dataset("folder", small_demo.shift_roots["sketch"]).samples:
        sketch = np.asarray(Image.open(path), np.int64)
        assert np.abs(sketch - sketch.mean(axis=-1, keepdims=True)).max() <= 3  # gray, up to JPEG chroma rounding


def test_the_training_split_is_none_of_the_evaluated_images(small_demo):
    def digests(root):
        return {hashlib.sha256(path.read_bytes()).hexdigest() for path in root.glob("*/*.jpg")}

    train = digests(small_demo.train_root)
    assert len(train) == small_demo.counts["photos-train"]
    for root in [small_demo.id_root, *small_demo.shift_roots.values(), small_demo.concepts_root / "images"]:
        assert not train & digests(root), root
    train_ds = rs.open_dataset("folder", small_demo.train_root)
    id_ds = rs.open_dataset("folder", small_demo.id_root)

    def thumbs(ds):
        return np.stack([np.asarray(ds[i][0].resize((24, 24)), np.float64) for i in range(len(ds))])

    nearest = np.abs(thumbs(train_ds)[:, None] - thumbs(id_ds)[None]).mean(axis=(2, 3, 4)).min(axis=1)
    assert nearest.min() > 1  # other crops of the same photos, not the same crops re-encoded
    record = small_demo.provenance["sets"]["photos-train"]
    assert record["images"] == small_demo.counts["photos-train"] and "never an image of" in record["does"]


def read_index(root):
    with open(root / "index.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_concept_set_loads_as_broden_and_agrees_with_its_label_files(small_demo, tmp_path):
    root = small_demo.concepts_root
    ds = rs.open_dataset("broden", root, cache_dir=tmp_path / "cache", workers=0)
    objects = sorted({name for photo in sources.PHOTOS.values() for name in photo.objects})
    assert ds.concepts == [*COLOR_NAMES, *objects, "brick", "grass", "gravel", "textile"]
    assert ds.concept_categories == ["color"] * 11 + ["object"] * len(objects) + ["texture"] * 4
    assert len(ds) == small_demo.counts["concepts"]
    # the presence matrix rebuilt here from the label PNGs and index cells, independently of the loader
    rows = read_index(root)
    expected = torch.zeros(len(rows), len(ds.concepts), dtype=torch.bool)
    for n, row in enumerate(rows):
        pixels = np.asarray(Image.open(root / "images" / row["color"]).convert("RGB"), np.int64)
        assert pixels.shape[:2] == (int(row["sh"]), int(row["sw"])) == (int(row["ih"]) // 2, int(row["iw"]) // 2)
        numbers = set(np.unique(pixels[..., 0] + 256 * pixels[..., 1]).tolist()) - {0}
        numbers |= {int(x) for x in (row["object"] + ";" + row["texture"]).split(";") if x}
        expected[n, [ds.concept_numbers.index(k) for k in numbers]] = True
    assert torch.equal(ds.concept_matrix, expected)
    column = {name: ds.concept_matrix[:, k] for k, name in enumerate(ds.concepts)}
    source = [row["image"].split("/")[0] for row in rows]
    for k, name in enumerate(source):
        assert column["cat"][k] == (name == "chelsea")  # the cat fills the whole chelsea photo
        assert column["textile"][k] == (name == "textile") and column["brick"][k] == (name == "brick")
        if name in ("brick", "grass", "gravel", "textile", "colorwheel", "ihc"):
            assert not any(column[o][k] for o in objects)
    assert column["grey"][source.index("brick")] and not column["orange"][source.index("brick")]
    sets = ds.balanced_sets(min_positives=5)
    assert {"red", "grey", "cat", "motorcycle", "textile"} <= {s.name for s in sets}
    for s in sets:
        assert 2 * int(s.labels.sum()) == len(s.labels)
        assert torch.equal(ds.concept_matrix[s.indices, s.concept], s.labels)
    positives = {name: int(column[name].sum()) for name in ds.concepts}
    assert positives == small_demo.concept_positives


def test_provenance_says_what_the_data_is(small_demo):
    record = json.loads((small_demo.root / "provenance.json").read_text())
    assert record == small_demo.provenance
    assert "No ImageNet image is used" in record["claims"]
    assert {c["name"]: c["imagenet_ids"] for c in record["classes"]} == CLASS_IDS
    assert record["classes"][0]["imagenet_names"] == ["tabby cat", "tiger cat", "Persian cat", "Siamese cat",
                                                      "Egyptian Mau"]
    assert [record["sets"][s]["role"] for s in SHIFT_NAMES] == [
        f"shift, an analogue of {like} (not {like})"
        for like in ["ImageNet-Sketch", "ImageNet-R", "ImageNet-V2", "ObjectNet", "ImageNet-A"]]
    assert set(record["package_versions"]) == {"scikit-image", "scikit-learn", "conformal-clip-data", "pillow",
                                               "numpy"}
    text = (small_demo.root / "provenance.md").read_text()
    assert "**No ImageNet image is used" in text and "| cat | a domestic tabby cat" in text
    assert "| 281, 282, 283, 284, 285 |" in text and "| other | no images | the 982 other indices" in text


def test_build_is_deterministic_and_cached(tmp_path, monkeypatch):
    first = build_demo_data(tmp_path / "a", size="tiny", seed=3)
    second = build_demo_data(tmp_path / "b", size="tiny", seed=3)
    assert not first.reused and first.digest == second.digest
    assert tree_digest(first.root) == tree_digest(second.root)  # same bytes, manifests included

    def refuse(*args, **kwargs):
        raise AssertionError("rebuilt although the folder is up to date")

    monkeypatch.setattr(demo_build, "_write", refuse)
    again = build_demo_data(tmp_path / "a", size="tiny", seed=3)
    assert again.reused and again == first
    removed = next((first.root / "sketch").glob("*/*.jpg"))
    removed.unlink()
    with pytest.raises(AssertionError, match="rebuilt"):  # a deleted image rebuilds
        build_demo_data(tmp_path / "a", size="tiny", seed=3)
    with pytest.raises(AssertionError, match="rebuilt"):  # another seed rebuilds
        build_demo_data(tmp_path / "a", size="tiny", seed=4)
    with pytest.raises(AssertionError, match="rebuilt"):  # so does another size
        build_demo_data(tmp_path / "a", size=DemoSize(id_per_class=3, shift_per_class=2, concept_crops=3,
                                                       textiles=3, short_side=96, concept_side=72))
    versions = dict(sources.source_versions(), pillow="0.0")
    monkeypatch.setattr(demo_build, "source_versions", lambda: versions)
    with pytest.raises(AssertionError, match="rebuilt"):  # and a different Pillow (its JPEG encoder)
        build_demo_data(tmp_path / "a", size="tiny", seed=3)


def test_changed_parameters_replace_the_folder(tmp_path):
    first = build_demo_data(tmp_path / "data", size="tiny", seed=0)
    before = tree_digest(first.root)
    other = build_demo_data(tmp_path / "data", size="tiny", seed=1)
    assert not other.reused and other.digest != first.digest and tree_digest(other.root) != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temporary folder left behind
    assert (other.root.stat().st_mode & 0o777) == 0o755


def test_a_crash_mid_build_leaves_nothing_that_looks_built(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(demo_build, "_concept_set", crash)
    with pytest.raises(RuntimeError, match="killed mid-build"):
        build_demo_data(tmp_path / "data", size="tiny")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    built = build_demo_data(tmp_path / "data", size="tiny")
    digest = tree_digest(built.root)
    monkeypatch.setattr(demo_build, "_concept_set", crash)
    with pytest.raises(RuntimeError):  # a failed rebuild keeps the previous complete folder
        build_demo_data(tmp_path / "data", size="tiny", seed=5)
    assert tree_digest(built.root) == digest and sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_refusals(tmp_path, monkeypatch):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(rs.InputError, match="is not a robustsig demo data folder"):
        build_demo_data(tmp_path / "mine", size="tiny")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(rs.InputError, match="unknown demo size 'huge'"):
        build_demo_data(tmp_path / "x", size="huge")
    with pytest.raises(rs.InputError, match="counts >= 1"):
        DemoSize(id_per_class=0)
    real_find_spec = sources.importlib.util.find_spec
    monkeypatch.setattr(sources.importlib.util, "find_spec",
                        lambda name, *a: None if name == "skimage" else real_find_spec(name, *a))
    with pytest.raises(rs.DataError, match="pip install scikit-image"):
        build_demo_data(tmp_path / "y", size="tiny")
    assert not (tmp_path / "y").exists()
