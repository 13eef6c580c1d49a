"""ImageNet val (both layouts, every ground-truth form), V2 (the string-sort trap), R/A (200-class subsets), Sketch:
labels, class subsets, accuracy with the subset applied, and the errors for wrong folders."""

from __future__ import annotations

import json

import pytest
import torch

import robustsig as rs
from robustsig.data.classes import devkit_id_to_index, imagenet_wnids, subset_indices, subset_wnids

from imagefiles import write_image, write_truncated_jpeg

WNIDS = imagenet_wnids()
PARTIAL = {"allow_missing_classes": True}  # the sets below hold a few of the 1,000 classes


def wnid_tree(root, wnids, per_class=1, fmt="JPEG"):
    for k, wnid in enumerate(wnids):
        for i in range(per_class):
            write_image(root / wnid / f"{wnid}_{i}.{fmt}", seed=k * 10 + i, size=(12, 10))
    return root


def test_tables_agree_with_the_reference(reference_dir):
    subsets = json.loads((reference_dir / "imagenet_r_a_200class_subsets.json").read_text())
    assert subset_indices("imagenet-r") == subsets["imagenet_r_indices"]
    assert subset_indices("imagenet-a") == subsets["imagenet_a_indices"]
    assert list(subset_wnids("imagenet-a")) == subsets["imagenet_a_wnids"]


def test_devkit_ids_are_not_sorted_wnid_order():
    table = devkit_id_to_index()
    assert sorted(table) == list(range(1000))
    # ILSVRC2012_ID 1 is n02119789 (kit fox, index 278); the first val image's id 490 is sea snake (index 65)
    assert table[0] == WNIDS.index("n02119789") == 278
    assert table[489] == 65 and table[448] == 0  # 449: tench


def test_val_wnid_folders_label_by_imagenet_index(tmp_path):
    chosen = [WNIDS[0], WNIDS[417], WNIDS[999]]
    ds = rs.open_dataset("imagenet", wnid_tree(tmp_path / "val", chosen, per_class=2), **PARTIAL)
    assert [label for _, label in ds.samples] == [0, 0, 417, 417, 999, 999]
    assert ds.class_indices == list(range(1000)) and len(ds.classnames) == 1000
    assert ds.classnames[0] == "tench"
    image, label = ds[2]
    assert image.size == (12, 10) and label == 417
    # the download's parent folder works too
    assert rs.open_dataset("imagenet", tmp_path, **PARTIAL).samples == ds.samples


def flat_val(root, count=4):
    for n in range(1, count + 1):
        write_image(root / f"ILSVRC2012_val_{n:08d}.JPEG", seed=n, size=(8, 8))
    return root


def test_flat_val_with_devkit_ground_truth(tmp_path):
    val = flat_val(tmp_path / "ILSVRC2012_img_val")
    ids = [490, 361, 171, 449]  # the devkit's first three lines, then tench
    devkit = tmp_path / "ILSVRC2012_devkit_t12" / "data"
    devkit.mkdir(parents=True)
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{i}\n" for i in ids))
    ds = rs.open_dataset("imagenet", val, **PARTIAL)
    # sea snake, alp, Shetland sheepdog, tench: their sorted-wnid indices, not id - 1
    assert [label for _, label in ds.samples] == [65, 970, 230, 0]


def test_flat_val_with_kaggle_solution(tmp_path):
    top = tmp_path / "imagenet-object-localization-challenge"
    flat_val(top / "ILSVRC" / "Data" / "CLS-LOC" / "val", 3)
    rows = [("ILSVRC2012_val_00000002", "n09193705 1 2 3 4"), ("ILSVRC2012_val_00000001", "n01751748 5 6 7 8 n01751748 1 1 2 2"),
            ("ILSVRC2012_val_00000003", "n02105855 0 0 9 9")]
    (top / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "".join(f"{a},{b}\n" for a, b in rows))
    ds = rs.open_dataset("imagenet", top / "ILSVRC" / "Data" / "CLS-LOC", **PARTIAL)  # finds val/ and the CSV 3 levels up
    assert [label for _, label in ds.samples] == [65, 970, 230]


@pytest.mark.parametrize("form", ["caffe", "synsets"])
def test_flat_val_with_other_ground_truth_forms(tmp_path, form):
    val = flat_val(tmp_path / "val", 2)
    if form == "caffe":
        gt = tmp_path / "val.txt"
        gt.write_text("ILSVRC2012_val_00000001.JPEG 65\nILSVRC2012_val_00000002.JPEG 970\n")
    else:
        gt = tmp_path / "labels.txt"
        gt.write_text("n01751748\nn09193705\n")
    ds = rs.open_dataset("imagenet", val, ground_truth=gt if form == "synsets" else None, **PARTIAL)
    assert [label for _, label in ds.samples] == [65, 970]


