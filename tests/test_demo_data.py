"""The built demo data: its folders load with ``open_dataset`` (folder + class_map, broden), every evaluated image
carries its photo's true ImageNet label, shifted images differ from the in-distribution ones, the training photos
are none of the evaluated or concept photos, the concept matrix is each photo's label's concepts, and the build is
deterministic, cached, atomic and never overwrites a folder that is not its own."""

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

from demo_helpers import small_demo  # noqa: F401 (a fixture)

# Hand-checked: the training classes' ImageNet-1k indices (WordNet: n02123045 is "tabby, tabby cat")
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
TRAIN_CLASSES = ["cat", "espresso", "motorcycle", "other", "palace", "rocket", "tripod"]  # folder (label) order
# foolbox's first 10 photos (the small size): their labels, by file name
SMALL_LABELS = [243, 559, 438, 990, 949, 853, 609, 609, 915, 455]
SHIFT_NAMES = ["sketch", "cartoon", "noise", "blur", "weather", "digital"]


def tree_digest(root):
    """Digest of every file's relative path and bytes under ``root``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def test_labelled_sets_are_the_imagenet_photos_with_their_true_labels(small_demo):
    size = SIZES["small"]
    written = json.loads(small_demo.class_map_path.read_text())
    classes = sorted(k for k in written if k != "other") + ["other"]
    assert sorted(written[k][0] for k in classes[:-1]) == sorted(set(SMALL_LABELS))
    assert written["609_jeep"] == [609] and written["243_bullmastiff"] == [243]
    assert sorted(written["other"]) == [i for i in range(1000) if i not in set(SMALL_LABELS)]
    for name, root in [("photos", small_demo.id_root), *small_demo.shift_roots.items()]:
        ds = rs.open_dataset("folder", root, class_map=small_demo.class_map_path)
        views = size.id_views if name == "photos" else size.shift_views
        assert len(ds) == small_demo.counts[name] == 10 * views
        # every image's class is the label in its photo's file name
        for path, label in ds.samples:
            photo = path.rsplit("/", 1)[1]
            assert ds.class_map[label] == [int(photo.split("_")[2])], path
    assert list(small_demo.shift_roots) == SHIFT_NAMES
    train = rs.open_dataset("folder", small_demo.train_root, class_map=small_demo.train_class_map_path)
    wnids = imagenet_wnids()
    assert {name: [wnids[i] for i in ids] for name, ids in CLASS_IDS.items()} == CLASS_WNIDS
    assert train.classnames == TRAIN_CLASSES and len(train) == size.train_per_class * 6
    assert {k: v for k, v in json.loads(small_demo.train_class_map_path.read_text()).items() if k != "other"} \
        == CLASS_IDS


def test_scoring_is_top1_over_all_imagenet_classes(small_demo):
    ds = rs.open_dataset("folder", small_demo.id_root, class_map=small_demo.class_map_path)
    jeep, beaker = ds.classnames.index("609_jeep"), ds.classnames.index("438_beaker")
    logits = torch.zeros(3, 1000)
    logits[0, 609] = 5.0  # the jeep called a jeep: right
    logits[1, [438, 1]] = torch.tensor([3.0, 4.0])  # a beaker whose top-1 is a goldfish (1): wrong
    logits[2, [438, 609]] = torch.tensor([1.0, 2.0])  # a beaker called a jeep: wrong
    assert rs.accuracy(logits, ds, labels=torch.tensor([jeep, beaker, beaker])) == pytest.approx(1 / 3)


def test_images_are_sane_and_shifts_differ_from_the_photos(small_demo):
    short = SIZES["small"].short_side

    def thumbnails(root):
        ds = rs.open_dataset("folder", root)
        images = [ds[i][0] for i in range(len(ds))]
        assert all(im.mode == "RGB" and min(im.size) == short and max(im.size) <= short * 1.4 for im in images)
        return np.stack([np.asarray(im.resize((24, 24)), np.float64) for im in images])

    photos = thumbnails(small_demo.id_root)
    for name, root in small_demo.shift_roots.items():
        shifted = thumbnails(root)
        nearest = np.abs(shifted[:, None] - photos[None]).mean(axis=(2, 3, 4)).min(axis=1)
        assert np.median(nearest) > 3, name  # the shifted views are not the photos' views
    for path, _ in rs.open_dataset("folder", small_demo.shift_roots["sketch"]).samples:
        sketch = np.asarray(Image.open(path), np.int64)
        assert np.abs(sketch - sketch.mean(axis=-1, keepdims=True)).max() <= 3  # gray, up to JPEG chroma rounding
    record = small_demo.provenance["sets"]
    assert [record[name]["role"] for name in SHIFT_NAMES] == [
        "shift: ImageNet-Sketch (an analogue) (robustsig's own image processing)",
        "shift: ImageNet-R (an analogue) (robustsig's own image processing)",
        *(f"shift: ImageNet-C {family} (published code)" for family in ("noise", "blur", "weather", "digital"))]


def test_the_training_photos_are_none_of_the_evaluated_or_concept_photos(small_demo):
    from robustsig.demo.concept_set import concept_photos
    from robustsig.demo.sources import DEMO_CLASSES

    trained_on = {name for demo_class in DEMO_CLASSES for name in demo_class.photos}
    assert trained_on.isdisjoint(photo.name for photo in concept_photos())
    assert {p["name"] for p in small_demo.provenance["training_photos"]} == trained_on

    def digests(root, pattern="*/*.jpg"):
        return {hashlib.sha256(path.read_bytes()).hexdigest() for path in root.glob(pattern)}

    train = digests(small_demo.train_root)
    assert len(train) == small_demo.counts["photos-train"]
    for root in [small_demo.id_root, *small_demo.shift_roots.values()]:
        assert not train & digests(root), root


def read_index(root):
    with open(root / "index.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_concept_set_is_one_image_per_photo_with_its_labels_concepts(small_demo, tmp_path):
    from robustsig.demo.concept_set import CIFAR10, CONCEPTS, IMAGENET, SIDE, concept_photos
    from robustsig.demo.imagenet_val import CIFAR10_CLASSES

    root = small_demo.concepts_root
    ds = rs.open_dataset("broden", root, cache_dir=tmp_path / "cache", workers=0)
    assert ds.concepts == [name for name, _ in CONCEPTS]
    assert ds.concept_categories == [category for _, category in CONCEPTS]
    photos = concept_photos()
    assert len(ds) == small_demo.counts["concepts"] == len(photos) == 62
    rows = read_index(root)
    for n, (row, photo) in enumerate(zip(rows, photos)):
        assert row["image"] == f"{photo.source}/{photo.name}.png"
        image = Image.open(root / "images" / row["image"])
        assert image.size == (SIDE, SIDE)
        shown = {ds.concepts[k] for k in torch.nonzero(ds.concept_matrix[n]).flatten().tolist()}
        assert shown == set(photo.concepts), photo.name
    # the labels, hand-checked on a few photos: CIFAR-10's first is a cat, ImageNet's 17th a Dalmatian
    assert photos[0].label == CIFAR10_CLASSES[3] == "cat" and set(photos[0].concepts) == set(CIFAR10["cat"])
    assert photos[56].name == "imagenet_16_251" and set(photos[56].concepts) == set(IMAGENET[251]) == {
        "animal", "mammal", "dog"}
    column = {name: int(ds.concept_matrix[:, k].sum()) for k, name in enumerate(ds.concepts)}
    assert column == small_demo.concept_positives
    assert column["animal"] == 23 and column["artifact"] == 24 and column["vehicle"] == 14
    # a photo is never a positive of a concept and its own hypernym's negative
    for child, parent in [("mammal", "animal"), ("dog", "mammal"), ("vehicle", "artifact"), ("flower", "plant")]:
        k, j = ds.concepts.index(child), ds.concepts.index(parent)
        assert not (ds.concept_matrix[:, k] & ~ds.concept_matrix[:, j]).any()
    sets = ds.balanced_sets(min_positives=5)
    assert [s.name for s in sets] == ["animal", "mammal", "plant", "artifact", "vehicle", "wheeled vehicle",
                                      "landscape"]


def test_provenance_says_what_the_data_is(small_demo):
    record = json.loads((small_demo.root / "provenance.json").read_text())
    assert record == small_demo.provenance
    assert "not ImageNet numbers" in record["claims"]
    assert [photo["imagenet_id"] for photo in record["photos"]] == SMALL_LABELS
    assert record["photos"][0] == {"file": "imagenet_00_243.jpg", "imagenet_id": 243, "imagenet_name": "Bullmastiff"}
    assert {"foolbox", "imagecorruptions", "scikit-image", "pillow"} <= set(record["package_versions"])
    text = (small_demo.root / "provenance.md").read_text()
    assert "| imagenet_06_609.jpg | 609 | jeep |" in text and "| imagenet_16_251 | imagenet | Dalmatian | animal, " \
        "mammal, dog |" in text


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
        build_demo_data(tmp_path / "a", size=DemoSize(photos=8, id_views=1, shift_views=1, train_per_class=3,
                                                       shifts=("sketch", "noise"), concept_photos=24))
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
        DemoSize(id_views=0)
    with pytest.raises(rs.InputError, match="expected shifts among sketch, cartoon"):
        DemoSize(shifts=("rephoto",))
    real_find_spec = sources.importlib.util.find_spec
    monkeypatch.setattr(sources.importlib.util, "find_spec",
                        lambda name, *a: None if name == "skimage" else real_find_spec(name, *a))
    with pytest.raises(rs.DataError, match="pip install scikit-image"):
        build_demo_data(tmp_path / "y", size="tiny")
    assert not (tmp_path / "y").exists()