def test_flat_val_errors(tmp_path):
    val = flat_val(tmp_path / "val", 2)
    with pytest.raises(rs.DataError, match="no ground-truth file"):
        rs.open_dataset("imagenet", val)
    (tmp_path / "ILSVRC2012_validation_ground_truth.txt").write_text("490\n")
    with pytest.raises(rs.DataError, match="1 images .* have no label"):
        rs.open_dataset("imagenet", val)
    (tmp_path / "ILSVRC2012_validation_ground_truth.txt").write_text("490\n1001\n")
    with pytest.raises(rs.DataError, match="line 2: ILSVRC2012_ID 1001"):
        rs.open_dataset("imagenet", val)


def test_v2_labels_are_folder_numbers_not_string_sorted_positions(tmp_path):
    numbers = [0, 1, 2, 9, 10, 11, 99, 100, 101, 999]
    root = tmp_path / "imagenetv2-matched-frequency"
    for n in numbers:
        write_image(root / "imagenetv2-matched-frequency-format-val" / str(n) / "x.jpeg", seed=n, size=(8, 8))
    ds = rs.open_dataset("imagenet-v2", root, allow_missing_classes=True)
    labels = [label for _, label in ds.samples]
    assert labels == numbers  # numeric order, label = the folder's number
    by_folder = {int(path.split("/")[-2]): label for path, label in ds.samples}
    assert all(folder == label for folder, label in by_folder.items())
    # what the trap would give: positions in string order
    assert sorted(map(str, numbers)).index("10") == 2 != 10
    assert ds.class_indices == list(range(1000))
    assert ds.missing_classes == [str(i) for i in range(1000) if i not in numbers]


def test_v2_rejects_non_class_folders(tmp_path):
    write_image(tmp_path / "v2" / "5" / "a.jpeg")
    write_image(tmp_path / "v2" / "1000" / "a.jpeg")
    with pytest.raises(rs.DataError, match=r"'1000'.* not class indices 0\.\.999"):
        rs.open_dataset("imagenet-v2", tmp_path / "v2")
    wnid_tree(tmp_path / "val", [WNIDS[3]])
    with pytest.raises(rs.DataError, match="kind 'imagenet'"):
        rs.open_dataset("imagenet-v2", tmp_path / "val")
    with pytest.raises(rs.DataError, match="imagenet-v2"):
        rs.open_dataset("imagenet", tmp_path / "v2")


@pytest.mark.parametrize("kind", ["imagenet-r", "imagenet-a"])
def test_200_class_sets_with_folders_missing_are_refused_unless_allowed(tmp_path, kind):
    wnids = subset_wnids(kind)
    chosen = [wnids[0], wnids[57], wnids[199]]
    root = wnid_tree(tmp_path / kind, chosen)
    with pytest.raises(rs.DataError) as refused:
        rs.open_dataset(kind, root)
    message = str(refused.value)
    assert f"197 of its 200 class folders (wnids) are missing: {wnids[1]}, {wnids[2]}" in message
    assert all(w in message for w in wnids if w not in chosen) and "allow_missing_classes" in message
    ds = rs.open_dataset(kind, root, allow_missing_classes=True)
    expected = [WNIDS.index(w) for w in chosen]
    assert [label for _, label in ds.samples] == expected  # ImageNet-1k indices
    assert ds.class_indices == expected  # scored on the classes present, as allowed
    assert ds.missing_classes == [w for w in wnids if w not in chosen]
    full = rs.open_dataset(kind, wnid_tree(tmp_path / "full" / kind, wnids))
    assert full.class_indices == subset_indices(kind) and len(full) == 200 and full.missing_classes == []


def test_200_class_sets_reject_the_wrong_set(tmp_path):
    only_in_r = sorted(set(subset_wnids("imagenet-r")) - set(subset_wnids("imagenet-a")))
    root = wnid_tree(tmp_path / "downloads" / "imagenet-r", only_in_r[:3])
    with pytest.raises(rs.DataError, match=r"not among the 200 imagenet-a classes.*is this imagenet-r\?"):
        rs.open_dataset("imagenet-a", tmp_path / "downloads", allow_missing_classes=True)
    not_in_either = sorted(set(WNIDS) - set(subset_wnids("imagenet-r")) - set(subset_wnids("imagenet-a")))
    wnid_tree(root, not_in_either[:1])
    with pytest.raises(rs.DataError, match=repr(not_in_either[0])):
        rs.open_dataset("imagenet-r", root)


def test_sketch_and_missing_roots(tmp_path):
    ds = rs.open_dataset("imagenet-sketch", wnid_tree(tmp_path / "ImageNet-Sketch" / "sketch", [WNIDS[5]], fmt="png"),
                         **PARTIAL)
    assert ds.samples[0][1] == 5 and ds.class_indices == list(range(1000))
    assert rs.open_dataset("imagenet-sketch", tmp_path / "ImageNet-Sketch", **PARTIAL).samples == ds.samples
    for kind in ["imagenet", "imagenet-v2", "imagenet-r", "imagenet-a", "imagenet-sketch", "objectnet"]:
        with pytest.raises(rs.DataError, match=rf"^{kind}: .*nowhere: no such folder; expected"):
            rs.open_dataset(kind, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(rs.DataError, match="no class folders"):
        rs.open_dataset("imagenet-sketch", tmp_path / "empty")
    (tmp_path / "cats").mkdir()
    write_image(tmp_path / "cats" / "tabby" / "1.jpg")
    with pytest.raises(rs.DataError, match="'tabby' are not ImageNet wnids"):
        rs.open_dataset("imagenet-sketch", tmp_path / "cats")


def test_truncated_jpeg_is_skipped_unless_strict(tmp_path):
    root = wnid_tree(tmp_path / "val", [WNIDS[1]])
    write_truncated_jpeg(root / WNIDS[1] / "zz_broken.JPEG")
    ds = rs.open_dataset("imagenet", root, **PARTIAL)
    assert ds[1] == (None, 1)
    with pytest.raises(rs.CorruptImageError, match="zz_broken"):
        rs.open_dataset("imagenet", root, strict=True, **PARTIAL)[1]


def test_accuracy_on_r_uses_only_its_200_logits(tmp_path):
    wnids = subset_wnids("imagenet-r")
    ds = rs.open_dataset("imagenet-r", wnid_tree(tmp_path / "r", [wnids[0], wnids[1]]), allow_missing_classes=True)
    (i0, i1) = ds.class_indices
    logits = torch.zeros(2, 1000)
    logits[0, i0] = 2.0
    logits[0, 0] = 10.0  # class 0 (tench) is not an R class here: ignored
    logits[1, i0] = 3.0
    logits[1, i1] = 1.0
    assert rs.accuracy(logits, ds) == 0.5
    logits[1, i1] = 4.0
    assert rs.accuracy(logits, ds) == 1.0
    assert rs.accuracy(logits[:, ds.class_indices], ds) == 1.0  # logits over the set's own classes
    # a plain argmax would count row 0 wrong
    assert (logits.argmax(1) == torch.tensor(ds.targets)).float().mean().item() == 0.5


def test_download_folders_are_found_without_guessing(tmp_path):
    # R and A side by side: each kind opens its own folder
    wnid_tree(tmp_path / "imagenet-r", [subset_wnids("imagenet-r")[0]])
    wnid_tree(tmp_path / "imagenet-a", [subset_wnids("imagenet-a")[0]])
    partial = {"allow_missing_classes": True}
    assert rs.open_dataset("imagenet-a", tmp_path, **partial).class_indices == [subset_indices("imagenet-a")[0]]
    assert rs.open_dataset("imagenet-r", tmp_path, **partial).class_indices == [subset_indices("imagenet-r")[0]]
    # several V2 variants under one parent: refuse to pick one
    for variant in ["imagenetv2-matched-frequency-format-val", "imagenetv2-threshold0.7-format-val"]:
        write_image(tmp_path / "v2" / variant / "3" / "a.jpeg")
    with pytest.raises(rs.DataError, match="several ImageNet-V2 variants"):
        rs.open_dataset("imagenet-v2", tmp_path / "v2", **partial)
    assert len(rs.open_dataset("imagenet-v2", tmp_path / "v2" / "imagenetv2-threshold0.7-format-val", **partial)) == 1
    # a ground-truth file for class folders is a mistake, not something to ignore
    wnid_tree(tmp_path / "val", [WNIDS[0]])
    with pytest.raises(rs.InputError, match="ground_truth= is for the flat val layout"):
        rs.open_dataset("imagenet", tmp_path / "val", ground_truth=tmp_path / "gt.txt")


def test_v2_with_class_folders_missing_is_refused_naming_them(tmp_path):
    root = tmp_path / "imagenetv2-matched-frequency-format-val"
    for n in range(1000):
        if n not in (7, 512):
            write_image(root / str(n) / "a.jpeg", seed=n % 50, size=(8, 8))
    with pytest.raises(rs.DataError, match=r"2 of its 1000 class folders \(0\.\.999\) are missing: 7, 512\. "):
        rs.open_dataset("imagenet-v2", root)
    write_image(root / "7" / "a.jpeg", seed=7, size=(8, 8))
    write_image(root / "512" / "a.jpeg", seed=5, size=(8, 8))
    ds = rs.open_dataset("imagenet-v2", root)
    assert ds.missing_classes == [] and [label for _, label in ds.samples] == list(range(1000))
